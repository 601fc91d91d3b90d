"""Base-model selection: train every candidate base on the same split with the same budget, measure
each on the fixed test split, and pick one by a declared rule.

Each candidate is a normal run ``DIR/tune/select-<base-slug>/`` (``tune.train``), so ``tune eval``,
``tune promote`` and ``serve`` work on the chosen one. The measures (``Candidate``):

- quality on the test split, from the run's own ``predictions.parquet``: macro-F1 (higher =
  better, 0..1) with a 95 % percentile bootstrap interval over test records; the worst slice's
  macro-F1 (slices of at least ``min_slice`` records, ``(none)`` left out; higher = better); the
  expected calibration error (lower = better, 0..1);
- serving cost on this machine: milliseconds per record at batch 1 and at batch 32 (median of
  timed passes over test texts after a warm-up; lower = better), records per second at batch 32
  (higher = better), the memory that loading and scoring add (MiB; RSS high-water on CPU, CUDA
  peak allocation on a GPU; lower = better), trainable and total parameters, and the size on disk
  of the adapter folder and of the base's weights (MiB).

The rule (``choose``): the best test macro-F1 among the candidates whose batch-1 latency is within
``max_latency_ms`` (when given); candidates within ``TIE_MARGIN`` of that best are a tie, which
the smaller model (total parameters) wins. ``--search`` (``tune/select_search.py``) first picks
each base's learning rate and LoRA rank by validation macro-F1, never by test.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError
from thresher.names import validate_name
from thresher.project import Project, atomic_write_json, atomic_write_text
from tune.options import TuneOptions

log = logging.getLogger(__name__)

SELECTION = "selection"  # DIR/tune/selection/: selection.json and report.html
RUN_PREFIX = "select-"
TIE_MARGIN = 0.005  # macro-F1 within this of the best is a tie (the smaller model wins)
MIN_SLICE = 10  # slices smaller than this are too noisy to be the "worst slice"
MIB = 2**20


@dataclass(frozen=True)
class SelectOptions:
    """What ``select`` compares and how it measures (the training recipe is a ``TuneOptions``)."""

    bases: tuple[str, ...]
    max_latency_ms: float | None = None  # batch-1 latency cap of the rule (None = no cap)
    trials: int = 0  # hyperparameter search trials per base (0 = train each base once)
    force: bool = False  # retrain candidates whose run is up to date
    n_boot: int = 1000  # bootstrap resamples of the macro-F1 interval
    latency_records: int = 64  # test texts timed (cycled when the test split is smaller)
    latency_passes: int = 5  # timed passes; the median is reported
    min_slice: int = MIN_SLICE
    isolate: bool = True  # measure serving in a fresh process (clean memory numbers)
    seed: int = 0


@dataclass
class Candidate:
    """One base's run and its measures (directions in the module docstring)."""

    base: str
    run: str
    macro_f1: float
    ci_low: float
    ci_high: float
    worst_slice_f1: float | None
    ece: float
    latency_ms: float
    latency_ms_b32: float
    records_per_s: float
    peak_mem_mb: float
    trainable_params: int
    total_params: int
    size_mb: float  # adapter folder + base weights
    worst_slice: str | None = None
    val_macro_f1: float | None = None
    adapter_mb: float = 0.0
    base_mb: float | None = None
    reused: bool = False  # the run was up to date and not retrained
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Selection:
    """The outcome: every candidate, the rule, the chosen run (None when none qualifies)."""

    candidates: list[Candidate]
    chosen: str | None
    rule: str
    reason: str
    time: str
    device: str
    path: Path  # DIR/tune/selection/

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "chosen": self.chosen,
            "rule": self.rule,
            "reason": self.reason,
            "time": self.time,
            "device": self.device,
        }


# ---- names and the rule -----------------------------------------------------------------------


def run_name(base: str) -> str:
    """``select-<base-slug>``: the base's folder name, or its hub id with ``/`` as ``-``."""
    import re

    path = Path(base).expanduser()
    text = path.name if path.exists() else base
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    slug = re.sub(r"\.{2,}", ".", slug)[: 100 - len(RUN_PREFIX)].rstrip("-._")
    return validate_name(RUN_PREFIX + (slug or "base"), "--bases")


def rule_text(max_latency_ms: float | None = None, margin: float = TIE_MARGIN) -> str:
    """The declared rule, in words (recorded in selection.json)."""
    cap = (
        f" among candidates with batch-1 latency <= {max_latency_ms:g} ms"
        if max_latency_ms is not None
        else ""
    )
    return (
        f"best test macro-F1{cap}; candidates within {margin:g} of the best are a tie, "
        "won by the smaller model (total parameters)"
    )


