"""The training data: the curated set and a fixed, leakage-free train/val/test split.

Curated (``mode="curated"``):
- dedup representatives only (when ``DIR/dedup`` ran): one record per exact/near cluster;
- reviewed labels over raw labels and records every reviewer discarded left out
  (``thresher.decisions``: ``DIR/review/annotations.parquet``; out of val/test in both modes, so
  raw and curated runs share their evaluation records; raw train keeps them);
- suspected label errors (``label_issue`` from ``DIR/score``) excluded, down-weighted, relabelled
  to the score stage's ``predicted_label`` or kept, unless a reviewer confirmed the label. With
  ``issue_min_prob`` > 0 only the flags whose ``predicted_prob`` (the out-of-sample probability of
  another label) reaches it count; ``curate_val`` applies the same policy to the validation split
  (early stopping / model selection), never to the test split.
Raw (``mode="raw"``): every labelled ingested record with its raw label, weight 1.

The split is made once per project (stratified by label, seeded, by duplicate cluster so a cluster
never straddles splits) and saved to ``DIR/tune/split.parquet``; later rounds reuse it, so the test
split stays fixed. Records first seen after the split go to train, unless a member of their cluster
is already in val/test (then they are held out, to keep the test split free of train duplicates).
Val and test use the best labels known (reviewed > raw) in both modes, with one record per cluster,
so raw and curated runs are scored on the same test records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from thresher.decisions import load_decisions
from thresher.errors import ThresherError
from thresher.production import with_production_records
from thresher.project import Project
from thresher.records import representative_mask
from thresher.split import ensure_split
from tune.options import DataOptions

log = logging.getLogger(__name__)

POLICIES = ("exclude", "downweight", "relabel", "keep")


class EmptyDataError(ThresherError):
    """Nothing left to train on (no labels, one class, or curation removed everything)."""


@dataclass
class TuneData:
    """Train/val/test frames with columns ``id, text, label, weight, slice`` (slice: list[str])."""

    train: Any
    val: Any
    test: Any
    labels: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    source_stage: str = "ingest"
    pairs: bool = False  # instruction/response pairs (tune/pairs.py): label holds the response

    def label_map(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}


def load_records(project: Project, mode: str = "curated", require_label: bool = True):
    """(stage, frame) of the most downstream records (score > dedup > ingest); raw: ingest.

    Curated: with the production records the stage lacks (``thresher.production``: served
    texts sent back to annotators; unlabelled until reviewed)."""
    import pandas as pd

    stages = ["ingest"] if mode == "raw" else ["score", "dedup", "ingest"]
    stage, path = project.latest_records(stages)
    frame = pd.read_parquet(path)
    if require_label and "label" not in frame.columns:
        raise EmptyDataError(f"{path} has no label column; ingest with --label-col")
    if mode != "raw":
        frame = with_production_records(project, frame)
    return stage, frame


def cluster_info(project: Project, frame):
    """Dedup columns from the current frame or, in raw mode, from DIR/dedup or DIR/score."""
    import pandas as pd

    cols = ["dup_cluster", "is_representative"]
    if all(c in frame.columns for c in cols):
        return frame
    import pyarrow.parquet as pq

    for stage in ("score", "dedup"):
        path = project.records_path(stage)
        if path.exists() and set(cols) <= set(pq.read_schema(path).names):
            extra = pd.read_parquet(path, columns=["id", *cols])
            return frame.drop(columns=[c for c in cols if c in frame.columns]).merge(
                extra, on="id", how="left"
            )
    return frame


def slices_of(frame) -> list[list[str]]:
    if "bias_groups" not in frame.columns:
        return [[] for _ in range(len(frame))]
    return [
        list(v) if v is not None and not isinstance(v, float) else [] for v in frame["bias_groups"]
    ]


def _flag(frame, column: str):
    if column not in frame.columns:
        return frame["id"].map(lambda _: False)
    return frame[column].fillna(False).astype(bool)


def _issues(frame, best, reviewed: dict[str, str], opts: DataOptions):
    """(issue mask, label to relabel to) of the suspected label errors that the policy acts on.

    A flag counts unless a reviewer settled the record, its ``predicted_prob`` is below
    ``opts.issue_min_prob`` (low = the score stage is unsure the label is wrong), or, for
    ``relabel``, it has no ``predicted_label`` different from the current label."""
    issue = _flag(frame, "label_issue") & ~frame["id"].isin(reviewed.keys())
    if opts.mode == "raw":
        return issue & False, best
    if opts.issue_min_prob > 0:
        if "predicted_prob" not in frame.columns:
            raise ThresherError(
                "issue_min_prob needs predicted_prob from the score stage; "
                "rerun `thresher curate score` or set issue_min_prob: 0"
            )
        issue &= frame["predicted_prob"].fillna(0.0).astype(float) >= opts.issue_min_prob
    relabel_to = best
    if opts.label_issues == "relabel":
        if "predicted_label" not in frame.columns:
            raise ThresherError(
                "label_issues: relabel needs predicted_label from the score stage; "
                "rerun `thresher curate score` or use exclude|downweight"
            )
        relabel_to = frame["predicted_label"].where(frame["predicted_label"].notna(), None)
        issue &= relabel_to.notna() & (relabel_to.astype(str) != best.astype(str))
    return issue, relabel_to


def representatives(frame):
    """True for dedup representatives and for records outside any duplicate cluster."""
    import pandas as pd

    return pd.Series(representative_mask(frame), index=frame.index)


def one_per_cluster(part, is_rep, group):
    """An evaluation frame with one record per duplicate cluster (its representative first,
    then the smallest id), so a cluster counts once."""
    part = part.assign(_rep=is_rep, _g=group)
    part = part.sort_values(["_g", "_rep", "id"], ascending=[True, False, True])
    return part.drop_duplicates("_g").drop(columns=["_rep", "_g"])


@dataclass
class _Labelled:
    """The project's records and what the curation rules read, one row per record (aligned)."""

    frame: Any  # the records with their ``split`` and ``group``
    base: Any  # ``id, text, weight, slice``: the rows a split frame is cut from
    raw_label: Any  # the input label (None = unlabelled)
    best: Any  # the best label known: reviewers' consensus over the input label
    discarded: Any  # every reviewer discarded it
    is_rep: Any  # a dedup representative, or in no duplicate cluster
    issue: Any  # a suspected label error the policy acts on
    relabel_to: Any  # its label under ``relabel``


