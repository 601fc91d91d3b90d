"""Round steps that talk to Argilla through ``review``: pull, push of a selection, the probe.

- ``pull_step``: ``review.pull.pull`` (consensus, agreement, ``DIR/review/annotations.parquet``),
  then the round's ``annotations.parquet``: id, label (consensus; ties left out), label_issue
  (the annotators disagreed, or cleanlab's consensus differs from the majority: such records go
  to re-review as ``conflict``), ``conflicts.parquet`` (ties), ``discarded.parquet`` (ids every
  reviewer discarded, ``thresher.decisions``: left out of the round's records for good) and
  ``annotator_labels.parquet`` (id, JSON {annotator: label}: the select step's re-label
  decision).
- ``push_step``: the round's ``selection.parquet`` → the project's Argilla dataset as round k+1:
  metadata ``round`` (k+1), ``reason`` (uncertain / diverse / random / model-error / conflict)
  and ``priority`` (1 = first), the model's label as suggestion with its probability as score,
  the other metadata and the vector as ``thresher review push`` sends them. Upserts by record id,
  so a rerun (or a resumed round) sends the same records again without duplicates. Selection
  rows of kind ``relabel`` (records people answered already: re-labels, re-review, ties) go to
  the round's re-label dataset ``<dataset>-relabel-<k+1>`` instead (one more answer each), where
  they are pending for every annotator; pull merges its answers back.
- ``submitted_probe``: the count of submitted responses in the project's dataset and its
  re-label datasets (a few GETs), so ``thresher round`` starts round k+1 by itself once people
  have annotated since round k started.
- ``records_for_round``: the curated records (and the production records,
  ``thresher.production``) the rebuild step starts from; with
  ``labels="reviewed"`` only human labels count (the input labels become the unlabelled pool,
  which is what a fully pre-labelled corpus such as the demo needs), ``all`` keeps input labels.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from loop.errors import RoundStateError
from loop.relabel import RELABEL
from loop.rounds import Step, StepContext
from thresher.project import Project

log = logging.getLogger(__name__)

ROUND_METADATA = ("round", "reason")
LABEL_MODES = ("reviewed", "all")
DISCARDED = "discarded.parquet"  # pull step: ids every reviewer discarded
ANNOTATORS = "annotator_labels.parquet"  # pull step: id, annotator_labels (JSON)


def pull_step(
    connect: Callable[[], Any], *, dataset: str | None = None, workspace: str = "thresher"
) -> Step:
    """Pull every annotation from Argilla (``connect()`` → ``review.server.Connection``)."""

    def pull(ctx: StepContext) -> dict[str, Any]:
        import pandas as pd

        from review.pull import PullOptions
        from review.pull import pull as review_pull
        from thresher.decisions import ReviewDecisions, carried_to_dedup_clusters

        result = review_pull(
            ctx.project, connect(), PullOptions(dataset=dataset, workspace=workspace)
        )
        ann = pd.read_parquet(ctx.project.annotations_path)
        out = annotations_frame(ann)
        out.to_parquet(ctx.work_dir / "annotations.parquet", index=False)
        # who gave which label (JSON {annotator: label}): select's re-label decision
        given = ann.loc[ann["label"].notna(), ["id", "annotator_labels"]]
        given.to_parquet(ctx.work_dir / ANNOTATORS, index=False)
        ties = ann.loc[ann["label"].isna() & (ann["n_annotators"] > 0), ["id", "text"]]
        ties.to_parquet(ctx.work_dir / "conflicts.parquet", index=False)
        decisions = ReviewDecisions.from_rows(ann.to_dict("records"))  # the rows already read
        discarded = sorted(carried_to_dedup_clusters(decisions, ctx.project).discarded)
        pd.DataFrame({"id": pd.Series(discarded, dtype=str)}).to_parquet(
            ctx.work_dir / DISCARDED, index=False
        )
        before = 0
        prev = ctx.previous_outputs("pull")
        if prev:
            before = int(prev.get("annotations", 0))

        def clean(x: Any) -> Any:
            return None if isinstance(x, float) and math.isnan(x) else x

        return {
            "annotations": int(len(out)),
            "new": int(len(out)) - before,
            "submitted": int(result.submitted),
            "ties": int(result.ties),
            "discarded": len(discarded),
            "disagreements": int(result.disagreements),
            "alpha": clean(result.alpha),
            "fleiss_kappa": clean(result.fleiss_kappa),
            "dataset": result.dataset,
        }

    return pull


def annotations_frame(ann):
    """id, label, label_issue from review's annotations (pure). Ties (no consensus) are left
    out; label_issue = the annotators disagreed or cleanlab's consensus label differs."""
    import pandas as pd

    if ann.empty:
        return pd.DataFrame(
            {
                "id": pd.Series(dtype=str),
                "label": pd.Series(dtype=str),
                "label_issue": pd.Series(dtype=bool),
            }
        )
    ann = ann[ann["label"].notna()].copy()
    issue = ann["disagreement"].fillna(False).astype(bool)
    if "cleanlab_label" in ann:
        cl = ann["cleanlab_label"]
        issue = issue | (cl.notna() & (cl.astype(str) != ann["label"].astype(str)))
    return pd.DataFrame(
        {
            "id": ann["id"].astype(str).to_numpy(),
            "label": ann["label"].astype(str).to_numpy(),
            "label_issue": issue.to_numpy(dtype=bool),
        }
    )


