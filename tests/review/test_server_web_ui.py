"""The web UI in headless Chromium: an annotator logs in and sees a pushed record with its
suggestion (Debian package `chromium`; skipped when it is not installed)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest

from review.push import PushOptions, push
from review.users import add_user
from tests.helpers.scored_project import LABELS, fake_embed, make_project
from thresher.project import Project

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(profile, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,900",
         "--virtual-time-budget=20000", *args],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_annotator_sees_record_with_suggestion(argilla, tmp_path):
    conn = argilla.conn()
    project = Project.at(make_project(tmp_path / "ui", 20))
    result = push(project, conn, PushOptions(dataset="ui", labels=LABELS, vector_dims=8,
                                             embedding_model="f"), embed=fake_embed())  # fmt: skip
    user = add_user(conn, "ui-annotator", workspace="thresher", paths=argilla.paths)
    password = json.loads(open(user.credentials_file).read())["password"]
    auth = base64.b64encode(f"ui-annotator:{password}".encode()).decode()
    profile = tmp_path / "chromium-profile"
    # the sign-in page logs in from ?auth=base64(user:password); the session stays in the profile
    _chromium(profile, f"--screenshot={tmp_path / 'home.png'}", f"{conn.url}/sign-in?auth={auth}")
    page = f"{conn.url}/dataset/{result.dataset_id}/annotation-mode"
    shot = tmp_path / "record.png"
    _chromium(profile, f"--screenshot={shot}", page)
    dom = _chromium(profile, "--dump-dom", page).stdout
    assert shot.exists() and shot.stat().st_size > 10_000
    rows = {r["text"]: r for r in pq.read_table(project.records_path("score")).to_pylist()}
    shown = [text for text in rows if text in dom]
    assert len(shown) == 1, "the annotation page shows one pushed record"
    score = re.search(r'class="label-text__suggestion__score">([0-9.]+)<', dom)
    assert score, "the suggestion's score is on the page"
    assert float(score.group(1)) == pytest.approx(rows[shown[0]]["predicted_prob"], abs=0.051)
