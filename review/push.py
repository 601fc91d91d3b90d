"""``thresher review push``: send the latest records to Argilla for review, most urgent first.

One dataset per project: a ``text`` field, a single-label question ``label`` (labels from the
config, else from the data), an optional free-text question ``note``, metadata (source,
given_label, label_quality, dup_cluster, label_conflict, bias_groups, priority), the embedding as
the vector ``embedding`` and task distribution ``min_submitted`` (default 2, so agreement can be
measured). The model's predicted label is a suggestion with its probability as score.

Records are upserted by ``external_id`` = thresher's record id, so a re-push updates and never
duplicates. Only records whose content hash changed are sent: the hashes of what the server
acknowledged are kept in ``DIR/review/push_state.json``, and each acknowledged batch is appended
(fsynced) to ``DIR/review/push_journal.jsonl`` first, so an interrupted push resumes where it
stopped. Batches go out on a few threads; ``review.client`` retries each with exponential
backoff and jitter (it is an upsert by id, so a retried batch never duplicates).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from review.client import DEFAULT_RETRY, ArgillaError, RetryPolicy, open_client
from review.server import Connection
from thresher.errors import ThresherError
from thresher.project import Project, atomic_write_json, fingerprint
from thresher.records import representative_mask

log = logging.getLogger(__name__)

STATE_FILE = "push_state.json"
JOURNAL_FILE = "push_journal.jsonl"
VECTOR_NAME = "embedding"
LABEL_QUESTION = "label"
NOTE_QUESTION = "note"
TEXT_FIELD = "text"
MAX_BULK = 500


class PushError(ThresherError):
    """Some records could not be sent; the message says how to resume."""


@dataclass(frozen=True)
class PushOptions:
    """How to push. ``priority``: ``default`` (label conflicts, then lowest label quality, then
    highest uncertainty) or the name of a numeric column (ascending: lowest first)."""

    dataset: str | None = None
    workspace: str = "thresher"
    labels: tuple[str, ...] = ()
    min_submitted: int = 2
    batch_size: int = 250
    concurrency: int = 2
    retry: RetryPolicy = DEFAULT_RETRY
    limit: int | None = None
    priority: str = "default"
    vectors: bool = True
    embedding_model: str = "default"
    vector_dims: int | None = None  # None: 384 for the default model, else asked of the model
    guidelines: str = (
        "Choose the label that fits the text. The suggestion is the model's guess, not the "
        "answer. Use the note for anything odd (ambiguous, offensive, not in the language)."
    )


@dataclass
class PushResult:
    dataset: str
    dataset_id: str
    url: str
    sent: int
    unchanged: int
    failed: int
    total: int
    seconds: float
    stage: str
    failed_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "dataset_id": self.dataset_id,
            "url": self.url,
            "sent": self.sent,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "stage": self.stage,
        }


# ---------------------------------------------------------------- pure parts


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def priority_order(rows: Sequence[dict[str, Any]], column: str = "default") -> list[int]:
    """Positions of ``rows`` in review order, most urgent first.

    ``default``: label conflicts first, then lowest ``label_quality`` (0..1, low = likely
    mislabelled), then highest uncertainty (``1 - predicted_prob``); rows without scores come
    last, ties keep input order. Any other value names a numeric column sorted ascending."""

    def key(pos: int) -> tuple:
        row = rows[pos]
        if column != "default":
            value = _num(row.get(column))
            return (value is None, value if value is not None else 0.0, pos)
        conflict = bool(row.get("label_conflict") or False)
        quality = _num(row.get("label_quality"))
        prob = _num(row.get("predicted_prob"))
        uncertainty = 1.0 - prob if prob is not None else None
        return (
            not conflict,
            quality is None,
            quality if quality is not None else 0.0,
            uncertainty is None,
            -(uncertainty or 0.0),
            pos,
        )

    return sorted(range(len(rows)), key=key)


def record_payload(row: dict[str, Any], priority: int) -> dict[str, Any]:
    """The Argilla record (without vector and question ids) for one thresher row."""
    metadata: dict[str, Any] = {"priority": priority}
    if row.get("source") is not None:
        metadata["source"] = str(row["source"])
    if row.get("label") is not None:
        metadata["given_label"] = str(row["label"])
    quality = _num(row.get("label_quality"))
    if quality is not None:
        metadata["label_quality"] = round(quality, 6)
    cluster = _num(row.get("dup_cluster"))
    if cluster is not None:
        metadata["dup_cluster"] = int(cluster)
    if row.get("label_conflict") is not None:
        metadata["label_conflict"] = "true" if row["label_conflict"] else "false"
    groups = row.get("bias_groups")
    if groups is not None and len(groups) > 0:
        metadata["bias_groups"] = sorted(str(g) for g in groups)
    payload: dict[str, Any] = {
        "external_id": str(row["id"]),
        "fields": {TEXT_FIELD: str(row["text"])},
        "metadata": metadata,
    }
    predicted = row.get("predicted_label")
    if predicted is not None and not (isinstance(predicted, float) and math.isnan(predicted)):
        suggestion: dict[str, Any] = {"value": str(predicted), "agent": "thresher"}
        prob = _num(row.get("predicted_prob"))
        if prob is not None:
            suggestion["score"] = round(min(max(prob, 0.0), 1.0), 6)
        payload["suggestion"] = suggestion
    return payload


def content_hash(payload: dict[str, Any], vector_model: str | None) -> str:
    """Hash of what the server would store for a record (the vector by its model and text)."""
    return fingerprint({"p": payload, "v": vector_model})[:32]


def changed_ids(hashes: dict[str, str], sent: dict[str, str]) -> tuple[list[str], list[str]]:
    """Split record ids into (to send, unchanged) by comparing content hashes with ``sent``."""
    to_send, unchanged = [], []
    for rid, digest in hashes.items():
        (unchanged if sent.get(rid) == digest else to_send).append(rid)
    return to_send, unchanged


# ---------------------------------------------------------------- state


@dataclass
class PushState:
    """What the server acknowledged, for one (server, dataset)."""

    path: Path
    url: str | None = None
    dataset_id: str | None = None
    dataset: str | None = None
    sent: dict[str, str] = field(default_factory=dict)

    @property
    def journal(self) -> Path:
        return self.path.with_name(JOURNAL_FILE)

    @classmethod
    def load(cls, review_dir: Path) -> PushState:
        state = cls(review_dir / STATE_FILE)
        if state.path.exists():
            data = json.loads(state.path.read_text(encoding="utf-8"))
            state.url, state.dataset_id = data.get("url"), data.get("dataset_id")
            state.dataset, state.sent = data.get("dataset"), dict(data.get("sent") or {})
        if state.journal.exists():
            for line in state.journal.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: that batch is simply resent
                if entry.get("dataset_id") == state.dataset_id:
                    state.sent.update(entry["sent"])
        return state

    def reset(self, url: str, dataset: str, dataset_id: str) -> None:
        if (self.url, self.dataset_id) != (url, dataset_id):
            self.sent = {}
        self.url, self.dataset, self.dataset_id = url, dataset, dataset_id

    def record_batch(self, sent: dict[str, str]) -> None:
        import os

        self.sent.update(sent)
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with open(self.journal, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"dataset_id": self.dataset_id, "sent": sent}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def save(self) -> None:
        atomic_write_json(
            self.path,
            {
                "url": self.url,
                "dataset": self.dataset,
                "dataset_id": self.dataset_id,
                "sent": self.sent,
            },
        )
        self.journal.unlink(missing_ok=True)


# ---------------------------------------------------------------- server side


def ensure_dataset(
    conn: Connection, name: str, options: PushOptions, labels: Sequence[str], dims: int | None
) -> tuple[str, dict[str, str]]:
    """Create (or find) the workspace and dataset; returns (dataset id, question name → id)."""
    import warnings

    import argilla as rg

    client = rg.Argilla(api_url=conn.url, api_key=conn.api_key)
    with warnings.catch_warnings():  # "not found" is expected on the first push
        warnings.filterwarnings("ignore", message=".*not found", category=UserWarning)
        workspace = client.workspaces(options.workspace)
        if workspace is None:
            workspace = rg.Workspace(name=options.workspace, client=client).create()
        dataset = client.datasets(name=name, workspace=workspace)
    if dataset is None:
        settings = rg.Settings(
            guidelines=options.guidelines,
            fields=[rg.TextField(name=TEXT_FIELD, title="Text", use_markdown=False)],
            questions=[
                rg.LabelQuestion(name=LABEL_QUESTION, title="Label", labels=list(labels)),
                rg.TextQuestion(name=NOTE_QUESTION, title="Note", required=False),
            ],
            metadata=[
                rg.TermsMetadataProperty(name="source"),
                rg.TermsMetadataProperty(name="given_label"),
                rg.FloatMetadataProperty(name="label_quality"),
                rg.IntegerMetadataProperty(name="dup_cluster"),
                rg.TermsMetadataProperty(name="label_conflict"),
                rg.TermsMetadataProperty(name="bias_groups"),
                rg.IntegerMetadataProperty(name="priority", title="Priority (1 = first)"),
            ],
            vectors=[rg.VectorField(name=VECTOR_NAME, dimensions=dims)] if dims else [],
            distribution=rg.TaskDistribution(min_submitted=options.min_submitted),
        )
        dataset = rg.Dataset(name=name, workspace=workspace, settings=settings, client=client)
        dataset.create()
        log.info("created dataset %s in workspace %s", name, options.workspace)
    else:
        existing = set(dataset.settings.questions[LABEL_QUESTION].labels)
        missing = [lab for lab in labels if lab not in existing]
        if missing:
            raise PushError(
                f"dataset {name!r} exists without labels {missing}; push with --dataset NEW "
                "or delete the dataset in Argilla"
            )
    questions = {q.name: str(q.id) for q in dataset.settings.questions}
    return str(dataset.id), questions


def _known_dataset(
    conn: Connection, dataset_id: str, labels: Sequence[str]
) -> tuple[str, dict[str, str]] | None:
    """The dataset of the last push, if it still exists with all the labels (two light GETs;
    the SDK is not even imported, so an unchanged rerun stays well under a second)."""
    with open_client(conn) as client:
        if client.send("GET", f"/api/v1/datasets/{dataset_id}", "find dataset").status_code != 200:
            return None
        resp = client.send("GET", f"/api/v1/datasets/{dataset_id}/questions", "dataset questions")
        if resp.status_code != 200:
            return None
        items = resp.json()["items"]
    questions = {q["name"]: q["id"] for q in items}
    label_q = next((q for q in items if q["name"] == LABEL_QUESTION), None)
    if label_q is None:
        return None
    have = {o["value"] for o in label_q["settings"].get("options", [])}
    if not set(labels) <= have:
        return None  # ensure_dataset explains the mismatch
    return dataset_id, questions


@dataclass
class SendResult:
    """What ``send_batches`` got through: ``sent`` records, ``failed`` ids (not acknowledged),
    ``error``: the first batch's failure, one line (None when every batch went)."""

    sent: int
    failed: list[str]
    error: str | None = None


