"""A production round: served texts back to annotators (``thresher round --from-traffic``).

pull → select → push, without training:

- pull: ``review pull``, so the decisions are fresh (skipped while nothing was ever pushed).
- select (``select_traffic``, pure): the traffic log between ``since`` and ``until``
  (``thresher.traffic``). Rows logged without text (``serve --no-log-text``) are skipped and
  counted; a text served several times counts once (its latest answer); texts the project
  already holds are left out (record ids and their text ids, production records, reviewed ids).
  The rest is ranked near-OOD first when the latest ``thresher monitor`` report has per-record
  flags (``monitor_flags``), then by margin (top-1 minus top-2 probability, ascending: low =
  the served model was unsure), and the first ``size`` are taken.
- push: the project's Argilla dataset, metadata ``reason`` = ``production`` and ``round`` = the
  next learning round, the served label and probability as suggestion and score; then the
  records are appended to ``DIR/review/production.parquet`` (``thresher.production``), which
  makes them records of the project: once reviewed, the next round and ``tune train`` learn
  from them.

Each run is recorded in ``DIR/rounds/production/<n>/`` (``manifest.json`` with strategy
``production``, the options, every step's outputs and timings; ``selection.parquet``). The
numbering is its own: a learning round reads the round before it (its fixed test split, the
adapter to warm-start from), and a production round has neither. A run is idempotent without a
resume: records are appended only after the push succeeded, so a failed or killed run leaves
them selectable and the next run sends them again (upserted by id, never duplicated), and a run
after a successful one finds nothing new.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from loop.errors import RoundStateError
from loop.rounds import list_rounds, rounds_dir, rounds_lock
from thresher.project import Project, atomic_output, atomic_write_json

log = logging.getLogger(__name__)

REASON = "production"
STRATEGY = "production"
PRODUCTION_ROUNDS = "production"
STEPS = ("pull", "select", "push")


@dataclass(frozen=True)
class TrafficRoundOptions:
    """What a production round reads: the traffic window ``since <= time < until`` (UTC; None =
    open), how many texts to send, and the Argilla dataset/workspace to pull from."""

    size: int = 50
    since: datetime | None = None
    until: datetime | None = None
    dataset: str | None = None
    workspace: str = "thresher"

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": STRATEGY,
            "size": self.size,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "dataset": self.dataset,
        }


@dataclass
class TrafficSelection:
    """The ranked selection (``id, text, reason, priority, score, suggestion, suggestion_score,
    near_ood, time, model, request_id, source_row``) and what was left out, counted."""

    frame: Any
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class TrafficRoundResult:
    """One production round (``to_dict`` is the ``--json`` summary)."""

    round: int
    manifest: dict[str, Any]

    def outputs(self, step: str) -> dict[str, Any]:
        return self.manifest.get("steps", {}).get(step, {}).get("outputs") or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "kind": "production",
            "strategy": STRATEGY,
            "status": self.manifest.get("status"),
            "outputs": {name: self.outputs(name) for name in STEPS},
            "timings": {
                name: step.get("seconds", 0.0)
                for name, step in self.manifest.get("steps", {}).items()
            },
            "path": self.manifest.get("path"),
        }


# ---------------------------------------------------------------- selection (pure)


def margin(probs: dict[str, float] | None) -> float:
    """Top-1 minus top-2 probability of one served answer (0..1; low = uncertain). One class:
    its probability; no probabilities: 0 (treated as the most uncertain)."""
    values = sorted((float(v) for v in (probs or {}).values()), reverse=True)
    if not values:
        return 0.0
    return values[0] - (values[1] if len(values) > 1 else 0.0)


def select_traffic(
    traffic, known: Iterable[str], size: int, near_ood: Iterable[str] | None = None
) -> TrafficSelection:
    """The ``size`` served texts to send to annotators (see the module doc for the order).

    ``traffic``: ``thresher.traffic.read_traffic``'s frame (time order); ``known``: text ids the
    project already holds; ``near_ood``: text hashes the monitor flagged (None: no per-record
    monitor output, rank by margin alone). Counts: ``read``, ``no_text``, ``duplicates``,
    ``known``, ``candidates``, ``selected``, ``near_ood_selected``."""
    import numpy as np
    import pandas as pd

    if size < 0:
        raise RoundStateError(f"--size must be 0 or more, not {size}")
    frame = traffic.reset_index(drop=True).assign(source_row=np.arange(len(traffic)))
    counts = {"read": int(len(frame))}
    has_text = frame["text"].notna()
    counts["no_text"] = int((~has_text).sum())
    frame = frame[has_text]
    latest = frame.sort_values(["time", "source_row"], kind="stable").drop_duplicates(
        "text_hash", keep="last"
    )
    counts["duplicates"] = int(len(frame) - len(latest))
    is_known = latest["text_hash"].astype(str).isin(set(known))
    counts["known"] = int(is_known.sum())
    cand = latest[~is_known].copy()
    counts["candidates"] = int(len(cand))
    flagged = set(near_ood) if near_ood is not None else set()
    cand["near_ood"] = cand["text_hash"].isin(flagged)
    cand["margin"] = [margin(p) for p in cand["probs"]]
    cand = cand.sort_values(
        ["near_ood", "margin", "time", "text_hash"],
        ascending=[False, True, False, True],
        kind="stable",
    ).head(size)
    out = pd.DataFrame(
        {
            "id": cand["text_hash"].astype(str).to_numpy(),
            "text": cand["text"].astype(str).to_numpy(),
            "reason": REASON,
            "priority": np.arange(1, len(cand) + 1),
            "score": cand["margin"].astype(float).to_numpy(),
            "suggestion": cand["label"].astype(str).to_numpy(),
            "suggestion_score": cand["prob"].astype(float).to_numpy(),
            "near_ood": cand["near_ood"].astype(bool).to_numpy(),
            "time": cand["time"].to_numpy(),
            "model": cand["model"].astype(str).to_numpy(),
            "request_id": cand["request_id"].astype(str).to_numpy(),
            "source_row": cand["source_row"].astype("int64").to_numpy(),
        }
    )
    counts["selected"] = int(len(out))
    counts["near_ood_selected"] = int(out["near_ood"].sum())
    return TrafficSelection(out, counts)


# ---------------------------------------------------------------- what the project knows


def known_text_ids(project: Project) -> set[str]:
    """Ids a served text must not have to be sent: the ids of the latest stage's records (every
    row, duplicates included) and the text ids of their texts, the production records' ids and
    every reviewed id (``DIR/review/annotations.parquet``)."""
    import pyarrow.parquet as pq

    from thresher.errors import StageMissingError
    from thresher.production import production_ids
    from thresher.records import text_id

    known: set[str] = set(production_ids(project))
    try:
        _, path = project.latest_records(["score", "dedup", "ingest"])
        table = pq.read_table(path, columns=["id", "text"])
        known |= {str(x) for x in table.column("id").to_pylist()}
        known |= {text_id(str(t)) for t in table.column("text").to_pylist()}
    except StageMissingError:
        pass
    if project.annotations_path.exists():
        ann = pq.read_table(project.annotations_path, columns=["id"])
        known |= {str(x) for x in ann.column("id").to_pylist()}
    return known


def monitor_flags(project: Project) -> tuple[frozenset[str] | None, str]:
    """(text hashes the latest monitor report flagged near-OOD, how the selection is ranked).

    Per-record output: ``records.parquet`` next to ``DIR/monitor/<name>/report.json`` with
    ``text_hash`` and ``near_ood`` (bool). None when there is no report or it has no such file."""
    import pyarrow.parquet as pq

    reports = sorted(
        (project.root / "monitor").glob("*/report.json"), key=lambda p: p.stat().st_mtime
    )
    if not reports:
        return None, "by uncertainty (margin): no monitor report"
    folder = reports[-1].parent
    per_record = folder / "records.parquet"
    if per_record.exists() and {"text_hash", "near_ood"} <= set(pq.read_schema(per_record).names):
        table = pq.read_table(per_record, columns=["text_hash", "near_ood"]).to_pandas()
        flagged = table.loc[table["near_ood"].fillna(False).astype(bool), "text_hash"]
        return frozenset(
            flagged.astype(str)
        ), f"near-OOD first (monitor {folder.name}), then margin"
    return None, (
        f"by uncertainty (margin): {folder} has no per-record output "
        "(records.parquet with text_hash, near_ood)"
    )


def production_rows(selection):
    """The selection as production records (``thresher.production.COLUMNS``)."""
    import pandas as pd

    from thresher.production import SOURCE

    meta = [
        json.dumps(
            {
                "time": pd.Timestamp(t).isoformat(),
                "model": m,
                "request_id": r,
                "predicted_label": s,
                "predicted_prob": round(float(p), 6),
            },
            sort_keys=True,
        )
        for t, m, r, s, p in zip(
            selection["time"],
            selection["model"],
            selection["request_id"],
            selection["suggestion"],
            selection["suggestion_score"],
            strict=True,
        )
    ]
    return pd.DataFrame(
        {
            "id": selection["id"].astype(str),
            "text": selection["text"].astype(str),
            "label": pd.Series([None] * len(selection), dtype=object),
            "source": SOURCE,
            "source_row": selection["source_row"].astype("int64"),
            "metadata": meta,
        }
    )


# ---------------------------------------------------------------- the round


def production_rounds_dir(project: Project) -> Path:
    """``DIR/rounds/production``: one folder per production round, numbered from 1."""
    return rounds_dir(project) / PRODUCTION_ROUNDS


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_traffic_round(
    project: Project,
    options: TrafficRoundOptions,
    push_options: Any,
    *,
    connect: Callable[[], Any],
    embed: Callable[[list[str]], Any] | None = None,
) -> TrafficRoundResult:
    """Run one production round (see the module doc). ``push_options``:
    ``review.push.PushOptions``; ``connect()`` → the Argilla connection; ``embed`` overrides
    the vectors sent with the records (tests)."""
    with rounds_lock(project):
        base = production_rounds_dir(project)
        done = (
            sorted(int(p.name) for p in base.glob("*") if p.name.isdigit()) if base.exists() else []
        )
        n = (done[-1] if done else 0) + 1
        rdir = base / str(n)
        rdir.mkdir(parents=True)
        manifest: dict[str, Any] = {
            "round": n,
            "kind": "production",
            "strategy": STRATEGY,
            "status": "running",
            "order": list(STEPS),
            "options": options.to_dict(),
            "steps": {},
            "started_at": _now(),
            "path": str(rdir),
        }
        atomic_write_json(rdir / "manifest.json", manifest)
        state: dict[str, Any] = {}
        steps = {
            "pull": lambda: _pull(project, options, connect),
            "select": lambda: _select(project, options, rdir, state),
            "push": lambda: _push(project, push_options, connect, embed, state),
        }
        for name in STEPS:
            t0 = time.perf_counter()
            try:
                outputs = steps[name]()
            except BaseException as err:
                manifest["steps"][name] = {
                    "status": "failed",
                    "error": f"{type(err).__name__}: {err}"[:500],
                }
                manifest.update(status="failed", failed_at=_now())
                atomic_write_json(rdir / "manifest.json", manifest)
                raise
            manifest["steps"][name] = {
                "status": "done",
                "outputs": outputs,
                "seconds": round(time.perf_counter() - t0, 4),
            }
            atomic_write_json(rdir / "manifest.json", manifest)
        manifest.update(status="done", finished_at=_now())
        atomic_write_json(rdir / "manifest.json", manifest)
        return TrafficRoundResult(n, manifest)


def _pull(project: Project, options: TrafficRoundOptions, connect) -> dict[str, Any]:
    """``review pull`` (fresh decisions and reviewed ids); skipped before the first push."""
    from review.pull import PullOptions, pull
    from review.push import PushState

    if not PushState.load(project.root / "review").dataset_id:
        return {"skipped": "nothing pushed yet"}
    result = pull(
        project, connect(), PullOptions(dataset=options.dataset, workspace=options.workspace)
    )
    return {
        "dataset": result.dataset,
        "records": int(result.records),
        "submitted": int(result.submitted),
    }


def _select(
    project: Project, options: TrafficRoundOptions, rdir: Path, state: dict[str, Any]
) -> dict[str, Any]:
    from thresher.traffic import read_traffic

    traffic = read_traffic(project.traffic_dir, options.since, options.until)
    flagged, ranking = monitor_flags(project)
    sel = select_traffic(traffic, known_text_ids(project), options.size, flagged)
    with atomic_output(rdir / "selection.parquet") as tmp:
        sel.frame.to_parquet(tmp, index=False)
    state["selection"] = sel.frame
    state["labels"] = sorted({str(k) for probs in traffic["probs"] for k in (probs or {})})
    return {**sel.counts, "ranking": ranking, "traffic": str(project.traffic_dir)}


def _push(project: Project, push_options, connect, embed, state: dict[str, Any]) -> dict[str, Any]:
    """Push the selection (round = the next learning round), then append it to the project's
    production records."""
    from loop.review_steps import push_rows
    from thresher.production import SOURCE, append_production_records

    sel = state["selection"]
    next_round = (list_rounds(project) or [0])[-1] + 1
    if sel.empty:
        return {"dataset": None, "sent": 0, "failed": 0, "round": next_round, "appended": 0}
    opts = push_options
    if not opts.labels:  # the served model's classes: every label the dataset must offer
        opts = replace(opts, labels=tuple(state["labels"]))
    rows = [
        {
            "id": r["id"],
            "text": r["text"],
            "source": SOURCE,
            "priority": int(r["priority"]),
            "reason": REASON,
            "suggestion": r["suggestion"],
            "predicted_label": r["suggestion"],
            "predicted_prob": float(r["suggestion_score"]),
        }
        for r in sel.to_dict(orient="records")
    ]
    out = push_rows(project, connect(), opts, rows, next_round=next_round, embed=embed)
    added, total = append_production_records(project, production_rows(sel))
    return {**out, "round": next_round, "appended": added, "production_records": total}
