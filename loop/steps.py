"""Ready-made round steps for the parts the loop owns, and stand-ins for review's pull/push.

Each factory returns a ``Step`` (``ctx -> outputs``) for ``loop.rounds.RoundRunner``. Steps talk
through files in ``DIR/rounds/<k>/<step>/`` (the contract review and tune steps follow too):

- pull     → ``annotations.parquet``: id, label — every human label known so far
- rebuild  → ``labeled.parquet``: id, text, label, split (train|test); ``pool.parquet``: id, text
- train    → the model: the learner's own ``save(dir)`` files (JSON, ``.npz``, safetensors;
             never a pickle) and ``learner.json`` naming its registered kind
- eval     → outputs ``{macro_f1, accuracy, n_test}`` on the fixed test split
- predict  → ``predictions.parquet``: id, split (pool|labeled), label, predicted_label,
             predicted_prob, probs (list, columns in ``classes`` order)
- select   → ``selection.parquet``: id, text, reason (uncertain|diverse|random|model-error|
             conflict|low-agreement|model-disputes-label|low-consensus-quality|coverage),
             priority (1 = first), score, suggestion, suggestion_score, round, kind (new: a pool
             record | relabel: one more annotation of a labelled record), activelab
- push     → outputs ``{dataset, sent, unchanged, failed}``

The test split is fixed: round 1 holds out ``test_fraction`` of the labelled records with the
project's split rule (``thresher.split``: stratified by label, seeded); later rounds reuse exactly
those ids, so metrics are comparable across rounds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loop.errors import LearnerError, RoundStateError
from loop.learners import Learner
from loop.relabel import NEW, RELABEL
from loop.rounds import Step, StepContext
from loop.stopping import StoppingOptions, check_rules, cohen_kappa, recommend
from loop.strategies import Diverse, coverage_pick, get_strategy, reason_of, rereview
from thresher.records import representative_mask

log = logging.getLogger(__name__)

LearnerFactory = Callable[[Sequence[str], StepContext], Learner]
# (ctx, texts, labels, classes) -> out-of-fold probabilities, or None (see out_of_fold_probs)
OutOfFold = Callable[[StepContext, list, list, list], "np.ndarray | None"]


def _read(path: Path):
    import pandas as pd

    if not path.exists():
        raise RoundStateError(f"{path} not found; the step that writes it has not run")
    return pd.read_parquet(path)


def load_project_records(ctx: StepContext):
    """Curated records (score > dedup > ingest; representatives only): id, text, label."""
    import pandas as pd

    stage, path = ctx.project.latest_records(["score", "dedup", "ingest"])
    frame = pd.read_parquet(path)
    frame = frame[representative_mask(frame)]
    return frame.reset_index(drop=True)


def rebuild_step(
    records: Callable[[StepContext], Any] = load_project_records,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Step:
    """Merge the curated records with pull's annotations (the one best-label rule of
    ``thresher.decisions``: a reviewed label wins) and split them (``thresher.split``)."""

    def rebuild(ctx: StepContext) -> dict[str, Any]:
        from thresher.decisions import ReviewDecisions
        from thresher.split import SplitSpec, make_split

        frame = records(ctx)
        # cleanlab's label_issue (score stage) rides along so select can send those to re-review
        keep = ["id", "text", "label"] + (["label_issue"] if "label_issue" in frame else [])
        frame = frame[keep].copy()
        ann_path = ctx.step_dir("pull") / "annotations.parquet"
        if ann_path.exists():
            decisions = ReviewDecisions.from_rows(_read(ann_path).to_dict("records"))
            frame["label"] = decisions.best_labels(frame["id"], frame["label"]).to_numpy()
        labeled = frame[frame["label"].notna()].copy()
        pool = frame[frame["label"].isna()][["id", "text"]]
        prev = ctx.previous_step_dir("rebuild")
        test_ids: set[str] | None = None
        if prev is not None and (prev / "labeled.parquet").exists():
            old = _read(prev / "labeled.parquet")
            test_ids = set(old.loc[old["split"] == "test", "id"])
        if not test_ids and len(labeled):
            spec = SplitSpec(val_fraction=0.0, test_fraction=test_fraction, seed=seed)
            split = make_split(labeled, labeled["label"], spec)
            test_ids = set(split.loc[split["split"] == "test", "id"])
        is_test = labeled["id"].astype(str).isin(test_ids or set()).to_numpy()
        labeled["split"] = np.where(is_test, "test", "train")
        labeled.to_parquet(ctx.work_dir / "labeled.parquet", index=False)
        pool.to_parquet(ctx.work_dir / "pool.parquet", index=False)
        return {
            "labeled": int(len(labeled)),
            "train": int((~is_test).sum()),
            "test": int(is_test.sum()),
            "pool": int(len(pool)),
            "classes": sorted(labeled["label"].astype(str).unique().tolist()),
        }

    return rebuild


_REGISTERED: dict[str, type] = {}
_LEGACY_CLASSES = {"loop.lora:LoraLearner": "lora"}  # learner.json before kinds


def register_learner(kind: str, cls: type) -> None:
    """Let ``save_learner``/``load_learner`` handle ``cls`` (it needs ``save(folder)`` and a
    classmethod ``load(folder)``) under ``kind``, the name ``learner.json`` records. Loading
    looks the kind up here; no module or class named in a project file is ever imported."""
    from thresher.names import validate_name

    validate_name(kind, "learner kind")
    if not (callable(getattr(cls, "save", None)) and callable(getattr(cls, "load", None))):
        raise LearnerError(f"{cls.__qualname__} needs save(folder) and load(folder) methods")
    _REGISTERED[kind] = cls


def _learner_kinds() -> dict[str, type]:
    from loop.learners import EmbeddingLogReg, TfidfLogReg
    from loop.lora import LoraLearner

    return {"fast": EmbeddingLogReg, "tfidf": TfidfLogReg, "lora": LoraLearner, **_REGISTERED}


def save_learner(learner: Learner, folder: Path) -> None:
    """``learner.save(folder)`` (plain files, no pickle) and ``learner.json`` naming its kind."""
    kinds = _learner_kinds()
    kind = next((k for k, cls in kinds.items() if type(learner) is cls), None)
    if kind is None:
        raise LearnerError(
            f"{type(learner).__qualname__} cannot be saved for the next steps: give it "
            "save(folder) and load(folder) and register it with loop.steps.register_learner"
        )
    learner.save(folder)
    (folder / "learner.json").write_text(json.dumps({"kind": kind}), encoding="utf-8")


def load_learner(folder: Path, cache_dir: Path | None = None) -> Learner:
    """Inverse of ``save_learner``: the registered class of the recorded kind loads its files.

    ``cache_dir``: the project's embedding cache, for a learner saved with one. Pickles are
    never read (a project folder may come from someone else), not even our own older ones."""
    meta = folder / "learner.json"
    if not meta.exists():
        if (folder / "learner.pkl").exists():
            raise LearnerError(
                f"{folder / 'learner.pkl'} is a pickle, which thresher no longer loads (it can run "
                "code); rerun the round's train step"
            )
        raise LearnerError(f"no trained model in {folder}; rerun the round's train step")
    saved = json.loads(meta.read_text(encoding="utf-8"))
    kind = saved.get("kind") or _LEGACY_CLASSES.get(str(saved.get("class")))
    kinds = _learner_kinds()
    if kind not in kinds:
        raise LearnerError(
            f"{meta}: unknown learner kind {kind or saved.get('class')!r} "
            f"(known: {', '.join(sorted(kinds))}); rerun the round's train step"
        )
    if kind == "fast":
        return kinds[kind].load(folder, cache_dir=cache_dir)
    return kinds[kind].load(folder)


COLD_START = "cold_start"


def _cold(ctx: StepContext) -> bool:
    """True when this round's train step found fewer than two labelled classes (no model)."""
    return bool(ctx.outputs.get("train", {}).get(COLD_START))


