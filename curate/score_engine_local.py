"""The score stage's ``local`` engine: everything in memory.

All the scored texts at once: sentence embeddings (``thresher.embeddings``, cached under
``Project.embedding_cache``), the learner ensemble's out-of-sample probabilities and cleanlab
(``curate.noise``), kNN outlier scores and the 2-D map on the embeddings (or an SVD of TF-IDF
without them), and the bias tables (``curate.bias``). Writes ``records.parquet`` and
``map.parquet``; ``curate.score_outputs`` writes the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.score_annotations import score_annotations
from curate.score_members import expand_scores, representative_rows, scored_records
from curate.score_outputs import ScoreOutputs
from curate.score_plan import ScorePlan, resolve_learners
from thresher.errors import InputError
from thresher.project import Project

if TYPE_CHECKING:
    from curate.noise import NoiseOptions, NoiseResult
    from thresher.project import StageRun

log = logging.getLogger(__name__)

PACKAGES = ("cleanlab", "scikit-learn", "sentence-transformers", "numpy")


class LocalEngine:
    """One local run: the input read and checked on creation (before the stage folder exists),
    then ``score`` runs the steps in order."""

    packages = PACKAGES

    def __init__(self, plan: ScorePlan) -> None:
        import pandas as pd

        from curate.noise import encode_labels, noise_skip_reason, parse_class_prior

        self.plan = plan
        self.df = pd.read_parquet(plan.path_in)
        if len(self.df) == 0:
            raise InputError(f"{plan.path_in} has no records; nothing to score")
        self.rep = scored_records(self.df)
        self.reps = self.df[self.rep].reset_index(drop=True)
        self.texts = self.reps["text"].astype(str).tolist()
        self.labels = [None if pd.isna(v) else str(v) for v in self.reps["label"]]
        self.skip_noise = noise_skip_reason(self._fit_labels())
        if self.skip_noise is None:
            parse_class_prior(plan.opts.class_prior, encode_labels(self.labels)[1])  # fail fast

    def score(self, run: StageRun) -> ScoreOutputs:
        """Score the representatives, carry the scores to every row, write the records."""
        from curate.bias import score_bias
        from curate.noise import outlier_scores

        opts = self.plan.opts
        embeddings = self._embed(run)
        nopts = self._noise_options()
        if self.skip_noise is not None:
            from curate.noise import skipped_noise_result

            log.warning("%s", self.skip_noise)
            res = skipped_noise_result(len(self.texts))
        else:
            external = self._external_probs()
            with run.timed("label_noise"):
                res = self._label_noise(nopts, _float32(embeddings), external)
        with run.timed("outliers"):
            dense = _dense_features(self.texts, embeddings)
            out_score, near_ood = outlier_scores(dense)  # reads a float16 memmap by blocks
            coords = _map_2d(_float32(dense), opts.seed)
        with run.timed("bias"):
            groups, report = score_bias(
                self.texts, self.labels, lexicon=self.plan.lexicon,
                label_issue=None if self.skip_noise else res.label_issue,
                label_quality=None if self.skip_noise else res.label_quality, alpha=opts.bias_alpha,
                min_count=opts.bias_min_count,
            )  # fmt: skip
        multi, annotator_quality = (None, {}) if self.skip_noise else self._annotations(res)
        full = _expand(self.df, self.rep, self.reps, res, out_score, near_ood, groups, coords)
        if multi is not None:
            full = full.merge(multi, on="id", how="left")
        records = full.drop(columns=["_x", "_y"])
        _write_records(run, records, full)
        return ScoreOutputs(
            res=res,
            bias=report,
            annotator_quality=annotator_quality,
            scored=len(self.reps),
            records=len(records),
            labeled=int(records["label"].notna().sum()),
            label_issues=int(records["label_issue"].sum()),
            near_ood=int(records["near_ood"].sum()),
            scoring=self._scoring(res, nopts),
            report_records=lambda: records,
            coords=full[["_x", "_y"]].to_numpy(),
            skipped=[self.skip_noise] if self.skip_noise else [],
        )

    def _fit_labels(self) -> list[str | None]:
        """The labels a noise model may learn from: the tune split's held-out records unlabelled."""
        held_out = self.plan.held_out
        if not held_out:
            return self.labels
        ids = self.reps["id"].astype(str).tolist()
        return [None if i in held_out else lab for i, lab in zip(ids, self.labels, strict=True)]

    def _embed(self, run: StageRun) -> np.ndarray | None:
        """Sentence embeddings of the scored texts (None without ``embeddings``)."""
        opts = self.plan.opts
        if not opts.embeddings:
            return None
        from thresher.embeddings import embed_texts
        from thresher.neighbours import EXACT_MAX_ROWS

        # Many texts: a float16 memmap (unlinked once open), not a second float32 copy in RAM.
        out = run.path("embeddings.f16.npy") if len(self.texts) > EXACT_MAX_ROWS else None
        with run.timed("embed"):
            vectors = embed_texts(
                self.texts, opts.model, cache_dir=self.plan.project.embedding_cache,
                progress=self.plan.progress, out=out,
            )  # fmt: skip
        if out is not None:
            out.unlink()
        return vectors

    def _noise_options(self) -> NoiseOptions:
        from curate.noise import NoiseOptions

        opts = self.plan.opts
        return NoiseOptions(
            folds=opts.folds,
            repeats=opts.repeats,
            learners=resolve_learners(opts.learners, opts.embeddings),
            second_pass=opts.second_pass,
            seed=opts.seed,
            class_prior=opts.class_prior,
        )

    def _external_probs(self) -> np.ndarray | None:
        """``--probs-from``'s probabilities for the scored records (None without it)."""
        from curate.noise import encode_labels

        opts = self.plan.opts
        if not opts.probs_from:
            return None
        _, classes = encode_labels(self.labels)
        ids = self.reps["id"].tolist()
        return external_probs(self.plan.project, opts.probs_from, ids, classes)

    def _label_noise(
        self, nopts: NoiseOptions, embeddings: np.ndarray | None, external: np.ndarray | None
    ) -> NoiseResult:
        from curate.noise import score_label_noise

        held_out = self.plan.held_out
        holdout = self.reps["id"].astype(str).isin(held_out).to_numpy() if held_out else None
        return score_label_noise(
            self.texts, self.labels, nopts, embeddings=embeddings, pred_probs=external,
            holdout=holdout,
        )  # fmt: skip

    def _annotations(self, res: NoiseResult) -> tuple[Any, dict[str, float]]:
        if not self.plan.annotations:
            return None, {}
        return score_annotations(self.reps["id"].tolist(), self.plan.annotations, res)

    def _scoring(self, res: NoiseResult, nopts: NoiseOptions) -> dict[str, Any]:
        """How this run scored (the manifest's ``scoring``)."""
        if self.skip_noise:
            return {"input stage": self.plan.stage_in, "label noise": "skipped (no labels)"}
        return {
            "input stage": self.plan.stage_in,
            "learners": "+".join(res.learners),
            "folds": res.folds,
            "repeats": self.plan.opts.repeats,
            "second pass": self.plan.opts.second_pass,
            "first-pass issues": res.first_pass_issues,
            "ranking": nopts.ranking,
        }


