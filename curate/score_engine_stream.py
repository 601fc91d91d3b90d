"""The score stage's ``stream`` and ``ray`` engines: never all texts in memory.

The passes over the input's Arrow batches are ``curate.score_stream``'s; this module runs them
for the stage: the bias tables from the streamed counts, CROWDLAB on the annotated records,
``records.parquet`` written batch by batch, and the report's rows (texts read back only for the
rows it shows). With embeddings (the default) the representatives' sentence embeddings go to a
float16 file (cached ones reused) and their neighbours, found on the ANN index above 20k rows
(``thresher.neighbours``), give the outlier scores and near-OOD flags the in-memory engine gives;
with ``--no-embeddings`` ``outlier_score`` and ``near_ood`` are null. No map either way.
``curate.score_outputs`` writes the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from curate import score_stream as ss
from curate.score_annotations import score_annotations
from curate.score_members import expand_scores, representative_rows
from curate.score_outputs import ScoreOutputs
from curate.score_plan import ScorePlan
from thresher.errors import InputError

if TYPE_CHECKING:
    from curate.bias import BiasReport
    from curate.noise import NoiseResult
    from thresher.project import StageRun

log = logging.getLogger(__name__)

RAY_EMBED_ROWS = 200_000  # texts handed to the Ray actor pool at a time (one pool per chunk)


class StreamEngine:
    """One streaming run: the input's small columns read and checked on creation (before the
    stage folder exists), then ``score`` runs the passes and writes the records."""

    def __init__(self, plan: ScorePlan) -> None:
        opts = plan.opts
        if opts.probs_from:
            raise InputError("--probs-from works with the local engine only; add --engine local")
        if opts.embeddings and "emb" in opts.learners:
            log.info("%s engine: hashed naive Bayes for label noise; embeddings for outliers only",
                     plan.engine)  # fmt: skip
        self.plan = plan
        self.index = ss.read_index(plan.path_in)
        if len(self.index.ids) == 0:
            raise InputError(f"{plan.path_in} has no records; nothing to score")
        from curate.noise import noise_skip_reason

        rep_labels = [lab for lab, r in zip(self.index.labels, self.index.rep, strict=True) if r]
        reason = noise_skip_reason(rep_labels)
        if reason is not None:
            # its passes compute the bias slices along with the noise model, which needs labels
            raise InputError(
                f"{plan.path_in}: {reason}; the {plan.engine} engine needs them: "
                "add --engine local to score unlabelled records"
            )
        self.packages = (
            ("cleanlab", "scikit-learn", "numpy", "pyarrow")
            + (("ray",) * (plan.engine == "ray"))
            + (("sentence-transformers",) * bool(opts.embeddings))
        )

    def score(self, run: StageRun) -> ScoreOutputs:
        """Passes 1 and 2, bias and annotations, then pass 3 (the records)."""
        plan, opts, index = self.plan, self.plan.opts, self.index
        out = ss.score_passes(
            plan.path_in, index, engine=plan.engine, folds=opts.folds, seed=opts.seed,
            lexicon=plan.lexicon, batch_size=opts.batch_size, progress=plan.progress,
            held_out=plan.held_out, class_prior=opts.class_prior,
        )  # fmt: skip
        run.timings.update(out.timings)
        res = out.res
        with run.timed("bias"):
            report = self._bias(out)
        consensus, annotator_quality = self._annotations(res)
        outliers = self._outliers(run)
        with run.timed("write"):
            rows = _RowScores.expand(index, res, out)
            written = ss.write_records(
                plan.path_in, run.path("records.parquet"), index=index, row_of=rows.row_of,
                quality=rows.quality, issue=rows.issue, res=res, groups=rows.groups,
                consensus=consensus, batch_size=opts.batch_size, outliers=outliers,
            )  # fmt: skip
        near_ood = None if outliers is None else outliers[1][rows.row_of]
        return ScoreOutputs(
            res=res,
            bias=report,
            annotator_quality=annotator_quality,
            scored=len(res.label_issue),
            records=written,
            labeled=sum(v is not None for v in index.labels),
            label_issues=int(rows.issue.sum()),
            near_ood=0 if near_ood is None else int(near_ood.sum()),
            scoring=self._scoring(out),
            report_records=lambda: _report_frame(plan, index, rows, res, near_ood),
            coords=None,
            time_report=True,
        )

    def _outliers(self, run: StageRun) -> tuple[np.ndarray, np.ndarray] | None:
        """The representatives' kNN outlier scores and near-OOD flags on their sentence
        embeddings (None with ``--no-embeddings``). The embeddings go to a float16 file a batch
        of texts at a time (unlinked once mapped, as the in-memory engine's); the ray engine
        embeds on a Ray actor pool (``curate.embed_ray``, a GPU per actor where there are GPUs)."""
        plan, opts = self.plan, self.plan.opts
        if not opts.embeddings:
            return None
        from curate.noise import outlier_scores
        from thresher.embeddings import write_float16_rows

        batches = ss.rep_text_batches(plan.path_in, self.index.rep, opts.batch_size)
        cache = plan.project.embedding_cache
        if plan.engine == "ray":
            from curate.embed_ray import embed_texts_ray

            chunks = (
                embed_texts_ray(texts, opts.model, cache_dir=cache)
                for texts in _regroup(batches, RAY_EMBED_ROWS)
            )
        else:
            from thresher.embeddings import Embedder

            embedder = Embedder(opts.model, cache, progress=plan.progress)
            chunks = (np.stack(embedder.rows(texts)) for texts in batches if texts)
        path = run.path("embeddings.f16.npy")
        with run.timed("embed"):
            vectors = write_float16_rows(chunks, int(self.index.rep.sum()), path)
        path.unlink(missing_ok=True)
        with run.timed("outliers"):
            return outlier_scores(vectors)

    def _bias(self, out: ss.StreamScores) -> BiasReport:
        from curate.noise import encode_labels

        index, opts = self.index, self.plan.opts
        rep_labels = [lab for lab, r in zip(index.labels, index.rep, strict=True) if r]
        y, _ = encode_labels(rep_labels, out.res.classes)
        return ss.bias_from_scores(
            out, y, alpha=opts.bias_alpha, min_count=opts.bias_min_count,
            lexicon_groups=len(self.plan.lexicon),
        )  # fmt: skip

    def _annotations(self, res: NoiseResult) -> tuple[dict | None, dict[str, float]]:
        """The consensus per annotated id (for pass 3) and each annotator's quality."""
        if not self.plan.annotations:
            return None, {}
        ids = list(self.index.ids[self.index.rep])
        multi, annotator_quality = score_annotations(ids, self.plan.annotations, res)
        return (None if multi is None else ss.consensus_map(multi)), annotator_quality

    def _scoring(self, out: ss.StreamScores) -> dict[str, Any]:
        """How this run scored (the manifest's ``scoring``)."""
        return {
            "input stage": self.plan.stage_in,
            **ss.manifest_scoring(out, self.plan.engine, ss.ns.VIEW_FEATURES),
            "folds": out.res.folds,
            "ranking": "normalized_margin",
        }


@dataclass
class _RowScores:
    """Every row's scores: the representative it carries (``row_of``), its own label quality and
    issue flag; and the representatives' lexicon groups as list offsets and values."""

    row_of: np.ndarray  # int64, a position in representative order
    quality: np.ndarray  # float, NaN for unlabeled rows
    issue: np.ndarray  # bool
    groups: tuple[np.ndarray, np.ndarray]

    @classmethod
    def expand(cls, index: ss.Index, res: NoiseResult, out: ss.StreamScores) -> _RowScores:
        row_of = representative_rows(index.rep, index.clusters, index.ids)
        quality, issue = expand_scores(index.rep, row_of, index.labels, res)
        groups = ss.group_lists(out.group_rows, out.group_names, len(res.label_issue))
        return cls(row_of, quality, issue, groups)


def _regroup(batches, rows: int):
    """Lists of texts regrouped into lists of about ``rows`` texts."""
    chunk: list[str] = []
    for texts in batches:
        chunk.extend(texts)
        if len(chunk) >= rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _report_frame(
    plan: ScorePlan, index: ss.Index, rows: _RowScores, res: NoiseResult, near_ood=None
):
    """What the report needs for every row, without the texts: the text (and id) is read back
    only for the rows the report shows (top issues, first member of conflicted clusters).
    ``near_ood``: every row's flag (all False without embeddings)."""
    import pandas as pd

    row_of = rows.row_of
    frame = pd.DataFrame(
        {
            "label": np.array(index.labels, dtype=object),
            "label_quality": rows.quality,
            "label_issue": rows.issue,
            "predicted_label": np.asarray(res.predicted_label, dtype=object)[row_of],
            "predicted_prob": res.predicted_prob[row_of],
            "near_ood": (np.zeros(len(index.ids), dtype=bool) if near_ood is None else near_ood),
            "bias_groups": _group_lists(rows.groups, row_of),
        }
    )
    shown = _shown_rows(plan.path_in, frame)
    picked = ss.take_rows(plan.path_in, np.array(sorted(set(shown)), dtype=np.int64),
                          ["id", "text"], plan.opts.batch_size)  # fmt: skip
    ids = np.full(len(index.ids), None, dtype=object)
    texts = np.full(len(index.ids), None, dtype=object)
    for row, rec in picked.items():
        ids[row], texts[row] = rec["id"], rec["text"]
    frame["id"], frame["text"] = ids, texts
    return frame


def _group_lists(groups: tuple[np.ndarray, np.ndarray], row_of: np.ndarray) -> list[list[str]]:
    """Every row's lexicon groups: its representative's."""
    offsets, values = groups
    empty: list[str] = []
    rep_groups = [
        list(values[offsets[j] : offsets[j + 1]]) if offsets[j + 1] > offsets[j] else empty
        for j in range(len(offsets) - 1)
    ]
    return [rep_groups[j] for j in row_of]


def _shown_rows(path_in, frame) -> list[int]:
    """The rows whose texts the report shows: the top issues, and the first member of up to 30
    clusters with conflicting labels (adds ``dup_cluster`` and ``label_conflict`` to ``frame``
    when the input has them)."""
    import pyarrow.parquet as pq

    from curate.report import ReportData

    names = set(pq.ParquetFile(path_in).schema_arrow.names)
    show = frame[frame["label_issue"]].sort_values("label_quality")
    shown = list(show.head(ReportData.top_issues).index)
    if {"dup_cluster", "label_conflict"} <= names:
        dup = pq.read_table(path_in, columns=["dup_cluster", "label_conflict"]).to_pandas()
        frame["dup_cluster"] = dup["dup_cluster"].to_numpy()
        frame["label_conflict"] = dup["label_conflict"].to_numpy()
        conflicted = frame[frame["label_conflict"].fillna(False).astype(bool)
                           & frame["dup_cluster"].notna()]  # fmt: skip
        for _, members in list(conflicted.groupby("dup_cluster"))[:30]:
            shown.append(int(members.index[0]))
    return shown