def train_step(factory: LearnerFactory) -> Step:
    """Fit ``factory(classes, ctx)`` on the train split; save it in the step folder. With
    fewer than two labelled classes there is no model to fit: the round is a cold start
    (``cold_start`` in the outputs) and select picks for coverage instead."""

    def train(ctx: StepContext) -> dict[str, Any]:
        labeled = _read(ctx.step_dir("rebuild") / "labeled.parquet")
        train_rows = labeled[labeled["split"] == "train"]
        found = train_rows["label"].astype(str).nunique() if len(train_rows) else 0
        if found < 2:
            log.info(
                "cold start: %d labelled training records of %d classes", len(train_rows), found
            )
            return {"n_train": int(len(train_rows)), "classes": [], COLD_START: True}
        classes = ctx.outputs["rebuild"]["classes"]
        learner = factory(classes, ctx)
        learner.fit(train_rows["text"].tolist(), train_rows["label"].astype(str).tolist())
        save_learner(learner, ctx.work_dir)
        return {"n_train": int(len(train_rows)), "classes": list(learner.classes)}

    return train


def eval_step() -> Step:
    """Macro-F1 and accuracy of the trained model on the fixed test split (high = better)."""

    def evaluate(ctx: StepContext) -> dict[str, Any]:
        from thresher.metrics import probs_macro_f1

        labeled = _read(ctx.step_dir("rebuild") / "labeled.parquet")
        test = labeled[labeled["split"] == "test"]
        if test.empty or _cold(ctx):
            return {"macro_f1": None, "accuracy": None, "n_test": int(len(test))}
        learner = load_learner(ctx.step_dir("train"), ctx.project.embedding_cache)
        index = {c: i for i, c in enumerate(learner.classes)}
        known = test["label"].astype(str).isin(index)
        test = test[known]
        y = np.array([index[lab] for lab in test["label"].astype(str)])
        f1, acc = probs_macro_f1(y, learner.predict_proba(test["text"].tolist()))
        return {"macro_f1": round(f1, 6), "accuracy": round(acc, 6), "n_test": int(len(test))}

    return evaluate