def build_dataset(project: Project, opts: DataOptions) -> TuneData:
    """Train/val/test frames for ``opts.mode`` (see the module docstring); counts say what was
    dropped, relabelled and why."""
    _check_options(opts)
    stage, rec, counts = _labelled_records(project, opts)
    # Evaluation splits: the same test records and gold labels for raw and curated runs; val too,
    # unless curate_val applies the curated policy to it (curated mode only).
    evals = {name: _eval_frame(rec, name, opts, counts) for name in ("val", "test")}
    counts["held_out_duplicates"] = int(rec.frame["split"].eq("held").sum())
    if opts.mode == "raw":
        stage, train = "ingest", _raw_train(rec)
    else:
        train = _curated_train(rec, opts, counts)
    labels = sorted(set(train["label"]) | set(evals["val"]["label"]) | set(evals["test"]["label"]))
    counts.update(train=len(train), val=len(evals["val"]), test=len(evals["test"]))
    _check_trainable(project, opts, train, counts)
    return TuneData(
        train=train.reset_index(drop=True),
        val=evals["val"].reset_index(drop=True),
        test=evals["test"].reset_index(drop=True),
        labels=labels,
        counts=counts,
        source_stage=stage,
    )


def _check_options(opts: DataOptions) -> None:
    if opts.label_issues not in POLICIES:
        raise ThresherError(
            f"unknown label_issues policy {opts.label_issues!r}; use {'|'.join(POLICIES)}"
        )
    if opts.mode not in ("raw", "curated"):
        raise ThresherError(f"unknown data mode {opts.mode!r}; use raw or curated")


