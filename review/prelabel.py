"""``thresher review prelabel``: suggested labels for records nobody has labelled yet.

The label set comes from the config (``labels``), each label's meaning from
``label_descriptions`` (the label names themselves when absent). Four ways to pre-label, picked by
``PrelabelOptions.model``:

* ``zero-shot``: the cosine similarity of each text's sentence embedding to each label's
  descriptions (``zero_shot_probs``), turned into probabilities by a softmax with a temperature.
* ``few-shot``: logistic regression on the sentence embeddings of the reviewed records
  (``DIR/review/annotations.parquet``, through ``thresher.decisions``); it needs
  ``min_per_class`` reviewed labels in every class. Its agreement with the reviewed labels is
  measured out of sample (cross-validated).
* ``setfit``: SetFit-style few-shot (``review.prelabel_setfit``): the encoder fine-tuned for a
  few contrastive steps on pairs of reviewed records, then the few-shot head on its vectors. Same
  ``min_per_class`` rule; its agreement is cross-validated (one fine-tune per fold, at most 3).
* ``auto`` (the default): zero-shot until every class has ``min_per_class`` reviewed labels;
  then zero-shot, few-shot or the average of both, whichever agrees best with the reviewed labels
  out of sample (``pick_by_agreement``). SetFit is not among them: it costs a fine-tune per fold
  and gained little over few-shot on the benchmark corpora (docs/review.md).
* any other value: an instruction model (a Hugging Face id or folder, ``review.prelabel_llm``),
  or an ``http(s)://`` URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama).

Writes ``DIR/review/prelabels.parquet`` atomically: ``id, label, score`` (the probability of
``label``, 0..1, higher = more confident), ``model`` (what produced it) and ``p_<label>`` for every
label. ``review pull`` compares these with the people's consensus (``review.agreement``); the
pre-labeller never counts towards the consensus.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from review.agreement import label_agreement
from thresher.errors import InputError
from thresher.project import Project, atomic_output
from thresher.records import representative_mask

log = logging.getLogger(__name__)

PRELABELS = "prelabels.parquet"
METHODS = ("auto", "zero-shot", "few-shot", "setfit")
SETFIT_FOLDS = 3  # each fold fine-tunes the encoder once more


@dataclass(frozen=True)
class PrelabelOptions:
    """How to pre-label. ``temperature``: the zero-shot softmax temperature (cosine units; lower
    = sharper probabilities, the ranking does not change). ``center``: subtract each label's mean
    similarity over the corpus before the softmax (a label whose descriptions sit closer to
    every text would otherwise win too often). ``min_per_class``: reviewed labels per class
    before ``auto`` switches to few-shot."""

    model: str = "auto"
    labels: tuple[str, ...] = ()
    descriptions: Mapping[str, str | Sequence[str]] | None = None
    embedding_model: str = "default"
    temperature: float = 0.05
    center: bool = True
    min_per_class: int = 8
    folds: int = 5
    seed: int = 0
    endpoint_model: str | None = None  # the served model's name (asked of the server if None)
    setfit_steps: int = 20  # contrastive optimizer steps of 16 pairs (setfit only)


@dataclass
class PrelabelResult:
    """What a pre-label run did (``--json`` prints ``to_dict``)."""

    path: str
    records: int
    method: str  # zero-shot | few-shot | zero+few-shot | setfit | llm | endpoint
    model: str
    labels: list[str]
    counts: dict[str, int]
    reviewed: int  # reviewed records with a consensus label in the label set
    agreement: dict[str, Any] | None  # the pre-labels against the reviewed labels, out of sample
    seconds: float
    pushed: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["seconds"] = round(self.seconds, 3)
        return out


# ---------------------------------------------------------------- pure scoring


def label_prompts(
    labels: Sequence[str], descriptions: Mapping[str, str | Sequence[str]] | None
) -> dict[str, list[str]]:
    """Each label's descriptions as a list of lines (the label name when it has none)."""
    descriptions = descriptions or {}
    unknown = [k for k in descriptions if k not in labels]
    if unknown:
        raise InputError(f"label_descriptions names {unknown}, not in labels {list(labels)}")
    out: dict[str, list[str]] = {}
    for label in labels:
        value = descriptions.get(label)
        lines = [value] if isinstance(value, str) else list(value or [])
        out[label] = [str(v).strip() for v in lines if str(v).strip()] or [label]
    return out


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``scores / temperature`` (rows sum to 1)."""
    if temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def zero_shot_probs(
    text_vectors: np.ndarray,
    description_vectors: Sequence[np.ndarray],
    *,
    temperature: float = 0.05,
    center: bool = True,
) -> np.ndarray:
    """(n, k) label probabilities from unit-length text vectors (n, d) and, per label, its
    descriptions' unit vectors (m_j, d): a label's score is the mean cosine of the text to its
    descriptions (higher = closer); ``center`` subtracts each label's mean score over the texts;
    then a softmax with ``temperature``."""
    x = np.asarray(text_vectors, dtype=np.float64)
    if x.ndim != 2 or len(description_vectors) < 2:
        raise InputError("zero-shot scoring needs (n, d) text vectors and at least 2 labels")
    sims = np.stack(
        [(x @ np.asarray(d, dtype=np.float64).T).mean(axis=1) for d in description_vectors], axis=1
    )
    if center and len(x) > 1:
        sims = sims - sims.mean(axis=0, keepdims=True)
    return softmax(sims, temperature)


def few_shot_model(vectors: np.ndarray, y: np.ndarray, seed: int = 0):
    """Logistic regression on sentence embeddings (the loop's fast learner), class-balanced."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced", random_state=seed).fit(
        vectors, y
    )