def predict_step(stopping: StoppingOptions | None = None) -> Step:
    """Class probabilities on the unlabelled pool and on the labelled set; with ``stopping``,
    also the predictions on the project's stop set and this round's stopping-rule checks."""

    def predict(ctx: StepContext) -> dict[str, Any]:
        import pandas as pd

        labeled = _read(ctx.step_dir("rebuild") / "labeled.parquet")
        pool = _read(ctx.step_dir("rebuild") / "pool.parquet")
        if _cold(ctx):
            (ctx.work_dir / "classes.json").write_text("[]")
            return {"pool": int(len(pool)), "labeled": int(len(labeled)), COLD_START: True}
        learner = load_learner(ctx.step_dir("train"), ctx.project.embedding_cache)
        frames = []
        for split, part in (("pool", pool), ("labeled", labeled)):
            if part.empty:
                continue
            probs = learner.predict_proba(part["text"].tolist())
            frames.append(
                pd.DataFrame(
                    {
                        "id": part["id"].to_numpy(),
                        "split": split,
                        "label": part["label"].to_numpy() if "label" in part else None,
                        "predicted_label": np.asarray(learner.classes)[probs.argmax(axis=1)],
                        "predicted_prob": probs.max(axis=1),
                        "probs": list(probs),
                    }
                )
            )
        out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        out.to_parquet(ctx.work_dir / "predictions.parquet", index=False)
        (ctx.work_dir / "classes.json").write_text(json.dumps(list(learner.classes)))
        result: dict[str, Any] = {"pool": int(len(pool)), "labeled": int(len(labeled))}
        if stopping is not None:
            result["stopping"] = _stopping_checks(ctx, out, labeled, pool, stopping)
        return result

    return predict


STOP_SET_FILE = "stop_set.json"


