"""``thresher review pull``: bring annotations back, measure agreement, merge reviewed labels.

Writes into ``DIR/review/`` (each file atomically):

* ``annotations.parquet``: one row per record with at least one submitted or discarded response:
  ``id, text, label`` (majority consensus; null on a tie), ``n_annotators, agreement`` (share
  agreeing with the majority, 0..1), ``tie, disagreement, annotator_labels`` (JSON
  {annotator: label}), ``notes`` (JSON {annotator: note}), ``discarded_by`` (list),
  ``given_label, predicted_label`` and, where the model's probabilities exist,
  ``cleanlab_label, cleanlab_quality`` (CROWDLAB consensus quality, 0..1, higher = better).
* ``agreement.json``: Krippendorff's alpha (nominal) and Fleiss' kappa over all records, and per
  annotator: agreement with the consensus, with the other annotators (leave-one-out: their label
  against the others' majority; with two annotators, plain pairwise agreement) and CROWDLAB's
  annotator quality where the model's probabilities exist (``crowdlab_note`` says why not); and
  under ``prelabeller`` the pre-labels of ``thresher review prelabel`` against the consensus,
  overall and per bias slice (a non-human annotator: measured, never part of the consensus).
* Re-labels: the answers in the per-round re-label datasets ``<dataset>-relabel-<k>``
  (records sent back by ``thresher round``) are merged into their records first; an annotator
  who answered a record twice counts with the later answer.
* ``curated.parquet``: the latest stage's records with reviewed labels merged in: ``label`` is the
  consensus where reviewers reached one, ``original_label`` keeps the input label and
  ``label_source`` says ``reviewed`` or ``original``; records every reviewer discarded are
  dropped. ``thresher.decisions`` holds that rule; ``curate export`` and ``tune`` apply it too.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from review.agreement import (
    agreement_with_others,
    annotator_agreement,
    cleanlab_consensus,
    fleiss_kappa,
    krippendorff_alpha_nominal,
    majority_consensus,
    prelabeller_agreement,
)
from review.client import ArgillaClient, open_client
from review.push import LABEL_QUESTION, NOTE_QUESTION, TEXT_FIELD, PushState, relabel_round
from review.server import Connection
from thresher.decisions import (
    CLUSTER_COLUMNS,
    ReviewDecisions,
    apply_to_batch,
    load_decisions,
    output_schema,
)
from thresher.errors import StageMissingError, ThresherError
from thresher.production import reviewed_production_records
from thresher.project import Project, atomic_output, atomic_write_json

log = logging.getLogger(__name__)

CURATED = "curated.parquet"
AGREEMENT = "agreement.json"
PAGE = 1000


class PullError(ThresherError):
    """The dataset could not be read back."""


@dataclass(frozen=True)
class PullOptions:
    dataset: str | None = None
    workspace: str = "thresher"


@dataclass
class PullResult:
    dataset: str
    records: int
    annotated: int
    submitted: int
    discarded: int
    consensus: int
    ties: int
    disagreements: int
    alpha: float
    fleiss_kappa: float
    annotators: list[dict[str, Any]]
    crowdlab_note: str | None
    seconds: float
    path: str
    # the pre-labeller (DIR/review/prelabels.parquet) against the consensus; None without one
    prelabeller: dict[str, Any] | None = None
    # the per-round re-label datasets whose answers were merged in (``merge_relabels``)
    relabel_datasets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def clean(x: Any) -> Any:
            return None if isinstance(x, float) and math.isnan(x) else x

        out = {k: clean(v) for k, v in self.__dict__.items()}
        out["annotators"] = [{k: clean(v) for k, v in a.items()} for a in self.annotators]
        out["seconds"] = round(self.seconds, 3)
        return out


def _datasets_in(client: ArgillaClient, workspace: str) -> dict[str, str]:
    """Dataset name → id of the datasets in ``workspace`` (two GETs)."""
    items = client.get("/api/v1/me/datasets", "list datasets")["items"]
    workspaces = client.get("/api/v1/me/workspaces", "list workspaces")["items"]
    spaces = {w["id"]: w["name"] for w in workspaces}
    return {d["name"]: d["id"] for d in items if spaces.get(d["workspace_id"]) == workspace}


def _relabels_of(name: str, found: dict[str, str]) -> list[tuple[int, str, str]]:
    out = [(relabel_round(name, n), n, i) for n, i in found.items()]
    return sorted((k, n, i) for k, n, i in out if k is not None)


def relabel_datasets(conn: Connection, name: str, workspace: str) -> list[tuple[int, str, str]]:
    """``(round, dataset name, id)`` of the per-round re-label datasets of ``name``
    (``review.push.relabel_dataset_name``) in ``workspace``, by round."""
    with open_client(conn) as client:
        return _relabels_of(name, _datasets_in(client, workspace))


def merge_relabels(
    records: list[dict[str, Any]], later: Sequence[list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The project dataset's ``records`` with the responses of the re-label datasets'
    records (``later``, in round order) appended to the record of the same id (pure). A record
    found only in a re-label dataset is added. ``_responses`` then keeps each annotator's last
    answer, so a second annotation by another annotator is added and one by the same
    annotator replaces theirs."""
    merged = [dict(r, responses=list(r.get("responses") or [])) for r in records]
    by_id = {record_id(r): r for r in merged}
    for batch in later:
        for rec in batch:
            rid = record_id(rec)
            if rid in by_id:
                by_id[rid]["responses"].extend(rec.get("responses") or [])
            else:
                by_id[rid] = dict(rec, responses=list(rec.get("responses") or []))
                merged.append(by_id[rid])
    return merged