def cross_validated_probs(vectors: np.ndarray, y: np.ndarray, folds: int, seed: int = 0):
    """(n, k) out-of-fold probabilities of ``few_shot_model`` over ``k = y.max() + 1`` classes
    (``folds`` capped by the smallest class), so each reviewed record is predicted by a model
    that never saw its label."""
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(y).min())
    k = max(2, min(folds, smallest))
    probs = np.zeros((len(y), int(y.max()) + 1))
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(vectors, y):
        model = few_shot_model(vectors[train], y[train], seed)
        probs[np.ix_(test, model.classes_)] = model.predict_proba(vectors[test])
    return probs


def pick_by_agreement(
    candidates: Mapping[str, tuple[np.ndarray, np.ndarray]],
    gold: Sequence[str],
    labels: Sequence[str],
) -> tuple[str, dict[str, dict[str, Any]]]:
    """The candidate whose out-of-sample probabilities on the reviewed records (the first array
    of each pair) agree best with ``gold`` (macro-F1, higher = better; the first listed wins a
    tie), and every candidate's agreement."""
    scores = {
        name: label_agreement(gold, [labels[j] for j in oos.argmax(axis=1)], labels)
        for name, (oos, _) in candidates.items()
    }
    best = max(scores, key=lambda name: (scores[name]["macro_f1"], -list(scores).index(name)))
    return best, scores


# ---------------------------------------------------------------- the run


def resolve_labels(config_labels: Sequence[str], project: Project) -> tuple[str, ...]:
    """The label set: the config's ``labels`` (one place names the classes for every step)."""
    labels = tuple(dict.fromkeys(str(v) for v in config_labels))
    if len(labels) < 2:
        raise InputError(
            f"pre-labelling needs the label set: set `labels: [a, b]` (and optionally "
            f"label_descriptions) in {project.root / 'thresher.yaml'}"
        )
    return labels