def _stop_set_ids(ctx: StepContext, pool, size: int) -> list[str]:
    """The project's stop set: ``size`` pool record ids drawn once (seeded by the round
    options' seed) and kept in ``DIR/rounds/stop_set.json``, so every round predicts the same
    texts."""
    from thresher.project import atomic_write_json

    path = ctx.round_dir.parent / STOP_SET_FILE
    if path.exists():
        return [str(i) for i in json.loads(path.read_text(encoding="utf-8"))["ids"]]
    ids = sorted(str(i) for i in pool["id"])
    rng = np.random.default_rng(int(ctx.options.get("seed", 0) or 0))
    chosen = sorted(rng.choice(ids, size=min(size, len(ids)), replace=False).tolist())
    atomic_write_json(path, {"ids": chosen, "round": ctx.round, "size": size})
    return chosen


def _stopping_checks(ctx: StepContext, predictions, labeled, pool, opts: StoppingOptions):
    """Take this round's answers on the stop set from its ``predictions`` (pool and labelled
    records: the stop set is drawn from them, so nothing is predicted twice), compare them with
    the previous round's (Cohen's kappa on the ids both rounds saw) and check the rules;
    ``stop_set.parquet`` keeps this round's answers."""
    import pandas as pd

    stop_ids = _stop_set_ids(ctx, pool, opts.stop_set)
    known = predictions.drop_duplicates("id").set_index("id") if len(predictions) else None
    ids = [i for i in stop_ids if known is not None and i in known.index]
    answers = pd.DataFrame(
        {
            "id": pd.Series(ids, dtype=object),
            "predicted_label": pd.Series(
                known.loc[ids, "predicted_label"].to_numpy() if ids else [], dtype=object
            ),
            "predicted_prob": known.loc[ids, "predicted_prob"].to_numpy(float) if ids else [],
        }
    )
    answers.to_parquet(ctx.work_dir / "stop_set.parquet", index=False)
    confidence = float(answers["predicted_prob"].mean()) if ids else None
    kappas = list((ctx.previous_outputs("predict") or {}).get("stopping", {}).get("kappas", []))
    previous_dir = ctx.previous_step_dir("predict")
    kappa = None
    if previous_dir is not None and (previous_dir / "stop_set.parquet").exists() and ids:
        before = pd.read_parquet(previous_dir / "stop_set.parquet")
        both = answers.merge(before, on="id", suffixes=("", "_before"))
        if len(both):
            kappa = round(cohen_kappa(both["predicted_label"], both["predicted_label_before"]), 6)
    kappas.append(kappa)
    checks = check_rules(kappas, confidence, int(len(labeled)), opts)
    decision, why = recommend(checks)
    return {
        "stop_set": len(ids),
        "kappas": kappas,
        "checks": [c.to_dict() for c in checks],
        "recommendation": decision,
        "why": why,
    }


