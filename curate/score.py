"""The score stage: label noise, outliers and bias for every record, plus the HTML report.

Reads ``DIR/dedup/records.parquet`` when present (else ``DIR/ingest/``). With dedup output only
representatives are scored (duplicates would leak across folds and inflate confidence); cluster
members get their representative's predictions, and their own ``label_quality`` against them.

Writes ``DIR/score/``: ``records.parquet`` (input columns + label_quality, label_issue,
predicted_label, predicted_prob, outlier_score, near_ood, bias_groups), ``bias.json``,
``report.html``, ``map.parquet`` (2-D embedding map) and ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from thresher.errors import InputError
from thresher.project import (
    Project,
    fingerprint,
    path_sha256,
    stage_output,
    upstream_input,
)
from thresher.split import held_out_ids

log = logging.getLogger(__name__)

STAGE = "score"


@dataclass(frozen=True)
class ScoreOptions:
    """What the score stage needs from the config (resolved by the caller)."""

    folds: int = 5
    repeats: int = 2
    learners: tuple[str, ...] = ("emb", "svm")
    second_pass: bool = False
    embeddings: bool = True
    model: str = "default"
    bias_lexicon: str | None = None
    bias_lexicon_replace: bool = False
    bias_alpha: float = 0.05
    bias_min_count: int = 5
    probs_from: str | None = None
    seed: int = 0
    # observed | uniform | label=share,...: the true class shares to assume (curate.noise
    # adjust_to_prior); not observed when label noise runs mostly one way
    class_prior: str = "observed"
    # local = in memory (all learners, outliers, map); stream = two passes over Parquet batches
    # with hashed naive Bayes (never all texts in memory); ray = the same passes on Ray Data;
    # auto = local up to ``stream_above`` records to score, stream above.
    engine: str = "auto"
    stream_above: int = 200_000
    batch_size: int = 8192


ENGINES = ("auto", "local", "stream", "ray")


def resolve_engine(opts: ScoreOptions, rows: int) -> str:
    """The engine that runs: ``auto`` picks ``stream`` above ``stream_above`` rows."""
    if opts.engine not in ENGINES:
        raise InputError(f"score engine must be one of {', '.join(ENGINES)}, got {opts.engine!r}")
    if opts.engine != "auto":
        return opts.engine
    return "stream" if rows > opts.stream_above else "local"


@dataclass
class ScoreResult:
    """Summary of one score run (also what ``--json`` prints)."""

    scored: int
    records: int
    labeled: int
    label_issues: int
    near_ood: int
    significant_bias: int
    top_bias: list[dict[str, Any]]
    learners: list[str]
    folds: int
    path: str
    report: str
    noop: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    engine: str = "local"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_learners(learners: tuple[str, ...], embeddings: bool) -> tuple[str, ...]:
    """The learners to run. Without embeddings, ``emb`` is replaced by ``nb`` (naive Bayes on
    word + character n-grams: a second, differently-biased text view; measured in docs/score.md)."""
    from curate.noise import ALL_LEARNERS

    unknown = [ln for ln in learners if ln not in ALL_LEARNERS]
    if unknown:
        raise InputError(f"unknown learners {unknown}; choose from {', '.join(ALL_LEARNERS)}")
    if embeddings:
        return tuple(dict.fromkeys(learners))
    out = [("nb" if ln == "emb" else ln) for ln in learners]
    out = list(dict.fromkeys(out))
    if not out:
        raise InputError("no learners given; choose from " + ", ".join(ALL_LEARNERS))
    return tuple(out)


def scored_records(df) -> np.ndarray:
    """Which records the score stage scores (bool): dedup representatives, all of them without
    dedup output. ``tune crossfit`` predicts exactly these, for ``--probs-from``."""
    from thresher.records import representative_mask

    return representative_mask(df)


def _external_probs(project: Project, source: str, ids, classes) -> np.ndarray:
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


def _annotations(project: Project):
    """Per-record annotator labels from a review pull, if any: {id: {annotator: label}}."""
    import pandas as pd

    path = project.annotations_path
    if not path.exists():
        return None, None
    frame = pd.read_parquet(path)
    if "annotator_labels" not in frame.columns or "id" not in frame.columns:
        return None, path
    out = {}
    for rid, raw in zip(frame["id"], frame["annotator_labels"], strict=True):
        value = json.loads(raw) if isinstance(raw, str) else raw
        if isinstance(value, dict) and value:
            out[str(rid)] = {str(k): str(v) for k, v in value.items() if v is not None}
    return out, path


def score(
    project: Project,
    opts: ScoreOptions,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ScoreResult:
    """Run the score stage on ``project``. A rerun with unchanged inputs/options is a no-op."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate import bias as bias_mod
    from curate import noise
    from curate.report import ReportData, render_report, stage_counts

    stage_in, path_in = project.latest_records(["dedup", "ingest"])
    lexicon = bias_mod.load_lexicon(opts.bias_lexicon, replace=opts.bias_lexicon_replace)
    inputs = [upstream_input(project, stage_in)]
    annotations, ann_path = _annotations(project)
    if ann_path is not None:
        inputs.append({"path": str(ann_path), "sha256": path_sha256(ann_path)})
    # the project split's test/held records: no label-noise model learns from their labels, so a
    # curated run's test score is not shaped by its own test labels
    held_out = held_out_ids(project)
    if project.split_path.exists():
        inputs.append({"path": str(project.split_path), "sha256": path_sha256(project.split_path)})
    engine = resolve_engine(opts, pq.ParquetFile(path_in).metadata.num_rows)
    config = {**asdict(opts), "engine": engine, "lexicon": fingerprint(lexicon)}
    stage_fp = fingerprint({"inputs": inputs, "config": config})
    if not force and project.is_fresh(STAGE, stage_fp):
        manifest = project.read_manifest(STAGE) or {}
        return ScoreResult(**{**manifest["summary"], "noop": True})
    if engine != "local":
        return _score_streaming(
            project, opts, engine, stage_in=stage_in, path_in=path_in, lexicon=lexicon,
            inputs=inputs, config=config, stage_fp=stage_fp, annotations=annotations,
            progress=progress, held_out=held_out,
        )  # fmt: skip

    df = pd.read_parquet(path_in)
    if len(df) == 0:
        raise InputError(f"{path_in} has no records; nothing to score")
    rep = scored_records(df)
    reps = df[rep].reset_index(drop=True)
    texts = reps["text"].astype(str).tolist()
    labels = [None if pd.isna(v) else str(v) for v in reps["label"]]
    noise.parse_class_prior(opts.class_prior, noise.encode_labels(labels)[1])  # fail fast

    with stage_output(
        project, STAGE, stage_fp, inputs=inputs, config=config,
        packages=("cleanlab", "scikit-learn", "sentence-transformers", "numpy"),
    ) as run:  # fmt: skip
        embeddings = None
        if opts.embeddings:
            from thresher.embeddings import embed_texts

            with run.timed("embed"):
                embeddings = embed_texts(
                    texts, opts.model, cache_dir=project.embedding_cache,
                    progress=progress,
                )  # fmt: skip
        learners = resolve_learners(opts.learners, opts.embeddings)
        nopts = noise.NoiseOptions(
            folds=opts.folds,
            repeats=opts.repeats,
            learners=learners,
            second_pass=opts.second_pass,
            seed=opts.seed,
            class_prior=opts.class_prior,
        )
        external = None
        if opts.probs_from:
            _, classes = noise.encode_labels(labels)
            external = _external_probs(project, opts.probs_from, reps["id"].tolist(), classes)
        with run.timed("label_noise"):
            holdout = reps["id"].astype(str).isin(held_out).to_numpy() if held_out else None
            res = noise.score_label_noise(
                texts, labels, nopts, embeddings=embeddings, pred_probs=external, holdout=holdout
            )
        with run.timed("outliers"):
            dense = _dense_features(texts, embeddings)
            out_score, near_ood = noise.outlier_scores(dense)
            coords = _map_2d(dense, opts.seed)
        with run.timed("bias"):
            groups, report = bias_mod.score_bias(
                texts, labels, lexicon=lexicon, label_issue=res.label_issue,
                label_quality=res.label_quality, alpha=opts.bias_alpha,
                min_count=opts.bias_min_count,
            )  # fmt: skip
        multi, annotator_quality = None, {}
        if annotations:
            multi, annotator_quality = _score_annotations(
                reps["id"].tolist(), annotations, res, noise
            )
            if annotator_quality:
                run.path("annotators.json").write_text(
                    json.dumps({"annotator_quality": annotator_quality}, indent=2) + "\n",
                    encoding="utf-8",
                )

        # Carry representatives' results to every row (cluster members included).
        full = _expand(df, rep, reps, res, out_score, near_ood, groups, coords)
        if multi is not None:
            full = full.merge(multi, on="id", how="left")
        records = full.drop(columns=["_x", "_y"])
        table = pa.Table.from_pandas(records, preserve_index=False)
        pq.write_table(table, run.path("records.parquet"), compression="zstd")
        pd.DataFrame({"id": full["id"], "x": full["_x"], "y": full["_y"]}).to_parquet(
            run.path("map.parquet"), index=False
        )
        bias_dict = report.to_dict()
        (run.path("bias.json")).write_text(
            json.dumps(bias_dict, indent=2, sort_keys=True, default=float) + "\n", encoding="utf-8"
        )
        labeled_mask = records["label"].notna()
        summary = ScoreResult(
            scored=len(reps),
            records=len(records),
            labeled=int(labeled_mask.sum()),
            label_issues=int(records["label_issue"].sum()),
            near_ood=int(records["near_ood"].sum()),
            **_summary_fields(project, report, res),
        )
        scoring = {
            "input stage": stage_in,
            "learners": "+".join(res.learners),
            "folds": res.folds,
            "repeats": opts.repeats,
            "second pass": opts.second_pass,
            "first-pass issues": res.first_pass_issues,
            "ranking": nopts.ranking,
        }
        html_text = render_report(
            ReportData(
                records=records,
                bias=bias_dict,
                stage_counts={**stage_counts(project), "score": {"records": len(records)}},
                coords=full[["_x", "_y"]].to_numpy(),
                project=str(project.root),
                scoring=scoring,
            )
        )
        run.path("report.html").write_text(html_text, encoding="utf-8")
        run.counts.update(
            {"rows_in": len(df), "scored": len(reps), "label_issues": summary.label_issues,
             "near_ood": summary.near_ood}
        )  # fmt: skip
        summary.timings = dict(run.timings)
        run.extra.update(
            {
                "summary": _summary_json(summary),
                "scoring": scoring,
                "seed": opts.seed,
                "classes": res.classes,
            }
        )
    return summary


