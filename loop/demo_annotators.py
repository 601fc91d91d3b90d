"""DEMO / TEST TOOL: simulated annotators that label through the real Argilla server.

Not part of a real workflow (people annotate in the web UI). ``make demo`` and the integration
tests use it to stand in for people:

    python -m loop.demo_annotators -p DIR --annotators 2 --disagreement 0.15 [--limit N]

Each annotator (``demo-annotator-1``, ``-2``, ...) is created like a real one
(``review.users.add_user``, the same as ``thresher review users add``; credentials in
``THRESHER_HOME/argilla/users/NAME.json``) and then works with its OWN API key through the
annotator routes: ``/api/v1/me/datasets`` to find the dataset,
``/api/v1/me/datasets/{id}/records/search`` to read its queue, ``/api/v1/me/responses/bulk`` to
submit. With ``--round N`` an annotator also answers that round's re-label dataset
(``<dataset>-relabel-N``, records sent back for another annotation) when there is one. The
answer is the record's gold label (the project's input label), or, with probability
``disagreement`` (independently per annotator and record), another label chosen at random —
so two annotators disagree on about 2·p·(1−p) of the records. Records are answered in
``priority`` order (metadata, 1 = first), skipping ones the annotator has already answered.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from review.client import ArgillaClient

log = logging.getLogger(__name__)

PAGE = 500
PREFIX = "demo-annotator-"


class DatasetNotVisible(RuntimeError):
    """The annotator sees no dataset of that name (not pushed, or not in their workspace)."""


@dataclass(frozen=True)
class AnnotatorReport:
    annotator: str
    submitted: int
    disagreed: int
    credentials_file: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def my_queue(
    client: ArgillaClient, dataset: str, workspace: str | None = None
) -> tuple[str, list[dict]]:
    """(dataset id, records this user has not answered, priority order) via the /me routes."""
    items = client.get("/api/v1/me/datasets", "list my datasets")["items"]
    found = [d for d in items if d["name"] == dataset]
    if workspace is not None and len(found) > 1:
        mine = client.get("/api/v1/me/workspaces", "list my workspaces")["items"]
        spaces = {w["id"]: w["name"] for w in mine}
        found = [d for d in found if spaces.get(d["workspace_id"]) == workspace]
    if not found:
        raise DatasetNotVisible(f"no dataset {dataset!r} visible to this annotator; push it first")
    ds = found[0]["id"]
    records: list[dict] = []
    offset = 0
    while True:
        page = client.post(
            f"/api/v1/me/datasets/{ds}/records/search",
            "search my records",
            idempotent=True,
            json={"query": {}},
            params={"include": "responses", "offset": offset, "limit": PAGE},
        )
        records.extend(item["record"] for item in page["items"])
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            break
    todo = [r for r in records if not r.get("responses")]
    todo.sort(key=lambda r: ((r.get("metadata") or {}).get("priority", 10**9), r["external_id"]))
    return ds, todo


def answer(gold: str, labels: Sequence[str], rng: np.random.Generator, p: float) -> str:
    """The gold label, or with probability ``p`` another label (uniform)."""
    others = [lab for lab in labels if lab != gold]
    if others and rng.random() < p:
        return str(others[int(rng.integers(len(others)))])
    return gold


def annotate(
    url: str,
    api_key: str,
    dataset: str,
    gold: Mapping[str, str],
    labels: Sequence[str],
    *,
    disagreement: float = 0.15,
    limit: int | None = None,
    seed: int = 0,
    round: int | None = None,
    workspace: str | None = None,
) -> tuple[int, int]:
    """Submit labels as the user of ``api_key``; returns (submitted, disagreed with gold).
    ``round``: only records pushed for that round (metadata ``round``)."""
    rng = np.random.default_rng(seed)
    from review.client import ArgillaClient

    with ArgillaClient(url, api_key) as client:
        _, todo = my_queue(client, dataset, workspace)
        if round is not None:
            todo = [r for r in todo if (r.get("metadata") or {}).get("round") == round]
        todo = [r for r in todo if r.get("external_id") in gold]
        if limit is not None:
            todo = todo[:limit]
        items, wrong = [], 0
        for rec in todo:
            truth = gold[rec["external_id"]]
            value = answer(truth, labels, rng, disagreement)
            wrong += value != truth
            items.append(
                {
                    "record_id": rec["id"],
                    "status": "submitted",
                    "values": {"label": {"value": value}},
                }
            )
        for i in range(0, len(items), 100):
            out = client.post(
                "/api/v1/me/responses/bulk", "submit responses", json={"items": items[i : i + 100]}
            )
            errors = [x["error"] for x in out["items"] if x.get("error")]
            if errors:
                raise RuntimeError(f"{len(errors)} responses refused: {errors[0]}")
    return len(items), int(wrong)


def run(
    project,
    conn,
    *,
    annotators: int = 2,
    disagreement: float = 0.15,
    limit: int | None = None,
    dataset: str | None = None,
    workspace: str = "thresher",
    round: int | None = None,
    seed: int = 0,
    paths=None,
    gold_file: Path | None = None,
) -> list[AnnotatorReport]:
    """Create ``annotators`` demo users and let each label the project's dataset. The gold
    labels are the project's input labels, or ``gold_file``'s (a CSV with ``id,label``: for a
    project ingested without labels)."""
    import pyarrow.parquet as pq

    from review.push import PushState
    from review.users import add_user

    state = PushState.load(project.root / "review")
    name = dataset or state.dataset or project.root.resolve().name
    if gold_file is not None:
        import pandas as pd

        table = pd.read_csv(gold_file, dtype=str).to_dict("records")
    else:
        _, path = project.latest_records(["score", "dedup", "ingest"])
        table = pq.read_table(path, columns=["id", "label"]).to_pylist()
    gold = {str(r["id"]): str(r["label"]) for r in table if r["label"] is not None}
    labels = sorted(set(gold.values()))
    reports = []
    for k in range(1, annotators + 1):
        user = add_user(conn, f"{PREFIX}{k}", role="annotator", workspace=workspace, paths=paths)
        creds = json.loads(open(user.credentials_file, encoding="utf-8").read())
        n, wrong = annotate(
            conn.url,
            creds["api_key"],
            name,
            gold,
            labels,
            disagreement=disagreement,
            limit=limit,
            seed=seed * 1000 + k,
            round=round,
            workspace=workspace,
        )
        if round is not None:  # the round's re-label dataset, when the round sent any back
            again = _answer_relabels(conn.url, creds["api_key"], name, gold, labels, round,
                                     disagreement=disagreement, seed=seed * 1000 + k + 500,
                                     workspace=workspace)  # fmt: skip
            n, wrong = n + again[0], wrong + again[1]
        log.info("%s submitted %d labels (%d differ from gold)", user.username, n, wrong)
        reports.append(AnnotatorReport(user.username, n, wrong, user.credentials_file))
    return reports


def _answer_relabels(url, api_key, dataset, gold, labels, round, **kwargs) -> tuple[int, int]:
    """Answer round ``round``'s re-label dataset of ``dataset``; (0, 0) when it has none."""
    from review.push import relabel_dataset_name

    try:
        return annotate(url, api_key, relabel_dataset_name(dataset, round), gold, labels, **kwargs)
    except DatasetNotVisible:
        return 0, 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loop.demo_annotators",
        description="DEMO/TEST TOOL: simulated annotators submit labels through the real "
        "Argilla server with their own accounts (gold label, sometimes another one).",
    )
    parser.add_argument("-p", "--project", default="thresher-project")
    parser.add_argument("--annotators", type=int, default=2)
    parser.add_argument("--disagreement", type=float, default=0.15, help="per-annotator flip rate")
    parser.add_argument("--limit", type=int, default=None, help="records per annotator")
    parser.add_argument("--round", type=int, default=None, help="only records of this round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gold", type=Path, default=None, help="CSV id,label of gold labels")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from review.server import connection
    from thresher.config import load_config
    from thresher.errors import ThresherError
    from thresher.project import Project
    from thresher.quiet import configure_output

    configure_output(0)  # the demo prints its own lines, like the thresher command
    try:
        project = Project.at(args.project)
        config = load_config(project.root)
        reports = run(
            project,
            connection(),
            annotators=args.annotators,
            disagreement=args.disagreement,
            limit=args.limit,
            dataset=config.get("review.dataset"),
            workspace=config.get("review.workspace"),
            round=args.round,
            seed=args.seed,
            gold_file=args.gold,
        )
    except (ThresherError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.to_dict() for r in reports]))
    else:
        for r in reports:
            print(
                f"{r.annotator} (simulated) submitted {r.submitted} labels, "
                f"{r.disagreed} differ from gold; login in {r.credentials_file}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