def choose(
    candidates: Sequence[Candidate], max_latency_ms: float | None = None, margin: float = TIE_MARGIN
) -> tuple[str | None, str]:
    """(chosen run, why) by ``rule_text``; (None, why) when no candidate meets the latency cap."""
    eligible = [c for c in candidates if max_latency_ms is None or c.latency_ms <= max_latency_ms]
    if not eligible:
        fastest = min(candidates, key=lambda c: c.latency_ms, default=None)
        hint = f" (fastest: {fastest.run} at {fastest.latency_ms:.2f} ms)" if fastest else ""
        return None, f"no candidate has batch-1 latency <= {max_latency_ms:g} ms{hint}"
    best = max(eligible, key=lambda c: c.macro_f1)
    tied = [c for c in eligible if c.macro_f1 >= best.macro_f1 - margin]
    pick = min(tied, key=lambda c: (c.total_params, -c.macro_f1, c.run))
    if pick is best and len(tied) == 1:
        why = f"{pick.run} has the best macro-F1 ({pick.macro_f1:.4f})"
    elif pick is best:
        why = f"{pick.run} has the best macro-F1 ({pick.macro_f1:.4f}) and is the smallest of a tie"
    else:
        why = (
            f"{pick.run} ({pick.macro_f1:.4f}) is within {margin:g} of {best.run} "
            f"({best.macro_f1:.4f}) with fewer parameters ({pick.total_params:,} vs "
            f"{best.total_params:,})"
        )
    left_out = len(candidates) - len(eligible)
    if left_out:
        why += f"; {left_out} candidate(s) over the {max_latency_ms:g} ms latency cap"
    return pick.run, why


# ---- the selection ----------------------------------------------------------------------------