def _score_streaming(
    project: Project, opts: ScoreOptions, engine: str, *, stage_in, path_in, lexicon, inputs,
    config, stage_fp, annotations, progress, held_out=frozenset(),
) -> ScoreResult:  # fmt: skip
    """The stage on the ``stream`` or ``ray`` engine (``curate.score_stream``): never all texts
    in memory; no embeddings, outliers or map (their columns are null)."""
    from curate import noise
    from curate import score_stream as ss
    from curate.report import ReportData, render_report, stage_counts

    if opts.probs_from:
        raise InputError("--probs-from works with the local engine only; add --engine local")
    if opts.embeddings and "emb" in opts.learners:
        log.info("%s engine: hashed naive Bayes only (no embeddings, outliers or map)", engine)
    index = ss.read_index(path_in)
    if len(index.ids) == 0:
        raise InputError(f"{path_in} has no records; nothing to score")
    with stage_output(
        project, STAGE, stage_fp, inputs=inputs, config=config,
        packages=("cleanlab", "scikit-learn", "numpy", "pyarrow") + (("ray",) * (engine == "ray")),
    ) as run:  # fmt: skip
        out = ss.score_passes(
            path_in, index, engine=engine, folds=opts.folds, seed=opts.seed, lexicon=lexicon,
            batch_size=opts.batch_size, progress=progress, held_out=held_out,
            class_prior=opts.class_prior,
        )  # fmt: skip
        run.timings.update(out.timings)
        res = out.res
        rep_labels = [lab for lab, r in zip(index.labels, index.rep, strict=True) if r]
        y, _ = noise.encode_labels(rep_labels, res.classes)
        with run.timed("bias"):
            report = ss.bias_from_scores(
                out, y, alpha=opts.bias_alpha, min_count=opts.bias_min_count,
                lexicon_groups=len(lexicon),
            )  # fmt: skip
        consensus, annotator_quality = None, {}
        if annotations:
            multi, annotator_quality = _score_annotations(
                list(index.ids[index.rep]), annotations, res, noise
            )
            if multi is not None:
                consensus = ss.consensus_map(multi)
            if annotator_quality:
                run.path("annotators.json").write_text(
                    json.dumps({"annotator_quality": annotator_quality}, indent=2) + "\n",
                    encoding="utf-8",
                )
        with run.timed("write"):
            row_of = representative_rows(index.rep, index.clusters, index.ids)
            quality, issue = expand_scores(index.rep, row_of, index.labels, res)
            offsets_values = ss.group_lists(out.group_rows, out.group_names, len(res.label_issue))
            written = ss.write_records(
                path_in, run.path("records.parquet"), index=index, row_of=row_of,
                quality=quality, issue=issue, res=res, groups=offsets_values,
                consensus=consensus, batch_size=opts.batch_size,
            )  # fmt: skip
        bias_dict = report.to_dict()
        run.path("bias.json").write_text(
            json.dumps(bias_dict, indent=2, sort_keys=True, default=float) + "\n", encoding="utf-8"
        )
        summary = ScoreResult(
            scored=len(res.label_issue),
            records=written,
            labeled=sum(v is not None for v in index.labels),
            label_issues=int(issue.sum()),
            near_ood=0,
            **_summary_fields(project, report, res),
            engine=engine,
        )
        scoring = {
            "input stage": stage_in,
            **ss.manifest_scoring(out, engine, ss.ns.VIEW_FEATURES),
            "folds": res.folds,
            "ranking": "normalized_margin",
        }
        with run.timed("report"):
            frame = _report_frame(path_in, index, row_of, quality, issue, res, offsets_values,
                                  opts.batch_size)  # fmt: skip
            html_text = render_report(
                ReportData(
                    records=frame,
                    bias=bias_dict,
                    stage_counts={**stage_counts(project), "score": {"records": written}},
                    coords=None,
                    project=str(project.root),
                    scoring=scoring,
                )
            )
            run.path("report.html").write_text(html_text, encoding="utf-8")
        run.counts.update(
            {"rows_in": written, "scored": summary.scored, "label_issues": summary.label_issues,
             "near_ood": 0}
        )  # fmt: skip
        summary.timings = dict(run.timings)
        run.extra.update(
            {"summary": _summary_json(summary), "scoring": scoring, "seed": opts.seed,
             "classes": res.classes}
        )  # fmt: skip
    return summary