def fetch_records(conn: Connection, dataset_id: str) -> list[dict[str, Any]]:
    """Every record of the dataset with its responses and suggestions (owner/admin key), page
    by page; ``review.client`` retries a page that fails transiently."""
    out: list[dict[str, Any]] = []
    with open_client(conn) as client:
        offset = 0
        while True:
            page = client.get(
                f"/api/v1/datasets/{dataset_id}/records",
                f"list records {offset}-{offset + PAGE}",
                params=[
                    ("include", "responses"),
                    ("include", "suggestions"),
                    ("offset", offset),
                    ("limit", PAGE),
                ],
            )["items"]
            out.extend(page)
            if len(page) < PAGE:
                return out
            offset += PAGE


def usernames(conn: Connection) -> dict[str, str]:
    """User id → user name (owner/admin key)."""
    with open_client(conn) as client:
        users = client.get("/api/v1/users", "list users")["items"]
    return {u["id"]: u["username"] for u in users}


def _value(values: dict | None, question: str) -> Any:
    if not values or question not in values:
        return None
    return (values[question] or {}).get("value")


def record_id(record: dict[str, Any]) -> str:
    """The thresher id of an Argilla record (its external id; Argilla's own id without one)."""
    return str(record.get("external_id") or record["id"])


def _responses(rec: dict[str, Any], names: dict[str, str]):
    """(submitted labels by annotator, notes by annotator, who discarded) of one record. An
    annotator with several answers (a re-label, ``merge_relabels``) counts with the last one."""
    labels: dict[str, str] = {}
    notes: dict[str, str] = {}
    discarded: list[str] = []
    for resp in rec.get("responses") or []:
        who = names.get(resp["user_id"], resp["user_id"])
        note = _value(resp.get("values"), NOTE_QUESTION)
        if note:
            notes[who] = str(note)
        if resp["status"] == "submitted":
            value = _value(resp.get("values"), LABEL_QUESTION)
            if value is not None:
                labels[who] = str(value)
                if who in discarded:
                    discarded.remove(who)
        elif resp["status"] == "discarded":
            labels.pop(who, None)
            if who not in discarded:
                discarded.append(who)
    return labels, notes, discarded


def _annotation_row(rec: dict[str, Any], names: dict[str, str], src: dict[str, Any]):
    """The annotations.parquet row of one record (``_labels`` kept for the summary), or None
    when nobody submitted or discarded it."""
    labels, notes, discarded = _responses(rec, names)
    if not labels and not discarded:
        return None
    c = majority_consensus(list(labels.values()))
    return {
        "id": record_id(rec),
        "text": (rec.get("fields") or {}).get(TEXT_FIELD),
        "label": c.label,
        "n_annotators": c.n_annotators,
        "agreement": c.agreement,
        "tie": c.tie,
        "disagreement": c.disagreement,
        "annotator_labels": json.dumps(labels, sort_keys=True),
        "notes": json.dumps(notes, sort_keys=True),
        "discarded_by": sorted(discarded),
        "given_label": src.get("label"),
        "predicted_label": src.get("predicted_label"),
        "_labels": labels,
    }