def records_for_round(labels: str = "reviewed") -> Callable[[StepContext], Any]:
    """The rebuild step's records: curated records (representatives) with ``label`` kept
    (``all``) or cleared (``reviewed``: only pulled annotations label a record), and
    ``label_issue`` from the pull step (annotator disagreement) or, with ``all``, the score
    stage's cleanlab flag as well."""
    if labels not in LABEL_MODES:
        raise RoundStateError(
            f"loop.labels must be one of {', '.join(LABEL_MODES)}, not {labels!r}"
        )

    def records(ctx: StepContext):
        import pandas as pd

        from loop.steps import load_project_records
        from thresher.production import with_production_records

        # served texts sent back to annotators (`round --from-traffic`) are records too
        frame = with_production_records(ctx.project, load_project_records(ctx))
        stage_issue = (
            frame["label_issue"].fillna(False).astype(bool)
            if labels == "all" and "label_issue" in frame
            else pd.Series(False, index=frame.index)
        )
        if labels == "reviewed":
            frame = frame.assign(label=None)
        ann_path = ctx.step_dir("pull") / "annotations.parquet"
        flagged: set[str] = set()
        if ann_path.exists():
            ann = pd.read_parquet(ann_path)
            if "label_issue" in ann:
                flagged = set(ann.loc[ann["label_issue"].astype(bool), "id"])
        frame = frame.assign(label_issue=stage_issue.to_numpy() | frame["id"].isin(flagged))
        ties = ctx.step_dir("pull") / "conflicts.parquet"
        if ties.exists():  # no consensus yet: re-reviewed as `conflict`, not trained or pooled
            frame = frame[~frame["id"].isin(set(pd.read_parquet(ties)["id"]))]
        gone = ctx.step_dir("pull") / DISCARDED
        if gone.exists():  # every reviewer discarded it: never trained on, pooled or re-sent
            frame = frame[~frame["id"].isin(set(pd.read_parquet(gone)["id"]))]
        return frame.reset_index(drop=True)

    return records


def with_conflicts(select: Step, limit: int) -> Step:
    """``select``, then up to ``limit`` records the annotators tied on (pull's
    ``conflicts.parquet``) appended with reason ``conflict`` and no suggestion."""

    def run(ctx: StepContext) -> dict[str, Any]:
        import pandas as pd

        from loop.steps import selection_counts

        outputs = dict(select(ctx) or {})
        ties_path = ctx.step_dir("pull") / "conflicts.parquet"
        if not limit or not ties_path.exists():
            return outputs
        ties = pd.read_parquet(ties_path).head(limit)
        if ties.empty:
            return outputs
        path = ctx.work_dir / "selection.parquet"
        sel = pd.read_parquet(path)
        ties = ties[~ties["id"].isin(set(sel["id"]))]
        extra = pd.DataFrame(
            {
                "id": ties["id"].to_numpy(),
                "text": ties["text"].to_numpy(),
                "reason": "conflict",
                "priority": np.arange(len(sel) + 1, len(sel) + len(ties) + 1),
                "score": 1.0,
                "suggestion": None,
                "suggestion_score": np.nan,
                "round": ctx.round,
                "kind": RELABEL,  # answered already: goes back to annotators as a re-label
                "activelab": np.nan,
            }
        )
        sel = pd.concat([sel, extra], ignore_index=True) if len(sel) else extra
        sel.to_parquet(path, index=False)
        outputs.update(selection_counts(sel))
        return outputs

    return run