def _labelled_records(project: Project, opts: DataOptions) -> tuple[str, _Labelled, dict[str, int]]:
    """(stage, records, counts) of the most downstream records, split (``thresher.split``: made
    on first use from the best labels) and judged by the reviewers' decisions and the policy."""
    import pandas as pd

    stage, frame = load_records(project, "curated")
    frame = cluster_info(project, frame).copy()
    frame["id"] = frame["id"].astype(str)
    raw_label = frame["label"].where(frame["label"].notna(), None)
    decisions = load_decisions(project)
    split = ensure_split(
        project, frame, decisions.best_labels(frame["id"], raw_label), opts.split_spec()
    )
    frame = frame.merge(split[["id", "split", "group"]], on="id", how="left")
    best = decisions.best_labels(frame["id"], frame["label"])
    discarded = decisions.discarded_mask(frame["id"])
    counts: dict[str, int] = {
        "records": len(frame),
        "reviewed": int(frame["id"].isin(decisions.labels.keys()).sum()),
        "discarded": int(discarded.sum()),
    }
    base = pd.DataFrame(
        {
            "id": frame["id"],
            "text": frame["text"].astype(str),
            "weight": 1.0,
            "slice": slices_of(frame),
        }
    )
    issue, relabel_to = _issues(frame, best, decisions.labels, opts)
    rec = _Labelled(
        frame, base, raw_label, best, discarded, representatives(frame), issue, relabel_to
    )
    return stage, rec, counts


def _eval_frame(rec: _Labelled, name: str, opts: DataOptions, counts: dict[str, int]):
    """The ``name`` (val/test) frame: its labelled, kept records, one per cluster, best labels;
    with ``curate_val`` the validation split gets the curated policy too."""
    rows = rec.frame["split"].eq(name) & rec.best.notna() & ~rec.discarded
    label = rec.best
    if name == "val" and opts.mode == "curated" and opts.curate_val:
        counts["val_label_issues"] = int((rows & rec.issue).sum())
        if opts.label_issues == "relabel":
            label = rec.best.where(~rec.issue, rec.relabel_to)
            counts["val_relabelled"] = int((rows & rec.issue).sum())
        elif opts.label_issues in ("exclude", "downweight"):
            rows &= ~rec.issue
    part = rec.base[rows].assign(label=label[rows].astype(str))
    return one_per_cluster(part, rec.is_rep[rows], rec.frame["group"][rows])


def _raw_train(rec: _Labelled):
    """Every labelled training-split record with its input label (discarded ones included)."""
    rows = rec.frame["split"].eq("train") & rec.raw_label.notna()
    return rec.base[rows].assign(label=rec.raw_label[rows].astype(str))


def _curated_train(rec: _Labelled, opts: DataOptions, counts: dict[str, int]):
    """The training split's kept representatives with their best labels, the label-issue
    policy applied; ``counts`` gets what was dropped or relabelled."""
    rows = rec.frame["split"].eq("train") & ~rec.discarded
    counts["dropped_duplicates"] = int((rows & ~rec.is_rep).sum())
    rows &= rec.is_rep
    counts["unlabelled"] = int((rows & rec.best.isna()).sum())
    rows &= rec.best.notna()
    counts["label_issues"] = int((rows & rec.issue).sum())
    if opts.label_issues == "exclude":
        rows &= ~rec.issue
    relabel = opts.label_issues == "relabel"
    label = rec.best.where(~rec.issue, rec.relabel_to) if relabel else rec.best
    train = rec.base[rows].assign(label=label[rows].astype(str))
    if opts.label_issues == "downweight":
        train.loc[rec.issue[rows].to_numpy(), "weight"] = float(opts.issue_weight)
    elif relabel:
        counts["relabelled"] = int((rows & rec.issue).sum())
    return train


def _check_trainable(project: Project, opts: DataOptions, train, counts: dict[str, int]) -> None:
    if len(train) == 0:
        raise EmptyDataError(
            f"no labelled training records in {project.root} ({opts.mode} set; counts {counts}); "
            "ingest labelled data or use --data raw / label_issues: keep"
        )
    if len(set(train["label"])) < 2:
        raise EmptyDataError(
            f"the {opts.mode} training set in {project.root} has one label only "
            f"({sorted(set(train['label']))}); a classifier needs two or more"
        )