def select(
    project: Project,
    recipe: TuneOptions,
    options: SelectOptions,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Selection:
    """Train (or reuse) one run per base with ``recipe``, measure each, choose, and write
    ``DIR/tune/selection/selection.json`` and ``report.html``. ``progress`` gets train's step
    dicts with the ``base`` added."""
    names = _candidate_names(options.bases)
    trained = []
    for base, name in names:
        opts = replace(recipe, base=base, run=name, task="classify")
        step = _tagged(progress, base)
        if options.trials > 0:
            from tune.select_search import search_base

            run_dir, reused, trials = search_base(
                project, opts, options.trials, seed=options.seed, force=options.force, progress=step
            )
        else:
            run_dir, reused = train_base(project, opts, force=options.force, progress=step)
            trials = []
        trained.append((base, run_dir, reused, trials))
    candidates = [
        measure_candidate(base, run_dir, options, reused=reused, trials=trials)
        for base, run_dir, reused, trials in trained
    ]
    chosen, reason = choose(candidates, options.max_latency_ms)
    selection = Selection(
        candidates,
        chosen,
        rule_text(options.max_latency_ms),
        reason,
        time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        _device_name(),
        project.root / "tune" / SELECTION,
    )
    write_selection(selection, options)
    return selection


def _candidate_names(bases: Sequence[str]) -> list[tuple[str, str]]:
    """(base, run name) per base; two bases that would share a run are refused."""
    bases = [b.strip() for b in bases if b and b.strip()]
    if not bases:
        raise ThresherError("--bases is empty; name at least one base, e.g. --bases minilm")
    seen: dict[str, str] = {}
    for base in bases:
        name = run_name(base)
        if name in seen:
            raise ThresherError(
                f"--bases {seen[name]!r} and {base!r} both make the run {name}; list each once"
            )
        seen[name] = base
    return [(base, name) for name, base in seen.items()]


def _tagged(progress, base: str):
    if progress is None:
        return None
    return lambda info: progress({**info, "base": base})


def train_base(
    project: Project, opts: TuneOptions, *, force: bool = False, progress=None
) -> tuple[Path, bool]:
    """Train ``opts.run`` (or reuse it when it finished with the same data and options);
    (run folder, reused)."""
    from tune.train import train

    before = _finished_at(project.root / "tune" / str(opts.run))
    run_dir = train(project, opts, force=force, progress=progress)
    return run_dir, before is not None and before == _finished_at(run_dir)


def _finished_at(run_dir: Path) -> float | None:
    manifest = run_dir / "manifest.json"
    return manifest.stat().st_mtime_ns if manifest.exists() else None


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    import os
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ---- measures ---------------------------------------------------------------------------------


def measure_candidate(
    base: str,
    run_dir: Path,
    options: SelectOptions,
    *,
    reused: bool = False,
    trials: list[dict[str, Any]] | None = None,
) -> Candidate:
    """Test-split quality from the run's predictions, then serving cost (load, time, memory)."""
    quality = test_quality(run_dir, options.n_boot, options.min_slice, options.seed)
    texts = _timing_texts(quality.pop("texts"), options.latency_records)
    if options.isolate:
        serving = _in_fresh_process(str(run_dir), texts, options.latency_passes)
    else:
        serving = measure_serving(str(run_dir), texts, options.latency_passes)
    adapter_mb, base_mb = disk_sizes(run_dir)
    return Candidate(
        base=base,
        run=run_dir.name,
        **quality,
        **serving,
        size_mb=round(adapter_mb + (base_mb or 0.0), 3),
        adapter_mb=adapter_mb,
        base_mb=base_mb,
        reused=reused,
        trials=list(trials or []),
    )


def test_quality(run_dir: Path, n_boot: int, min_slice: int, seed: int = 0) -> dict[str, Any]:
    """macro_f1 with ci_low/ci_high, worst_slice(_f1), ece, val_macro_f1 of a finished run (its
    predictions.parquet), plus the test ``texts``."""
    import numpy as np
    import pandas as pd

    from tune.evaluate import classification_metrics, slice_metrics

    path = run_dir / "predictions.parquet"
    if not path.exists():
        raise ThresherError(f"{path} not found; the run did not finish (rerun with --force)")
    frame = pd.read_parquet(path)
    labels = json.loads((run_dir / "label_map.json").read_text())["labels"]
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    if not len(test):
        raise ThresherError(f"{run_dir} has no test records; raise tune.test_fraction")
    index = {label: i for i, label in enumerate(labels)}
    gold = test["gold"].map(index).to_numpy()
    probs = np.stack(test["probs"].to_numpy()).astype(float)
    metrics = classification_metrics(gold, probs, labels)
    low, high = bootstrap_macro_f1(gold, probs.argmax(axis=1), len(labels), n_boot, seed)
    slices = slice_metrics(gold, probs, [list(s) for s in test["slice"]], labels, min_slice)
    worst, worst_f1 = worst_slice(slices, min_slice)
    val = json.loads((run_dir / "metrics.json").read_text()).get("val", {})
    return {
        "macro_f1": round(float(metrics["macro_f1"]), 4),
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
        "worst_slice": worst,
        "worst_slice_f1": worst_f1,
        "ece": round(float(metrics["ece"]), 4),
        "val_macro_f1": val.get("macro_f1"),
        "texts": [str(t) for t in test["text"]],
    }


def bootstrap_macro_f1(
    gold, pred, n_classes: int, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile ``level`` interval of macro-F1 (higher = better) over records resampled with
    replacement."""
    import numpy as np

    from thresher.metrics import macro_f1

    gold, pred = np.asarray(gold), np.asarray(pred)
    rng = np.random.default_rng(seed)
    scores = np.empty(max(1, n_boot))
    for i in range(len(scores)):
        idx = rng.integers(0, len(gold), len(gold))
        scores[i] = macro_f1(gold[idx], pred[idx], n_classes)
    alpha = (1 - level) / 2
    return float(np.quantile(scores, alpha)), float(np.quantile(scores, 1 - alpha))


def worst_slice(
    slices: dict[str, dict[str, Any]], min_slice: int = MIN_SLICE
) -> tuple[str | None, float | None]:
    """(name, macro-F1) of the slice with the lowest macro-F1 among those with at least
    ``min_slice`` records, ``(none)`` left out; (None, None) when no slice qualifies."""
    sized = {k: v for k, v in slices.items() if k != "(none)" and v["n"] >= min_slice}
    if not sized:
        return None, None
    name = min(sized, key=lambda k: (sized[k]["macro_f1"], k))
    return name, round(float(sized[name]["macro_f1"]), 4)


def _timing_texts(texts: list[str], n: int) -> list[str]:
    """``n`` test texts, cycled when the split is smaller (same texts for every candidate)."""
    return [texts[i % len(texts)] for i in range(max(1, n))]


def _in_fresh_process(run_dir: str, texts: list[str], passes: int) -> dict[str, Any]:
    """``measure_serving`` in a new process: memory measured from a clean start."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from thresher.quiet import configure_worker_output

    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=configure_worker_output) as pool:
        return pool.submit(measure_serving, run_dir, texts, passes).result()


def measure_serving(run_dir: str, texts: list[str], passes: int = 5) -> dict[str, Any]:
    """Load the run, time scoring at batch 1 and 32, and the memory it took; then unload it.
    Latencies: median ms per record over ``passes`` timed passes after a warm-up."""
    from tune.predict import load_run, predict_proba, unload_run

    with PeakMemory() as memory:
        model = load_run(run_dir).model
        total = sum(p.numel() for p in model.parameters())
        b1 = _median_per_record(
            lambda: [predict_proba(run_dir, [t], batch_size=1) for t in texts], len(texts), passes
        )
        b32 = _median_per_record(
            lambda: predict_proba(run_dir, texts, batch_size=32), len(texts), passes
        )
    del model
    unload_run(run_dir)
    _free_memory()
    return {
        "latency_ms": round(b1 * 1000, 3),
        "latency_ms_b32": round(b32 * 1000, 3),
        "records_per_s": round(1 / max(b32, 1e-12), 1),
        "peak_mem_mb": round(memory.peak_mb, 1),
        "trainable_params": trainable_params(Path(run_dir)),
        "total_params": int(total),
    }


def _median_per_record(score: Callable[[], Any], n: int, passes: int) -> float:
    """Seconds per record: the median of ``passes`` timed calls of ``score`` after one warm-up."""
    import statistics

    score()
    times = []
    for _ in range(max(1, passes)):
        t0 = time.perf_counter()
        score()
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Memory a block adds at its peak, in MiB (``peak_mb``): on a GPU, torch's peak CUDA
    allocation; on CPU, the process RSS high-water (psutil, sampled every 5 ms) less the RSS
    when the block began."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s, self.peak_mb = interval_s, 0.0

    def __enter__(self) -> PeakMemory:
        import threading

        import psutil
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        self.process = psutil.Process()
        self.start = self.high = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.high = max(self.high, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            self.peak_mb = torch.cuda.max_memory_allocated() / MIB
            return
        self.stop.set()
        self.thread.join()
        self.high = max(self.high, self.process.memory_info().rss)
        self.peak_mb = (self.high - self.start) / MIB


def trainable_params(run_dir: Path) -> int:
    """Parameters the run trained: every tensor in its adapter (LoRA weights and the head)."""
    from safetensors import safe_open

    from tune.modeling import adapter_weights

    total = 0
    with safe_open(str(adapter_weights(run_dir)), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a mapping)
            n = 1
            for dim in fh.get_slice(key).get_shape():
                n *= dim
            total += n
    return total


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


def disk_sizes(run_dir: Path) -> tuple[float, float | None]:
    """(adapter folder MiB, base weights MiB or None for a hub id not on disk here). A GGUF base
    counts its one file; a folder its weight files (``WEIGHT_PATTERNS``)."""
    from tune.runtime import read_run_config

    adapter = sum(p.stat().st_size for p in (run_dir / "adapter").rglob("*") if p.is_file())
    base = read_run_config(run_dir)["base"]
    folder = Path(base["path"])
    if base.get("gguf_file"):
        files = [folder / base["gguf_file"]]
    elif folder.is_dir():
        files = [p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)]
    else:
        files = []
    files = [p for p in files if p.is_file()]
    base_mb = round(sum(p.stat().st_size for p in files) / MIB, 3) if files else None
    return round(adapter / MIB, 3), base_mb


# ---- outputs ----------------------------------------------------------------------------------


def write_selection(selection: Selection, options: SelectOptions) -> None:
    """``selection.json`` (candidates, rule, chosen run, time, options) and ``report.html`` in
    ``DIR/tune/selection/`` (0700), each written atomically."""
    from tune.select_report import render_selection

    selection.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {**selection.to_dict(), "options": asdict(options)}
    record["options"]["bases"] = list(options.bases)
    atomic_write_json(selection.path / "selection.json", record)
    atomic_write_text(selection.path / "report.html", render_selection(selection))


def read_selection(project: Project) -> dict[str, Any]:
    """The last ``selection.json`` of the project."""
    path = project.root / "tune" / SELECTION / "selection.json"
    if not path.exists():
        raise ThresherError(f"{path} not found; run `thresher tune select --bases A,B` first")
    return json.loads(path.read_text())