def load_records(project: Project) -> tuple[list[str], list[str]]:
    """(ids, texts) of the latest stage's records (score > dedup > ingest), representatives only:
    duplicates are reviewed once, like ``review push`` sends them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, path = project.latest_records(["score", "dedup", "ingest"])
    table = pq.ParquetFile(path).read()
    table = table.filter(pa.array(representative_mask(table)))
    return [str(v) for v in table.column("id").to_pylist()], [
        str(v) for v in table.column("text").to_pylist()
    ]


def reviewed_positions(project: Project, ids: Sequence[str], labels: Sequence[str]):
    """(positions in ``ids``, labels) of the records reviewers labelled with a label in the set."""
    from thresher.decisions import load_decisions

    reviewed = load_decisions(project).labels
    pos = [i for i, rid in enumerate(ids) if reviewed.get(rid) in labels]
    return pos, [reviewed[ids[i]] for i in pos]


def choose_method(model: str, reviewed: Sequence[str], labels: Sequence[str], min_per: int) -> str:
    """``zero-shot``, ``few-shot``, ``setfit``, ``select`` (auto with enough reviewed labels:
    zero-shot, few-shot or both averaged, whichever agrees best with the reviewed labels out of
    sample), ``llm`` or ``endpoint`` for ``model`` (see the module doc)."""
    counts = {lab: 0 for lab in labels}
    for lab in reviewed:
        counts[lab] += 1
    enough = min(counts.values()) >= min_per
    if model == "auto":
        return "select" if enough else "zero-shot"
    if model in ("few-shot", "setfit"):
        if not enough:
            raise InputError(
                f"{model} needs {min_per} reviewed labels per class, have {counts}; "
                "review more records (`thresher review push` / `pull`) or use --model zero-shot"
            )
        return model
    if model == "zero-shot":
        return "zero-shot"
    return "endpoint" if model.startswith(("http://", "https://")) else "llm"


def prelabel(
    project: Project,
    opts: PrelabelOptions,
    *,
    progress: Callable[[int], None] | None = None,
    embed: Callable[[list[str]], np.ndarray] | None = None,
) -> PrelabelResult:
    """Pre-label the project's records and write ``DIR/review/prelabels.parquet``.

    ``embed`` (texts → unit vectors) defaults to ``thresher.embeddings.embed_texts`` with the
    project's cache and ``opts.embedding_model``."""
    t0 = time.perf_counter()
    labels = resolve_labels(opts.labels, project)
    prompts = label_prompts(labels, opts.descriptions)
    ids, texts = load_records(project)
    if not ids:
        raise InputError(f"{project.root}: no records to pre-label; run `thresher curate ingest`")
    pos, gold = reviewed_positions(project, ids, labels)
    method = choose_method(opts.model, gold, labels, opts.min_per_class)
    embed = embed or _project_embedder(project, opts.embedding_model)
    notes: list[str] = []
    agreement = None
    if method in ("zero-shot", "few-shot", "select"):
        method, probs, agreement = embedding_prelabels(
            method, embed(texts), [embed(prompts[lab]) for lab in labels], pos, gold, labels, opts
        )
        name = f"{method}:{_model_name(opts.embedding_model)}"
    elif method == "setfit":
        from review.prelabel_setfit import setfit_prelabels

        probs, agreement = setfit_prelabels(
            texts, pos, gold, labels, opts, head=few_shot_model, folds=SETFIT_FOLDS
        )
        name = f"setfit:{_model_name(opts.embedding_model)}"
    elif method == "llm":
        from review.prelabel_llm import llm_probs

        probs = llm_probs(texts, labels, prompts, opts.model, progress=progress)
        name = f"llm:{opts.model}"
    else:
        from review.prelabel_llm import endpoint_probs

        probs, served = endpoint_probs(
            texts, labels, prompts, opts.model, model=opts.endpoint_model, progress=progress
        )
        name = f"endpoint:{served}"
    if agreement is None and pos:
        pred = [labels[int(j)] for j in probs[pos].argmax(axis=1)]
        agreement = {**label_agreement(gold, pred, labels), "how": "held-out"}
        notes.append("agreement: these pre-labels against the reviewed labels (never trained on)")
    path = project.root / "review" / PRELABELS
    counts = write_prelabels(path, ids, probs, labels, name)
    return PrelabelResult(
        path=str(path), records=len(ids), method=method, model=name, labels=list(labels),
        counts=counts, reviewed=len(pos), agreement=agreement,
        seconds=time.perf_counter() - t0, notes=notes,
    )  # fmt: skip