def select_step(
    strategy: str,
    size: int,
    *,
    rereview_threshold: float = 0.9,
    rereview_size: int = 0,
    diversity_factor: int = 10,
    embed: Callable[[Sequence[str], StepContext], np.ndarray] | None = None,
    seed: int = 0,
    relabel: str = "off",
    out_of_fold: OutOfFold | None = None,
) -> Step:
    """Pick ``size`` pool records with ``strategy`` and up to ``rereview_size`` labelled records
    a confident model disputes; write them, in priority order, to ``selection.parquet``. In a
    cold start (no model yet) the ``size`` picks cover the pool's embeddings instead
    (``loop.strategies.coverage_pick``, reason ``coverage``, no suggestion).

    ``relabel="auto"``: when pull's annotations hold labels of two or more annotators on some
    record, the ``size`` annotations are split between re-labels and new records by ActiveLab
    (``loop.relabel.decide``: the lowest scores across the labelled records and the pool); the
    re-labels carry their reason, the new ones are the strategy's picks, and re-review is not
    run (ActiveLab covers a label the model disputes). Outputs ``relabel`` say what happened.
    ``out_of_fold`` (``out_of_fold_probs``) gives ActiveLab probabilities on the labelled records
    from models that did not train on them; without it the round model's (in-sample) are used."""

    def select(ctx: StepContext) -> dict[str, Any]:
        import pandas as pd

        if _cold(ctx):
            return _coverage_selection(ctx, size, embed or _project_embeddings, seed)
        preds = _read(ctx.step_dir("predict") / "predictions.parquet")
        classes = json.loads((ctx.step_dir("predict") / "classes.json").read_text())
        texts, issues = {}, {}
        for name in ("labeled.parquet", "pool.parquet"):
            part = _read(ctx.step_dir("rebuild") / name)
            texts.update(zip(part["id"], part["text"], strict=True))
            if "label_issue" in part:
                flags = part["label_issue"].fillna(False).astype(bool)
                issues.update(zip(part["id"], flags, strict=True))
        pool = preds[preds["split"] == "pool"]
        labeled = preds[preds["split"] == "labeled"]
        decision, info = _relabel_decision(ctx, relabel, labeled, pool, classes, size, out_of_fold)
        n_new = size if decision is None else decision.counts()[NEW]
        # rows: (id, reason, score: high = more wanted, probs, kind, ActiveLab score)
        rows: list[tuple] = []
        if decision is not None:
            lab_probs = dict(zip(labeled["id"].astype(str), labeled["probs"], strict=True))
            d = decision
            for rid, kind, why, score in zip(d.ids, d.kinds, d.reasons, d.scores, strict=True):
                if kind == RELABEL:
                    rows.append((rid, why, 1.0 - score, np.asarray(lab_probs[rid]), RELABEL, score))
        if len(pool) and n_new:
            probs = np.stack(pool["probs"].to_numpy())
            strat = get_strategy(strategy, factor=diversity_factor)
            emb = lab_emb = None
            if isinstance(strat, Diverse):
                fn = embed or _project_embeddings
                emb = fn([texts[i] for i in pool["id"]], ctx)
            picked = strat(
                probs, n_new, embeddings=emb, labeled_embeddings=lab_emb, seed=seed + ctx.round
            )
            reason = reason_of(strategy)
            scored = dict(zip(decision.ids, decision.scores, strict=True)) if decision else {}
            for pos in picked:
                rid = pool["id"].iloc[pos]
                rows.append(
                    (rid, reason, 1.0 - float(probs[pos].max()), probs[pos], NEW, scored.get(rid))
                )
        if decision is None and rereview_size and len(labeled):
            probs = np.stack(labeled["probs"].to_numpy())
            index = {c: i for i, c in enumerate(classes)}
            y = np.array([index.get(str(lab), -1) for lab in labeled["label"]])
            flagged = np.array([issues.get(i, False) for i in labeled["id"]], dtype=bool)
            rr = rereview(probs, y, rereview_size, threshold=rereview_threshold, flagged=flagged)
            for pos, why, score in zip(rr.positions, rr.reasons, rr.scores, strict=True):
                rows.append((labeled["id"].iloc[pos], why, float(score), probs[pos], RELABEL, None))
        out = pd.DataFrame(
            {
                "id": [r[0] for r in rows],
                "text": [texts[r[0]] for r in rows],
                "reason": [r[1] for r in rows],
                "priority": np.arange(1, len(rows) + 1),
                "score": [r[2] for r in rows],
                "suggestion": [classes[int(np.argmax(r[3]))] for r in rows],
                "suggestion_score": [float(np.max(r[3])) for r in rows],
                "round": ctx.round,
                "kind": pd.Series([r[4] for r in rows], dtype=object),
                "activelab": [np.nan if r[5] is None else float(r[5]) for r in rows],
            }
        )
        out.to_parquet(ctx.work_dir / "selection.parquet", index=False)
        return {
            **selection_counts(out),
            "strategy": strategy,
            "relabel": info,
        }

    return select


COVERAGE = "coverage"
ANNOTATOR_LABELS = "annotator_labels.parquet"  # pull's id, annotator_labels (JSON), if any


