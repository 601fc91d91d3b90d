"""``thresher monitor``: is the served traffic still like the data the model was trained on?

Load the traffic window (``thresher.traffic.read_traffic``), the reference of the run that served
it (``DIR/tune/<run>/``: training texts, the predicted labels and probabilities on its held-out
val+test records), embed both (the shared cache), run the tests of ``loop.drift``, decide, and
write ``DIR/monitor/<UTC time>/report.json``, ``report.html`` and the per-record
``records.parquet`` (``loop.monitor_records``).

Decision: drift when any main test (embedding, label distribution, confidence, near-OOD) has
p < alpha / (tests run): Bonferroni keeps the chance of a false alarm ≤ alpha whatever the
dependence between the tests. Bias slices are reported, not decided on.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from loop.drift import (
    DriftTest,
    bonferroni,
    confidence_drop,
    embedding_mmd,
    knn_distance,
    label_shift,
    near_ood_share,
)
from loop.monitor_records import RECORDS_FILE, OodScores, record_table, write_records
from thresher.errors import ThresherError
from thresher.project import Project

log = logging.getLogger(__name__)

MAIN_TESTS = ("embedding", "label_distribution", "confidence", "near_ood")
MIN_NULL = 20  # fewer training texts: no near-OOD test (its threshold would be a guess)


@dataclass(frozen=True)
class MonitorOptions:
    """What ``thresher monitor`` compares and how strictly."""

    since: datetime | None = None
    until: datetime | None = None
    run: str | None = None
    alpha: float = 0.05
    min_n: int = 50
    seed: int = 0
    max_per_side: int = 2000
    permutations: int = 200
    k: int = 5
    embedding_model: str | None = "default"


@dataclass
class Reference:
    """The served run's side of the comparison."""

    run: str
    labels: list[str]
    train_texts: list[str]
    heldout_predicted: list[str]
    heldout_prob: np.ndarray


@dataclass
class MonitorResult:
    """What one monitor run found (``to_dict`` is the ``--json`` summary)."""

    drift: bool
    n: int
    run: str
    decided: bool
    alpha: float
    threshold: float
    tests: dict[str, dict[str, Any]]
    slices: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    window: dict[str, str | None] = field(default_factory=dict)
    report: str = ""
    records: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift": self.drift,
            "n": self.n,
            "run": self.run,
            "decided": self.decided,
            "alpha": self.alpha,
            "threshold": self.threshold,
            "tests": self.tests,
            "slices": self.slices,
            "notes": self.notes,
            "window": self.window,
            "report": self.report,
            "records": self.records,
        }


def load_window(project: Project, opts: MonitorOptions):
    """The traffic in ``[since, until)``; a one-line error when there is none."""
    from thresher.traffic import read_traffic

    frame = read_traffic(project.traffic_dir, opts.since, opts.until)
    if frame.empty:
        window = f" between {_iso(opts.since) or 'the start'} and {_iso(opts.until) or 'now'}"
        raise ThresherError(
            f"no traffic in {project.traffic_dir}{window}; run `thresher serve -p {project.root}`"
            " or widen --since/--until"
        )
    return frame


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def load_reference(project: Project, run: str) -> Reference:
    """Training texts and held-out (val+test) predictions of the run folder ``run``."""
    import pandas as pd

    from tune.evaluate import find_run

    run_dir = find_run(project.stage_dir("tune"), run)
    labels = [str(x) for x in json.loads((run_dir / "config.json").read_text()).get("labels", [])]
    for name in ("train_data.parquet", "predictions.parquet"):
        if not (run_dir / name).exists():
            raise ThresherError(f"{run_dir / name} not found; rerun `thresher tune train`")
    train = pd.read_parquet(run_dir / "train_data.parquet", columns=["text"])
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    held = preds[preds["split"].isin(["val", "test"])]
    if held.empty or "predicted" not in held.columns:
        raise ThresherError(f"{run_dir}/predictions.parquet has no val/test predictions")
    return Reference(
        run=run_dir.name,
        labels=labels,
        train_texts=train["text"].astype(str).tolist(),
        heldout_predicted=held["predicted"].astype(str).tolist(),
        heldout_prob=held["prob"].to_numpy(dtype=np.float64),
    )


def served_run(frame, requested: str | None) -> tuple[str, Any, list[str]]:
    """The run to compare against, the traffic rows it served, and notes."""
    counts = frame["model"].value_counts()
    run = requested or str(counts.index[0])
    notes = []
    if len(counts) > 1 and requested is None:
        notes.append(f"traffic from {len(counts)} models; compared the most common, {run}")
    rows = frame[frame["model"] == run]
    if rows.empty:
        notes.append(f"run {run} served none of this window; compared all of it")
        rows = frame
    return run, rows.reset_index(drop=True), notes


def run_monitor(project: Project, opts: MonitorOptions) -> MonitorResult:
    """Load, test, decide and write the report folder; the result (with ``report`` set)."""
    frame = load_window(project, opts)
    run, traffic, notes = served_run(frame, opts.run)
    reference = load_reference(project, run)
    result = MonitorResult(
        drift=False,
        n=len(traffic),
        run=reference.run,
        decided=False,
        alpha=opts.alpha,
        threshold=opts.alpha,
        tests={},
        notes=notes,
        window={"since": _iso(opts.since), "until": _iso(opts.until)},
    )
    plots: dict[str, Any] = {}
    ood: OodScores | None = None
    if len(traffic) < opts.min_n:
        result.notes.append(
            f"only {len(traffic)} texts in the window (--min-n {opts.min_n}): no decision"
        )
    else:
        tests, ood = run_tests(project, reference, traffic, opts, result.notes, plots)
        decide(result, tests)
        texts = traffic["text"].dropna().astype(str).tolist()
        result.slices, slice_notes = _slices(project, texts, opts.alpha)
        result.notes.extend(slice_notes)
    plots.update(
        reference_conf=reference.heldout_prob,
        traffic_conf=traffic["prob"].to_numpy(dtype=np.float64),
    )
    write_outputs(project, result, plots, record_table(traffic, ood))
    return result