def external_probs(project: Project, source: str, ids, classes) -> np.ndarray:
    """``--probs-from``: class probabilities from a tuned model instead of the ensemble.

    ``source`` is a Parquet file, or a tune run name (``DIR/tune/RUN/predictions.parquet``). It
    needs ``id`` and one column per class, ``p_<label>`` as ``thresher tune predict --out``
    writes them (``prob_<label>`` is accepted too). The probabilities must be out of sample for
    the scores to mean anything: predictions of a model that trained on a record are not."""
    import pandas as pd

    from thresher.names import validate_name

    path = Path(source)
    if not path.suffix:  # a run name: it never leaves DIR/tune
        path = project.root / "tune" / validate_name(source, "--probs-from") / "predictions.parquet"
    if not path.exists():
        raise InputError(
            f"{path} not found; pass a predictions file (`thresher tune predict --out`) or a run"
        )
    preds = pd.read_parquet(path).set_index("id")
    for prefix in ("p_", "prob_"):
        cols = [f"{prefix}{c}" for c in classes]
        if all(c in preds.columns for c in cols):
            break
    else:
        wanted = ", ".join(f"p_{c}" for c in classes)
        raise InputError(f"{path}: needs id + one column per class ({wanted})")
    absent = [i for i in ids if i not in preds.index]
    if absent:
        raise InputError(f"{path}: no predictions for {len(absent)} records (e.g. {absent[0]})")
    return preds.loc[list(ids), cols].to_numpy(dtype=float)


def _float32(vectors):
    """A float32 array for the learners and the map (they would upcast float16 to float64)."""
    return None if vectors is None else np.asarray(vectors, dtype=np.float32)


def _dense_features(texts, embeddings):
    """Dense features for outliers and the map: embeddings, else a 100-d SVD of TF-IDF."""
    if embeddings is not None:
        return embeddings
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    X = TfidfVectorizer(sublinear_tf=True).fit_transform(texts)
    k = max(1, min(100, X.shape[1] - 1, X.shape[0] - 1))
    Z = TruncatedSVD(n_components=k, random_state=0).fit_transform(X)
    norm = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.maximum(norm, 1e-12)


def _map_2d(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    if features.shape[0] < 2 or features.shape[1] < 2:
        return np.zeros((features.shape[0], 2))
    return PCA(n_components=2, random_state=seed).fit_transform(features)


def _expand(df, rep, reps, res, out_score, near_ood, groups, coords):
    """Score columns for every row of ``df`` (see ``curate.score_members.expand_scores``), and
    the map's ``_x``, ``_y``."""
    import pandas as pd

    clusters = df["dup_cluster"].to_numpy() if "dup_cluster" in df.columns else None
    row_of = representative_rows(rep, clusters, df["id"].to_numpy())
    probs = res.pred_probs[row_of]
    labels = [None if pd.isna(v) else str(v) for v in df["label"]]
    quality, issue = expand_scores(rep, row_of, labels, res)
    out = df.copy()
    out["label_quality"] = quality
    out["label_issue"] = issue
    out["predicted_label"] = [res.predicted_label[j] for j in row_of]
    out["predicted_prob"] = res.predicted_prob[row_of]
    # Class probabilities in sorted-label order (``classes`` in the manifest), for review/loop.
    out["pred_probs"] = [row.tolist() for row in probs]
    out["outlier_score"] = out_score[row_of]
    out["near_ood"] = near_ood[row_of].astype(bool)
    out["bias_groups"] = [list(groups[j]) for j in row_of]
    out["_x"] = coords[row_of, 0]
    out["_y"] = coords[row_of, 1]
    return out


def _write_records(run: StageRun, records, full) -> None:
    """``records.parquet`` (zstd) and ``map.parquet`` (id, x, y)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(records, preserve_index=False)
    pq.write_table(table, run.path("records.parquet"), compression="zstd")
    pd.DataFrame({"id": full["id"], "x": full["_x"], "y": full["_y"]}).to_parquet(
        run.path("map.parquet"), index=False
    )