def send_batches(
    conn: Connection,
    dataset_id: str,
    ids: Sequence[str],
    item: Callable[[str], dict[str, Any]],
    hashes: dict[str, str],
    state: PushState,
    options: PushOptions,
    progress: Callable[[int], None] | None = None,
) -> SendResult:
    """Upsert ``ids`` (``item(id)`` → one bulk record) into ``dataset_id`` in batches of
    ``options.batch_size`` (at most 500, Argilla's limit) on ``options.concurrency`` threads;
    ``review.client`` retries each batch by ``options.retry``. Each acknowledged batch is
    journalled in ``state`` (content hashes from ``hashes``) before it counts. Once a batch has
    failed for good the batches not yet started are not sent either (they would meet the same
    server); they count as failed, so a rerun resumes with them."""
    size = max(1, min(options.batch_size, MAX_BULK))
    batches = [list(ids[i : i + size]) for i in range(0, len(ids), size)]
    result = SendResult(0, [])
    path = f"/api/v1/datasets/{dataset_id}/records/bulk"
    stop = threading.Event()

    def send(batch: list[str]) -> None:
        if stop.is_set():
            raise CancelledError  # an earlier batch failed for good
        items = [item(rid) for rid in batch]
        try:
            client.put(path, f"bulk upsert of {len(batch)} records", json={"items": items})
        except ArgillaError:
            stop.set()
            raise

    with (
        open_client(conn, retry=options.retry) as client,
        ThreadPoolExecutor(max(1, options.concurrency)) as pool,
    ):
        futures = {pool.submit(send, batch): batch for batch in batches}
        for future in as_completed(futures):
            batch = futures[future]
            try:
                future.result()
            except CancelledError:
                result.failed.extend(batch)
                continue
            except ArgillaError as err:
                log.error("%d records not sent: %s", len(batch), err)
                result.failed.extend(batch)
                result.error = result.error or str(err)
                continue
            state.record_batch({rid: hashes[rid] for rid in batch})  # this thread only
            result.sent += len(batch)
            if progress is not None:
                progress(len(batch))
    result.failed.sort()
    return result