def embedding_prelabels(method, vectors, desc, pos, gold, labels, opts: PrelabelOptions):
    """(method used, probabilities, agreement with the reviewed labels or None) of the sentence
    embedding pre-labellers. ``select`` tries zero-shot, few-shot and their average and keeps
    the one that agrees best with the reviewed labels: zero-shot's agreement is held-out (it
    never learns from them), the others' cross-validated. Measured on two corpora
    (benchmarks/prelabel.py), neither always wins: few-shot at 8 per class is below zero-shot
    on movie reviews and far above it on debate statements."""
    zero = zero_shot_probs(vectors, desc, temperature=opts.temperature, center=opts.center)
    if method == "zero-shot":
        return method, zero, None
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[g] for g in gold])
    oof = cross_validated_probs(vectors[pos], y, opts.folds, opts.seed)
    model = few_shot_model(vectors[pos], y, opts.seed)
    few = np.zeros((len(vectors), len(labels)))
    few[:, model.classes_] = model.predict_proba(vectors)
    candidates = {"few-shot": (oof, few)}
    if method == "select":
        both = ((oof + zero[pos]) / 2, (few + zero) / 2)
        candidates = {"zero-shot": (zero[pos], zero), **candidates, "zero+few-shot": both}
    best, scores = pick_by_agreement(candidates, gold, labels)
    how = {"zero-shot": "held-out"}
    agreement = {**scores[best], "how": how.get(best, "cross-validated")}
    if len(scores) > 1:
        agreement["candidates"] = {k: v["macro_f1"] for k, v in scores.items()}
    return best, candidates[best][1], agreement


def write_prelabels(
    path, ids: Sequence[str], probs: np.ndarray, labels: Sequence[str], model: str
) -> dict[str, int]:
    """Write the pre-labels table atomically (folder 0700); returns the count per label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    best = probs.argmax(axis=1)
    columns: dict[str, Any] = {
        "id": pa.array(list(ids), pa.string()),
        "label": pa.array([labels[j] for j in best], pa.string()),
        "score": pa.array(probs[np.arange(len(best)), best].astype(float), pa.float64()),
        "model": pa.array([model] * len(ids), pa.string()),
    }
    for j, lab in enumerate(labels):
        columns[f"p_{lab}"] = pa.array(probs[:, j].astype(float), pa.float64())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        pq.write_table(pa.table(columns), tmp)
    return {lab: int((best == j).sum()) for j, lab in enumerate(labels)}


def read_prelabels(project: Project) -> dict[str, tuple[str, float, str]] | None:
    """id → (label, score, model) from ``DIR/review/prelabels.parquet`` (None when absent)."""
    import pyarrow.parquet as pq

    path = project.root / "review" / PRELABELS
    if not path.exists():
        return None
    rows = pq.read_table(path, columns=["id", "label", "score", "model"]).to_pylist()
    return {str(r["id"]): (str(r["label"]), float(r["score"]), str(r["model"])) for r in rows}


def _project_embedder(project: Project, model: str):
    from thresher.embeddings import embed_texts

    def embed(texts: list[str]) -> np.ndarray:
        return embed_texts(texts, model, cache_dir=project.embedding_cache)

    return embed


def _model_name(model: str) -> str:
    return "all-MiniLM-L6-v2" if model in ("default", "minilm") else model


def push_prelabels(project: Project, conn, options) -> dict[str, Any]:
    """Send the project's records to Argilla with the pre-labels as their suggestions (scores =
    the pre-label probabilities; agent = the pre-labeller's model), through ``review.push``."""
    from review.push import push

    pre = read_prelabels(project)
    if pre is None:
        raise InputError(f"{project.root / 'review' / PRELABELS} not found; run prelabel first")
    suggestions = {
        rid: {"value": label, "score": round(min(max(score, 0.0), 1.0), 6), "agent": model}
        for rid, (label, score, model) in pre.items()
    }
    return push(project, conn, options, suggestions=suggestions).to_dict()