def _report_frame(path_in, index, row_of, quality, issue, res, groups, batch_size: int):
    """What the report needs for every row, without the texts: the text (and id) is read back
    only for the rows the report shows (top issues, first member of conflicted clusters)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from curate.report import ReportData
    from curate.score_stream import take_rows

    n = len(index.ids)
    offsets, values = groups
    empty: list[str] = []
    rep_groups = [
        list(values[offsets[j] : offsets[j + 1]]) if offsets[j + 1] > offsets[j] else empty
        for j in range(len(offsets) - 1)
    ]
    frame = pd.DataFrame(
        {
            "label": np.array(index.labels, dtype=object),
            "label_quality": quality,
            "label_issue": issue,
            "predicted_label": np.asarray(res.predicted_label, dtype=object)[row_of],
            "predicted_prob": res.predicted_prob[row_of],
            "near_ood": np.zeros(n, dtype=bool),
            "bias_groups": [rep_groups[j] for j in row_of],
        }
    )
    names = set(pq.ParquetFile(path_in).schema_arrow.names)
    show = frame[frame["label_issue"]].sort_values("label_quality")
    show_rows = list(show.head(ReportData.top_issues).index)
    if {"dup_cluster", "label_conflict"} <= names:
        dup = pq.read_table(path_in, columns=["dup_cluster", "label_conflict"]).to_pandas()
        frame["dup_cluster"] = dup["dup_cluster"].to_numpy()
        frame["label_conflict"] = dup["label_conflict"].to_numpy()
        conflicted = frame[frame["label_conflict"].fillna(False).astype(bool)
                           & frame["dup_cluster"].notna()]  # fmt: skip
        for _, members in list(conflicted.groupby("dup_cluster"))[:30]:
            show_rows.append(int(members.index[0]))
    picked = take_rows(path_in, np.array(sorted(set(show_rows)), dtype=np.int64),
                       ["id", "text"], batch_size)  # fmt: skip
    ids = np.full(n, None, dtype=object)
    texts = np.full(n, None, dtype=object)
    for row, rec in picked.items():
        ids[row], texts[row] = rec["id"], rec["text"]
    frame["id"], frame["text"] = ids, texts
    return frame


def _summary_json(summary: ScoreResult) -> dict[str, Any]:
    out = summary.to_dict()
    out.pop("noop")
    return json.loads(json.dumps(out, default=float))


def _score_annotations(ids, annotations, res, noise):
    import pandas as pd

    pos = [i for i, rid in enumerate(ids) if str(rid) in annotations]
    if not pos:
        return None, {}
    rows = [annotations[str(ids[i])] for i in pos]
    multi = noise.score_multiannotator(rows, res.pred_probs[pos], res.classes)
    frame = pd.DataFrame(
        {
            "id": [ids[i] for i in pos],
            "consensus_label": multi.consensus_label,
            "consensus_quality": multi.consensus_quality,
            "annotator_agreement": multi.annotator_agreement,
        }
    )
    return frame, multi.annotator_quality


def representative_rows(rep: np.ndarray, clusters, ids) -> np.ndarray:
    """For every row, the position (in representative order) of the representative whose
    predictions it carries: its own for representatives, its cluster's for members."""
    import pandas as pd

    n = rep.shape[0]
    src = np.flatnonzero(rep)  # row of each representative, in representative order
    row_of = np.empty(n, dtype=np.int64)
    row_of[src] = np.arange(len(src))
    if not rep.all():
        by_cluster = {}
        for j, i in enumerate(src):
            if not pd.isna(clusters[i]):
                by_cluster[clusters[i]] = j
        for i in np.flatnonzero(~rep):
            cluster = clusters[i]
            if pd.isna(cluster) or cluster not in by_cluster:
                raise InputError(
                    f"record {ids[i]} is not a representative and its cluster has none; "
                    "rerun `thresher curate dedup --force`"
                )
            row_of[i] = by_cluster[cluster]
    return row_of


