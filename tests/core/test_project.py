import json
import os

import pytest

from thresher.errors import StageMissingError
from thresher.project import Project, atomic_write_text, fingerprint, stage_output


def test_stage_output_is_atomic_and_keeps_previous_on_failure(tmp_path):
    project = Project.at(tmp_path)
    with stage_output(project, "demo", "fp1", inputs=[{"path": "a"}]) as run:
        run.path("out.txt").write_text("first")
        run.counts = {"rows": 1}
    manifest = project.read_manifest("demo")
    assert manifest["fingerprint"] == "fp1" and manifest["counts"] == {"rows": 1}
    assert "out.txt" in manifest["outputs"] and manifest["versions"]["thresher"]
    assert project.is_fresh("demo", "fp1") and not project.is_fresh("demo", "fp2")

    with pytest.raises(RuntimeError), stage_output(project, "demo", "fp2") as run:
        run.path("out.txt").write_text("half-written")
        raise RuntimeError("crash mid-stage")
    assert (tmp_path / "demo" / "out.txt").read_text() == "first"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folders left"


def test_atomic_write_text_modes(tmp_path):
    atomic_write_text(tmp_path / "secret", "s3cret", mode=0o600)
    assert (os.stat(tmp_path / "secret").st_mode & 0o777) == 0o600
    atomic_write_text(tmp_path / "plain", "x")
    assert (os.stat(tmp_path / "plain").st_mode & 0o044) == 0o044


def test_require_names_the_command_to_run(tmp_path):
    with pytest.raises(StageMissingError, match="thresher curate ingest"):
        Project.at(tmp_path).require("ingest", "thresher curate ingest SRC -p DIR")


def test_fingerprint_is_order_independent_for_keys():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint(json.loads('{"b": [1, 2], "a": 1}'))
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