def _coverage_selection(ctx: StepContext, size: int, embed, seed: int) -> dict[str, Any]:
    """The cold-start selection: ``size`` pool records spread over the embedding space."""
    import pandas as pd

    pool = _read(ctx.step_dir("rebuild") / "pool.parquet")
    picked = np.zeros(0, dtype=np.int64)
    if len(pool):
        vectors = embed(pool["text"].tolist(), ctx)
        picked = coverage_pick(vectors, min(size, len(pool)), seed=seed + ctx.round)
    out = pd.DataFrame(
        {
            "id": pool["id"].to_numpy()[picked],
            "text": pool["text"].to_numpy()[picked],
            "reason": COVERAGE,
            "priority": np.arange(1, len(picked) + 1),
            "score": np.zeros(len(picked)),
            "suggestion": pd.Series([None] * len(picked), dtype=object),
            "suggestion_score": np.full(len(picked), np.nan),
            "round": ctx.round,
            "kind": NEW,
            "activelab": np.full(len(picked), np.nan),
        }
    )
    out.to_parquet(ctx.work_dir / "selection.parquet", index=False)
    by_reason = {COVERAGE: int(len(out))} if len(out) else {}
    return {"selected": int(len(out)), "by_reason": by_reason, "strategy": COVERAGE}


def selection_counts(sel) -> dict[str, Any]:
    """``selected``, ``by_reason``, ``kinds`` ({relabel, new}) and ``relabel_reasons`` (the
    reasons of the re-label rows) of a selection frame."""
    relabels = sel[sel["kind"] == RELABEL] if "kind" in sel else sel.iloc[:0]
    return {
        "selected": int(len(sel)),
        "by_reason": {str(k): int(v) for k, v in sel["reason"].value_counts().items()},
        "kinds": {RELABEL: int(len(relabels)), NEW: int(len(sel) - len(relabels))},
        "relabel_reasons": {str(k): int(v) for k, v in relabels["reason"].value_counts().items()},
    }


def _relabel_decision(
    ctx: StepContext, mode: str, labeled, pool, classes, size: int, out_of_fold=None
):
    """(``loop.relabel.decide``'s decision or None, what happened for the outputs). ``auto``
    decides only when pull's ``annotator_labels`` show two annotators on some record."""
    from loop.relabel import MODES, RelabelError, annotator_table, decide

    if mode not in MODES:
        raise RoundStateError(f"loop.relabel must be one of {', '.join(MODES)}, not {mode!r}")
    info: dict[str, Any] = {"mode": mode, "active": False}
    if mode == "off":
        return None, {**info, "why": "loop.relabel is off"}
    path = ctx.step_dir("pull") / ANNOTATOR_LABELS
    ann = _read(path) if path.exists() else None
    if ann is None or not len(labeled):
        return None, {**info, "why": "no per-annotator labels"}
    ids = set(labeled["id"].astype(str))
    ann = ann[ann["id"].astype(str).isin(ids)]
    given = zip(ann["id"].astype(str), ann["annotator_labels"], strict=True)
    table = annotator_table(given, classes)
    if not table.multi:
        return None, {**info, "why": "no record has labels from two annotators"}
    lab_probs, source = None, "in-sample"
    if out_of_fold is not None:
        rows = _read(ctx.step_dir("rebuild") / "labeled.parquet").set_index("id")
        rows = rows.loc[list(table.ids)]
        texts, labels = rows["text"].tolist(), rows["label"].astype(str).tolist()
        lab_probs = out_of_fold(ctx, texts, labels, list(classes))
        source = "out-of-fold" if lab_probs is not None else source
    if lab_probs is None:
        by_id = dict(zip(labeled["id"].astype(str), labeled["probs"], strict=True))
        lab_probs = np.stack([np.asarray(by_id[i], dtype=np.float64) for i in table.ids])
    pool_probs = np.stack(pool["probs"].to_numpy()) if len(pool) else np.zeros((0, len(classes)))
    try:
        decision = decide(table, lab_probs, pool["id"].astype(str).tolist(), pool_probs, size)
    except RelabelError as err:
        log.warning("re-label decision skipped: %s", err)
        return None, {**info, "why": str(err)[:300]}
    counts = decision.counts()
    return decision, {
        **info,
        "active": True,
        **counts,
        "by_reason": decision.by_reason(RELABEL),
        "candidates": {RELABEL: len(table.ids), NEW: int(len(pool))},
        "labelled_probabilities": source,
        "why": f"the {size} lowest scores of {len(table.ids)} labelled records "
        f"({len(table.annotators)} annotators) and {len(pool)} pool records",
    }