def _agreement_summary(rows, pred, model_classes) -> dict[str, Any]:
    """Dataset-level agreement (alpha, kappa, counts) and the per-annotator figures."""
    order = sorted({a for row in rows for a in row["_labels"]})
    table = [[row["_labels"].get(a) for a in order] for row in rows]
    by_annotator = {
        a: {row["id"]: row["_labels"][a] for row in rows if a in row["_labels"]} for a in order
    }
    consensus = {row["id"]: row["label"] for row in rows}
    stats = annotator_agreement(by_annotator, consensus)
    others = {o.annotator: o for o in agreement_with_others(by_annotator)}
    quality, note = _add_cleanlab(rows, order, table, pred, model_classes)
    annotators = []
    for s in stats:
        extra = {k: v for k, v in others[s.annotator].__dict__.items() if k != "annotator"}
        annotators.append({**s.__dict__, **extra, "crowdlab_quality": quality.get(s.annotator)})
    return {
        "alpha": krippendorff_alpha_nominal(table),
        "fleiss_kappa": fleiss_kappa(table),
        "annotators": annotators,
        "crowdlab_note": note,
        "annotated": sum(1 for r in rows if r["n_annotators"] > 0),
        "submitted": sum(r["n_annotators"] for r in rows),
        "discarded": sum(len(r["discarded_by"]) for r in rows),
        "consensus": sum(1 for r in rows if r["label"] is not None),
        "ties": sum(1 for r in rows if r["tie"]),
        "disagreements": sum(1 for r in rows if r["disagreement"]),
    }