# ---------------------------------------------------------------- push


def _ensure_round_metadata(conn, dataset_id: str) -> None:
    """Add the ``round`` (integer) and ``reason`` (terms) metadata properties when missing."""
    from review.client import open_client

    with open_client(conn) as client:
        have = {
            p["name"]
            for p in client.get(
                f"/api/v1/me/datasets/{dataset_id}/metadata-properties", "list metadata"
            )["items"]
        }
        specs = {
            "round": {"type": "integer"},
            "reason": {"type": "terms"},
        }
        for name, settings in specs.items():
            if name in have:
                continue
            client.post(
                f"/api/v1/datasets/{dataset_id}/metadata-properties",
                f"add metadata property {name!r}",
                json={
                    "name": name,
                    "title": name.capitalize(),
                    "settings": settings,
                    "visible_for_annotators": True,
                },
            )


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def push_rows(
    project: Project,
    conn,
    options,
    rows: Sequence[dict[str, Any]],
    *,
    next_round: int,
    embed: Callable[[list[str]], Any] | None = None,
    relabel_dir: Path | None = None,
) -> dict[str, Any]:
    """Upsert ``rows`` (selection rows merged with their stage columns) into the project's
    dataset with round metadata, through review push's batching and retries
    (``review.push.send_batches``). ``options``: ``review.push.PushOptions``. With
    ``relabel_dir`` the rows go to the round's re-label dataset instead
    (``review.push.relabel_dataset_name``; its push state is kept in ``relabel_dir``). Returns
    ``{dataset, dataset_id, url, sent, unchanged, failed, seconds}``; raises ``PushError``
    (rerun the round to resume) when records could not be sent."""
    from review.push import (
        PushError,
        bulk_item,
        content_hash,
        open_dataset,
        open_relabel_dataset,
        record_payload,
        record_vectors,
        relabel_dataset_name,
        send_batches,
    )

    t0 = time.perf_counter()
    name = options.dataset or project.root.resolve().name
    labels = list(options.labels) or sorted(
        {str(r[key]) for r in rows for key in ("suggestion", "label") if _present(r.get(key))}
    )
    if not labels:
        raise PushError(f"no labels to push; set `labels:` in {project.root / 'thresher.yaml'}")
    if relabel_dir is None:
        state, dataset_id, questions = open_dataset(project, conn, name, options, labels)
    else:
        name = relabel_dataset_name(name, int(next_round))
        state, dataset_id, questions = open_relabel_dataset(
            conn, name, options, labels, relabel_dir
        )
    _ensure_round_metadata(conn, dataset_id)

    payloads: dict[str, dict[str, Any]] = {}
    for row in rows:
        p = record_payload(row, int(row["priority"]))
        p["metadata"]["round"] = int(next_round)
        p["metadata"]["reason"] = str(row["reason"])
        payloads[str(row["id"])] = p
    ids = list(payloads)
    model_key = options.embedding_model if options.vectors else None
    hashes = {rid: content_hash(payloads[rid], model_key) for rid in ids}
    vectors = record_vectors(project, payloads, ids, options, embed)

    def item(rid: str) -> dict[str, Any]:
        return bulk_item(payloads[rid], labels, questions, vectors.get(rid))

    out = send_batches(conn, dataset_id, ids, item, hashes, state, options)
    state.save()
    if out.failed:
        raise PushError(
            f"{len(out.failed)} of {len(ids)} records of round {next_round} were not sent to "
            f"{conn.url} (sent {out.sent}; {out.error}); rerun `thresher round -p "
            f"{project.root}` to resume"
        )
    return {
        "dataset": name,
        "dataset_id": dataset_id,
        "url": conn.url,
        "sent": out.sent,
        "unchanged": 0,
        "failed": 0,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def push_step(
    connect: Callable[[], Any],
    options,
    *,
    embed: Callable[[list[str]], Any] | None = None,
) -> Step:
    """Push the round's selection to Argilla as round k+1 (see module doc)."""

    def push(ctx: StepContext) -> dict[str, Any]:
        import pandas as pd

        opts = options

        from loop.steps import load_project_records

        sel = pd.read_parquet(ctx.step_dir("select") / "selection.parquet")
        stage = load_project_records(ctx)
        extra = stage.set_index("id")
        rows = []
        if not opts.labels:  # the model's classes: every label the dataset must offer
            classes = json.loads((ctx.step_dir("predict") / "classes.json").read_text())
            opts = replace(opts, labels=tuple(str(c) for c in classes))
        relabel = []  # answered already: to the round's re-label dataset (pending again)
        for rec in sel.to_dict(orient="records"):
            rec = {k: (v if _present(v) else None) for k, v in rec.items()}
            row = dict(extra.loc[rec["id"]]) if rec["id"] in extra.index else {}
            row = {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in row.items()
                if k not in {"predicted_label", "predicted_prob"}
            }
            row.update(
                id=rec["id"],
                text=rec["text"],
                priority=int(rec["priority"]),
                reason=rec["reason"],
                suggestion=rec["suggestion"],
                predicted_label=rec["suggestion"],
                predicted_prob=rec["suggestion_score"],
            )
            (relabel if rec.get("kind") == RELABEL else rows).append(row)
        k = ctx.round + 1
        out: dict[str, Any] = {"dataset": None, "sent": 0, "unchanged": 0, "failed": 0}
        if rows or relabel:
            conn = connect()
        if rows:
            out = push_rows(ctx.project, conn, options, rows, next_round=k, embed=embed)
        if relabel:
            state_dir = ctx.work_dir / "relabel"
            state_dir.mkdir()
            again = push_rows(
                ctx.project,
                conn,
                opts,  # the dataset offers every class of the model
                relabel,
                next_round=k,
                embed=embed,
                relabel_dir=state_dir,
            )
            out["dataset"] = out["dataset"] or (options.dataset or ctx.project.root.resolve().name)
            out["sent"] += again["sent"]
            out.update(relabel_dataset=again["dataset"], relabel_sent=again["sent"])
        out.update(new_sent=out["sent"] - out.get("relabel_sent", 0), round=k)
        (ctx.work_dir / "pushed.json").write_text(
            json.dumps(
                {
                    "round": k,
                    "ids": [r["id"] for r in rows],
                    "relabel_ids": [r["id"] for r in relabel],
                    "relabel_dataset": out.get("relabel_dataset"),
                }
            ),
            encoding="utf-8",
        )
        return out

    return push


def submitted_probe(
    connect: Callable[[], Any], workspace: str = "thresher"
) -> Callable[[Project], dict[str, Any]]:
    """``project → {"submitted": n}``: submitted responses in the project's dataset and its
    per-round re-label datasets in ``workspace`` (``{"submitted": 0}`` before the first
    push)."""

    def probe(project: Project) -> dict[str, Any]:
        from review.client import open_client
        from review.pull import relabel_datasets
        from review.push import PushState

        state = PushState.load(project.root / "review")
        if not state.dataset_id:
            return {"submitted": 0}
        conn = connect()
        ids = [state.dataset_id]
        if state.dataset:
            ids += [i for _, _, i in relabel_datasets(conn, state.dataset, workspace)]
        total = 0
        with open_client(conn) as client:
            for dataset_id in ids:
                resp = client.send(
                    "GET", f"/api/v1/datasets/{dataset_id}/users/progress", "annotation progress"
                )
                if resp.status_code != 200:
                    return {"submitted": None}
                for user in resp.json().get("users") or []:
                    for part in ("completed", "pending"):
                        total += int((user.get(part) or {}).get("submitted") or 0)
        return {"submitted": total}

    return probe