def out_of_fold_probs(factory: LearnerFactory, folds: int = 5, seed: int = 0) -> OutOfFold:
    """``(ctx, texts, labels, classes) -> probabilities`` (n × k, ``classes`` order): each
    record predicted by a learner from ``factory`` fitted on the other ``folds`` folds (shuffled,
    seeded by ``seed`` + round), or None when a fold would train on fewer than two classes.
    ActiveLab wants probabilities on labelled records from a model that did not see them."""

    def run(ctx: StepContext, texts, labels, classes) -> np.ndarray | None:
        n, k = len(texts), min(folds, len(texts))
        if k < 2:
            return None
        fold = np.random.default_rng(seed + ctx.round).permutation(n) % k
        y = np.asarray(labels, dtype=object)
        if any(len(set(y[fold != f])) < 2 for f in range(k)):
            return None
        out = np.zeros((n, len(classes)))
        for f in range(k):
            fit, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            learner = factory(classes, ctx)
            learner.fit([texts[i] for i in fit], [labels[i] for i in fit])
            probs = learner.predict_proba([texts[i] for i in held])
            column = {str(c): j for j, c in enumerate(learner.classes)}
            for j, c in enumerate(classes):
                if str(c) in column:
                    out[held, j] = probs[:, column[str(c)]]
        sums = out.sum(axis=1, keepdims=True)
        return out / np.where(sums > 0, sums, 1.0)

    return run


def _project_embeddings(texts: Sequence[str], ctx: StepContext) -> np.ndarray:
    from thresher.embeddings import embed_texts

    model = ctx.options.get("embedding_model", "default")
    return embed_texts(texts, model, cache_dir=ctx.project.embedding_cache)


# --- stand-ins for review's pull/push (simulation, benchmarks, tests) ------------------------


def oracle_pull_step(gold: Mapping[str, str]) -> Step:
    """Annotate what the previous round selected with ``gold`` labels (an oracle annotator);
    carries earlier annotations forward. ``annotations.parquet``: id, label."""

    def pull(ctx: StepContext) -> dict[str, Any]:
        import pandas as pd

        frames = []
        prev_pull = ctx.previous_step_dir("pull")
        if prev_pull is not None and (prev_pull / "annotations.parquet").exists():
            frames.append(_read(prev_pull / "annotations.parquet"))
        new = 0
        prev_select = ctx.previous_step_dir("select")
        if prev_select is not None and (prev_select / "selection.parquet").exists():
            sel = _read(prev_select / "selection.parquet")
            ids = [i for i in sel["id"] if i in gold]
            frames.append(pd.DataFrame({"id": ids, "label": [gold[i] for i in ids]}))
            new = len(ids)
        ann = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame({"id": pd.Series(dtype=str), "label": pd.Series(dtype=str)})
        )
        ann = ann.drop_duplicates("id", keep="last")
        ann.to_parquet(ctx.work_dir / "annotations.parquet", index=False)
        return {"annotations": int(len(ann)), "new": new}

    return pull


def file_push_step() -> Step:
    """Write the selection to ``push/sent.jsonl`` instead of Argilla (same summary keys)."""

    def push(ctx: StepContext) -> dict[str, Any]:
        sel = _read(ctx.step_dir("select") / "selection.parquet")
        with open(ctx.work_dir / "sent.jsonl", "w", encoding="utf-8") as fh:
            for rec in sel.to_dict(orient="records"):
                fh.write(json.dumps(rec, default=str) + "\n")
        return {"dataset": "file", "sent": int(len(sel)), "unchanged": 0, "failed": 0}

    return push