# ---------------------------------------------------------------- push


def _load_rows(project: Project, limit: int | None, priority: str) -> tuple[str, list[dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    stage, path = project.latest_records(["score", "dedup", "ingest"])
    table = pq.ParquetFile(path).read()  # read_table would import pyarrow.dataset (1 s)
    # duplicates are reviewed once: their representative carries the cluster
    table = table.filter(pa.array(representative_mask(table)))
    rows = table.to_pylist()
    order = priority_order(rows, priority)
    if limit is not None:
        order = order[:limit]
    ranked = []
    for rank, pos in enumerate(order, start=1):
        row = rows[pos]
        row["_priority"] = rank
        ranked.append(row)
    return stage, ranked


def push(
    project: Project,
    conn: Connection,
    options: PushOptions,
    *,
    progress: Callable[[int], None] | None = None,
    embed: Callable[[list[str]], Any] | None = None,
    suggestions: Mapping[str, Mapping[str, Any]] | None = None,
) -> PushResult:
    """Push the latest stage's records (score > dedup > ingest) in priority order.

    ``embed`` (texts → (n, d) array) defaults to ``thresher.embeddings.embed_texts`` with the
    project's embedding cache. ``suggestions``: record id → ``{"value", "score", "agent"}``,
    sent as that record's suggestion instead of the stage's predicted label (the pre-labels of
    ``review.prelabel``). Raises ``PushError`` naming how many records did not go (rerun to
    resume) when batches still fail after the retries."""
    t0 = time.perf_counter()
    stage, rows = _load_rows(project, options.limit, options.priority)
    name = options.dataset or project.root.resolve().name
    labels = list(options.labels) or sorted(
        {str(r["label"]) for r in rows if r.get("label") is not None}
        | {str(r["predicted_label"]) for r in rows if r.get("predicted_label") is not None}
    )
    if not labels:
        raise PushError(
            f"no labels: set `labels:` in {project.root / 'thresher.yaml'} or ingest labelled data"
        )
    model_key = options.embedding_model if options.vectors else None
    payloads = {str(r["id"]): record_payload(r, r["_priority"]) for r in rows}
    for rid, suggestion in (suggestions or {}).items():
        if rid in payloads:
            payloads[rid]["suggestion"] = dict(suggestion)
    hashes = {rid: content_hash(p, model_key) for rid, p in payloads.items()}

    state, dataset_id, questions = open_dataset(project, conn, name, options, labels)
    to_send, unchanged = changed_ids(hashes, state.sent)
    log.info("push: %d to send, %d unchanged", len(to_send), len(unchanged))
    vectors = record_vectors(project, payloads, to_send, options, embed)

    def item(rid: str) -> dict[str, Any]:
        return bulk_item(payloads[rid], labels, questions, vectors.get(rid))

    out = send_batches(conn, dataset_id, to_send, item, hashes, state, options, progress)
    state.save()
    result = PushResult(
        dataset=name,
        dataset_id=dataset_id,
        url=conn.url,
        sent=out.sent,
        unchanged=len(unchanged),
        failed=len(out.failed),
        total=len(rows),
        seconds=time.perf_counter() - t0,
        stage=stage,
        failed_ids=out.failed,
    )
    if out.failed:
        raise PushError(
            f"{len(out.failed)} of {len(to_send)} records were not sent to {conn.url} "
            f"(sent {out.sent}; {out.error}); rerun `thresher review push -p {project.root}` "
            "to resume"
        )
    return result


def push_options_from_config(config: Any, *, limit: int | None = None) -> PushOptions:
    """``PushOptions`` from a resolved config's ``review`` section, ``labels`` and
    ``models.embedding`` (shared by ``thresher review push`` and ``thresher round``)."""
    section = config.section("review")
    return PushOptions(
        dataset=section["dataset"],
        workspace=section["workspace"],
        labels=tuple(config.get("labels") or ()),
        min_submitted=int(section["min_submitted"]),
        batch_size=int(section["batch_size"]),
        concurrency=int(section["concurrency"]),
        limit=limit,
        priority=str(section["priority"]),
        vectors=bool(section["vectors"]),
        embedding_model=str(config.get("models.embedding")),
    )


RELABEL_INFIX = "-relabel-"
MAX_DATASET_NAME = 200  # Argilla's limit


def relabel_dataset_name(dataset: str, round: int) -> str:
    """The per-round review dataset of ``dataset``: ``<dataset>-relabel-<round>``, where the
    records of round ``round`` that people already answered go back to them (in Argilla 2.8 a
    submitted record stays answered in its dataset, so it would never be pending again)."""
    if not isinstance(round, int) or round < 1:
        raise PushError(f"a re-label dataset needs a round number >= 1, not {round!r}")
    name = f"{dataset}{RELABEL_INFIX}{round}"
    if not dataset or len(name) > MAX_DATASET_NAME or any(ord(c) < 32 for c in name):
        raise PushError(
            f"dataset name {name[:80]!r} is not usable in Argilla (1-{MAX_DATASET_NAME} printable "
            "characters); set a shorter `review.dataset`"
        )
    return name


def relabel_round(dataset: str, name: str) -> int | None:
    """The round of a per-round review dataset ``name`` of ``dataset`` (None when it is not
    one): the inverse of ``relabel_dataset_name``."""
    prefix = f"{dataset}{RELABEL_INFIX}"
    tail = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() and not tail.startswith("0") else None


def open_relabel_dataset(
    conn: Connection, name: str, options: PushOptions, labels: list[str], state_dir: Path
) -> tuple[PushState, str, dict[str, str]]:
    """A per-round review dataset (found or created, same questions as the project's; each
    record needs one more answer: ``min_submitted`` 1) and a push state of its own in
    ``state_dir`` (the project's push state is left alone)."""
    from dataclasses import replace

    state = PushState.load(state_dir)
    opts = replace(options, min_submitted=1)
    dataset_id, questions = ensure_dataset(conn, name, opts, labels, _vector_dims(options))
    state.reset(conn.url, name, dataset_id)
    state.save()
    return state, dataset_id, questions


def _vector_dims(options: PushOptions) -> int | None:
    if not options.vectors:
        return None
    dims = options.vector_dims or (384 if options.embedding_model == "default" else None)
    return dims or _dims(options)


def open_dataset(
    project: Project, conn: Connection, name: str, options: PushOptions, labels: list[str]
) -> tuple[PushState, str, dict[str, str]]:
    """The project's dataset on ``conn`` (the one the push state knows, else found or created)
    and the push state, reset to that (server, dataset) and saved. Returns
    ``(state, dataset_id, question ids by name)``."""
    state = PushState.load(project.root / "review")
    dims = _vector_dims(options)
    known = (
        _known_dataset(conn, state.dataset_id, labels)
        if state.dataset_id and (state.url, state.dataset) == (conn.url, name)
        else None
    )
    dataset_id, questions = known or ensure_dataset(conn, name, options, labels, dims)
    state.reset(conn.url, name, dataset_id)
    state.save()  # a journal written after this belongs to this (server, dataset)
    return state, dataset_id, questions


def record_vectors(
    project: Project,
    payloads: dict[str, dict[str, Any]],
    ids: list[str],
    options: PushOptions,
    embed: Callable[[list[str]], Any] | None = None,
) -> dict[str, list[float]]:
    """Embedding vectors of ``ids``' texts (none when vectors are off); ``embed`` defaults to
    ``thresher.embeddings.embed_texts`` with the project's cache."""
    if not ids or not options.vectors:
        return {}
    texts = [payloads[rid]["fields"][TEXT_FIELD] for rid in ids]
    if embed is None:
        from thresher.embeddings import embed_texts

        matrix = embed_texts(texts, options.embedding_model, cache_dir=project.embedding_cache)
    else:
        matrix = embed(texts)
    return {rid: [round(float(x), 6) for x in vec] for rid, vec in zip(ids, matrix, strict=True)}


def bulk_item(
    payload: dict[str, Any],
    labels: list[str],
    questions: dict[str, str],
    vector: list[float] | None,
) -> dict[str, Any]:
    """One record of a bulk upsert: the payload, its suggestion (when the label is a question
    option) and its vector."""
    out = {k: v for k, v in payload.items() if k != "suggestion"}
    if "suggestion" in payload and payload["suggestion"]["value"] in labels:
        out["suggestions"] = [
            {"question_id": questions[LABEL_QUESTION], "type": "model", **payload["suggestion"]}
        ]
    if vector is not None:
        out["vectors"] = {VECTOR_NAME: vector}
    return out


def _dims(options: PushOptions) -> int:
    from thresher.embeddings import embedding_dim, load_encoder

    return embedding_dim(load_encoder(options.embedding_model))