def expand_scores(rep: np.ndarray, row_of: np.ndarray, labels: list, res):
    """``label_quality`` and ``label_issue`` for every row: representatives keep theirs; a
    cluster member gets its own label's quality against its representative's predictions and
    is an issue when its label differs from the representative's and the ensemble predicts
    another label than the member's (same label as the representative: same verdict)."""
    from curate.noise import encode_labels, quality_scores

    probs = res.pred_probs[row_of]
    quality = res.label_quality[row_of].copy()
    issue = res.label_issue[row_of].copy()
    if not rep.all():
        if _known(labels, res.classes):
            y, _ = encode_labels(labels, res.classes)
        else:
            y = np.array([res.classes.index(v) if v in res.classes else -1 for v in labels])
        members = ~rep
        quality[members] = quality_scores(y[members], probs[members])
        src = np.flatnonzero(rep)
        rep_label = np.array([labels[src[j]] for j in row_of], dtype=object)
        own = np.array(labels, dtype=object)
        pred = np.array(res.predicted_label, dtype=object)[row_of]
        same = own == rep_label
        issue[members] = np.where(same[members], issue[members], pred[members] != own[members])
        issue[members & np.array([v is None for v in labels])] = False
    return quality, issue.astype(bool)


def _expand(df, rep, reps, res, out_score, near_ood, groups, coords):
    """Score columns for every row of ``df`` (see ``expand_scores``)."""
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


def _known(labels, classes) -> bool:
    return all(v is None or v in classes for v in labels)


def report_path(project: Project) -> Path:
    return project.stage_dir(STAGE) / "report.html"


def _summary_fields(project: Project, report, res) -> dict[str, Any]:
    """The summary fields both engines report: bias headline, learners, folds, output paths."""
    return {
        "significant_bias": sum(1 for g in report.groups if g["significant"]),
        "top_bias": [
            {k: g[k] for k in ("name", "label", "lift", "q_value", "slice_size")}
            for g in report.groups[:5]
        ],
        "learners": list(res.learners),
        "folds": res.folds,
        "path": str(project.records_path(STAGE)),
        "report": str(project.stage_dir(STAGE) / "report.html"),
    }