def _slices(project: Project, texts: list[str], alpha: float):
    from loop.monitor_slices import slice_shifts

    return slice_shifts(project, texts, alpha)


def run_tests(
    project: Project,
    reference: Reference,
    traffic,
    opts: MonitorOptions,
    notes: list[str],
    plots: dict[str, Any],
) -> tuple[list[DriftTest], OodScores | None]:
    """The main tests that can run on this traffic (the text tests need logged text), and the
    near-OOD test's per-text distances (None when it did not run)."""
    tests = [
        label_shift(reference.heldout_predicted, traffic["label"].astype(str).tolist(),
                    reference.labels),
        confidence_drop(reference.heldout_prob, traffic["prob"].to_numpy(dtype=np.float64)),
    ]  # fmt: skip
    texts = traffic["text"].dropna().astype(str).tolist()
    if len(texts) < opts.min_n:
        notes.append(
            f"embedding and near-OOD tests skipped: {len(texts)} of {len(traffic)} texts were "
            "logged with their text (the server ran with --no-log-text)"
        )
        return tests, None
    if len(texts) < len(traffic):
        notes.append(f"embedding tests use the {len(texts)} texts logged with their text")
    text_tests, ood = _embedding_tests(project, reference, texts, opts, notes, plots)
    return tests + text_tests, ood


def _embedding_tests(
    project, reference, texts, opts, notes, plots
) -> tuple[list[DriftTest], OodScores | None]:
    """MMD on a sample of at most ``max_per_side`` texts; the near-OOD test on every logged
    text of the window (each distinct text embedded once), so every record gets its distance.
    The near-OOD null is leave-one-out: each sampled training text's distance to its k nearest
    other training texts (many more reference distances than the held-out set gives)."""
    from thresher.embeddings import embed_texts

    rng = np.random.default_rng(opts.seed)
    train = _sample(reference.train_texts, opts.max_per_side, rng)
    cur = _sample(texts, opts.max_per_side, rng)
    distinct = list(dict.fromkeys(texts))
    row_of = {text: i for i, text in enumerate(distinct)}
    vectors = embed_texts(train + distinct, opts.embedding_model, cache_dir=project.embedding_cache)
    train_v = vectors[: len(train)]
    distinct_v = vectors[len(train) :]
    cur_v = distinct_v[[row_of[t] for t in cur]]
    # Enough permutations that the smallest possible p-value is well under alpha / 4.
    permutations = max(opts.permutations, int(np.ceil(2 * len(MAIN_TESTS) / opts.alpha)))
    tests = [
        embedding_mmd(
            train_v, cur_v, permutations=permutations, max_per_side=opts.max_per_side,
            seed=opts.seed,
        )
    ]  # fmt: skip
    plots.update(train_vectors=train_v, traffic_vectors=cur_v)
    if len(train_v) < MIN_NULL:
        notes.append(f"near-OOD test skipped: {len(train_v)} training texts in the run")
        return tests, None
    ref_dist = knn_distance(train_v, train_v, k=opts.k, exclude_self=True)
    distinct_dist = knn_distance(distinct_v, train_v, k=opts.k, exclude_self=True)
    cur_dist = distinct_dist[[row_of[t] for t in texts]]
    near_ood = near_ood_share(ref_dist, cur_dist)
    tests.append(near_ood)
    plots.update(reference_distances=ref_dist, traffic_distances=cur_dist)
    distances = dict(zip(distinct, distinct_dist.tolist(), strict=True))
    return tests, OodScores(near_ood.details["threshold"], distances)


def _sample(texts: list[str], limit: int, rng: np.random.Generator) -> list[str]:
    if len(texts) <= limit:
        return list(texts)
    return [texts[i] for i in np.sort(rng.choice(len(texts), limit, replace=False))]


def decide(result: MonitorResult, tests: list[DriftTest]) -> None:
    """Bonferroni over the tests that ran: drift when any p < alpha / len(tests)."""
    threshold, flags = bonferroni([t.p_value for t in tests], result.alpha)
    result.threshold = threshold
    result.decided = True
    for test, flag in zip(tests, flags, strict=True):
        row = test.to_dict()
        row.pop("name")
        result.tests[test.name] = {**row, "drift": flag}
    result.drift = any(flags)


def write_outputs(project: Project, result: MonitorResult, plots: dict[str, Any], records) -> Path:
    """``DIR/monitor/<UTC time>/``: ``records.parquet`` (the Arrow table ``records``), then
    ``report.json`` and ``report.html`` (folder 0700, atomic files; the records come first, so a
    reader that finds ``report.json`` finds them too)."""
    from loop.monitor_report import render_monitor_report
    from thresher.project import atomic_write_json, atomic_write_text

    folder = _new_folder(project.stage_dir("monitor"))
    result.report = str(folder / "report.html")
    result.records = str(folder / RECORDS_FILE)
    write_records(folder / RECORDS_FILE, records)
    atomic_write_json(folder / "report.json", result.to_dict())
    atomic_write_text(folder / "report.html", render_monitor_report(result.to_dict(), plots))
    return folder


def _new_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for i in range(1000):
        folder = root / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            folder.mkdir(mode=0o700)
            return folder
        except FileExistsError:
            continue
    raise ThresherError(f"could not make a new report folder under {root}")