def summarize(
    records: list[dict[str, Any]],
    names: dict[str, str],
    pred: dict[str, dict[str, Any]],
    model_classes: list[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for annotations.parquet and the agreement summary (pure, no I/O).

    ``pred``: record id → the latest stage's row (given label, predicted label/probs);
    ``model_classes``: the classes its ``pred_probs`` are over (the score manifest's).
    Per annotator: agreement with the consensus, with the others (leave-one-out, see
    ``review.agreement.OthersAgreement``) and CROWDLAB's ``crowdlab_quality`` (0..1, higher =
    better) where model probabilities exist; ``crowdlab_note`` says why it is absent."""
    rows = [
        row
        for rec in records
        if (row := _annotation_row(rec, names, pred.get(record_id(rec), {}))) is not None
    ]
    summary = _agreement_summary(rows, pred, model_classes)
    for row in rows:
        del row["_labels"]
    return rows, summary


def _probabilities(
    src: dict[str, Any], classes: list[str], model_classes: list[str] | None
) -> list[float] | None:
    """The model's probabilities over ``classes``: the stage's ``pred_probs`` (over
    ``model_classes``; a class the model never saw gets 0), else spread from ``predicted_prob``
    (the rest shared evenly by the other classes)."""
    probs = src.get("pred_probs")
    if probs is not None and model_classes and len(probs) == len(model_classes):
        by_class = dict(zip(model_classes, probs, strict=True))
        return [float(by_class.get(c, 0.0)) for c in classes]
    if probs is not None and not model_classes and len(probs) == len(classes):
        return [float(p) for p in probs]
    label, prob = src.get("predicted_label"), src.get("predicted_prob")
    if label is None or prob is None or label not in classes or len(classes) < 2:
        return None
    rest = (1.0 - float(prob)) / (len(classes) - 1)
    return [float(prob) if c == label else rest for c in classes]


def _add_cleanlab(
    rows, order, table, pred, model_classes=None
) -> tuple[dict[str, float], str | None]:
    """CROWDLAB's consensus columns on ``rows``; returns (annotator → quality, why it is absent:
    None when scored)."""
    for row in rows:
        row["cleanlab_label"] = None
        row["cleanlab_quality"] = math.nan
    classes = sorted(
        {v for r in table for v in r if v is not None}
        | set(model_classes or ())
        | {
            str(pred[r["id"]]["predicted_label"])
            for r in rows
            if pred.get(r["id"], {}).get("predicted_label") is not None
        }
    )
    keep = [i for i, r in enumerate(rows) if r["n_annotators"] > 0]
    if len(order) < 2 or not keep:
        return {}, "CROWDLAB needs at least two annotators"
    probs = [_probabilities(pred.get(rows[i]["id"], {}), classes, model_classes) for i in keep]
    missing = sum(p is None for p in probs)
    if missing:
        return {}, (
            f"no model probabilities for {missing} of {len(keep)} annotated records: they come "
            "from `thresher curate score` with a label model (scored with labels; without "
            "labels the score stage skips it), before `thresher review pull`"
        )
    out = cleanlab_consensus([table[i] for i in keep], order, probs, classes)
    if out is None:
        return {}, "cleanlab could not score these annotations (see the log)"
    for pos, i in enumerate(keep):
        rows[i]["cleanlab_label"] = out["consensus_label"][pos]
        rows[i]["cleanlab_quality"] = out["consensus_quality_score"][pos]
    return out["annotator_quality"], None


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def stage_rows_of(path: Path, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Record id → row of the stage file at ``path``, for ``ids`` only (read batch by batch:
    memory follows the reviewed records, not the project)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = pa.array(sorted(ids), pa.string())
    out: dict[str, dict[str, Any]] = {}
    for batch in pq.ParquetFile(path).iter_batches():
        hit = pc.is_in(pc.cast(batch.column("id"), pa.string()), value_set=wanted)
        if pc.any(hit).as_py():
            out.update((str(r["id"]), r) for r in batch.filter(hit).to_pylist())
    return out


def write_curated(
    stage_path: Path, rows: list[dict[str, Any]], out: Path, project: Project | None = None
) -> None:
    """The stage's records with the review merged in (``thresher.decisions``: consensus labels,
    discarded records dropped, decisions carried to the representatives of the stage's duplicate
    clusters), streamed batch by batch into ``out``; then, with ``project``, its production
    records that reviewers labelled (``thresher.production.reviewed_production_records``)."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(stage_path)
    names = parquet.schema_arrow.names
    clusters = parquet.read(columns=[c for c in CLUSTER_COLUMNS if c in names])
    decisions = ReviewDecisions.from_rows(rows).carried_to_representatives(clusters)
    schema = output_schema(parquet.schema_arrow)
    with atomic_output(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in parquet.iter_batches():
            writer.write_batch(apply_to_batch(batch, decisions).batch)
        production = (
            reviewed_production_records(project, stage_path, decisions) if project else None
        )
        if production is not None:
            writer.write_table(apply_to_batch(production, decisions).batch)


def pull(project: Project, conn: Connection, options: PullOptions) -> PullResult:
    """Read every record's responses; write annotations, agreement and the curated merge."""
    import pyarrow as pa

    t0 = time.perf_counter()
    state = PushState.load(project.root / "review")
    name = options.dataset or state.dataset or project.root.resolve().name
    with open_client(conn) as client:  # one listing: the dataset and its re-label datasets
        found = _datasets_in(client, options.workspace)
    if state.dataset_id and state.dataset == name and state.url == conn.url:
        dataset_id = state.dataset_id
    elif name in found:
        dataset_id = found[name]
    else:
        raise PullError(
            f"no dataset {name!r} in workspace {options.workspace!r}; run `thresher review "
            "push` first"
        )
    records = fetch_records(conn, dataset_id)
    relabels = _relabels_of(name, found)
    if relabels:
        later = [fetch_records(conn, rid) for _, _, rid in relabels]
        records = merge_relabels(records, later)
    stage_rows: dict[str, dict[str, Any]] = {}
    model_classes = None
    try:
        stage, stage_path = project.latest_records(["score", "dedup", "ingest"])
        stage_rows = stage_rows_of(stage_path, {record_id(r) for r in records})
        model_classes = (project.read_manifest(stage) or {}).get("classes")
    except StageMissingError:
        stage_path = None
    rows, summary = summarize(records, usernames(conn), stage_rows, model_classes)
    out = project.annotations_path
    review_dir = out.parent
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("text", pa.string()),
            ("label", pa.string()),
            ("n_annotators", pa.int64()),
            ("agreement", pa.float64()),
            ("tie", pa.bool_()),
            ("disagreement", pa.bool_()),
            ("annotator_labels", pa.string()),
            ("notes", pa.string()),
            ("discarded_by", pa.list_(pa.string())),
            ("given_label", pa.string()),
            ("predicted_label", pa.string()),
            ("cleanlab_label", pa.string()),
            ("cleanlab_quality", pa.float64()),
        ]
    )
    _write_parquet(pa.Table.from_pylist(rows, schema=schema), out)
    if stage_path is not None:
        write_curated(stage_path, rows, review_dir / CURATED, project)
    result = PullResult(
        dataset=name,
        relabel_datasets=[n for _, n, _ in relabels],
        records=len(records),
        seconds=time.perf_counter() - t0,
        path=str(out),
        prelabeller=_prelabeller(project, rows, stage_rows),
        **summary,
    )
    atomic_write_json(review_dir / AGREEMENT, result.to_dict())
    return result


def _prelabeller(
    project: Project, rows: list[dict[str, Any]], stage_rows: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """The pre-labeller's agreement with the consensus, overall and per bias slice (the stage's
    ``bias_groups``); None when the project has no pre-labels."""
    from review.prelabel import read_prelabels

    pre = read_prelabels(project)
    if pre is None:
        return None
    consensus = {row["id"]: row["label"] for row in rows}
    slices = {rid: list(src.get("bias_groups") or []) for rid, src in stage_rows.items()}
    labels = sorted({v[0] for v in pre.values()} | {c for c in consensus.values() if c})
    out = prelabeller_agreement({k: v[0] for k, v in pre.items()}, consensus, slices, labels)
    return {"model": sorted({v[2] for v in pre.values()}), **out}


def reviewed_labels(project: Project) -> dict[str, str]:
    """Record id → consensus label from the last pull (empty when nothing was pulled).

    For ``tune``: labels people agreed on win over the input labels. ``load_decisions`` also
    gives the records every reviewer discarded."""
    return load_decisions(project).labels
