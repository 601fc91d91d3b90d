"""Simulated active learning: an oracle annotator instead of people, learning curves, AULC.

For every strategy and seed: label a random seed set, then ``rounds`` times train → evaluate on
a fixed test split → predict the unlabelled pool → select ``size`` rows → the oracle labels them.
The oracle answers with the data's gold label, or (with probability ``noise``) a different label
drawn uniformly, the same answers for every strategy of a seed (paired comparison). The pieces
(``Learner.fit/predict_proba``, strategies, ``thresher.metrics``) are those ``thresher round``
uses.

Metric: macro-F1 on the test split (high = better). AULC: the area under the macro-F1 vs
number-of-labels curve divided by the x-range, i.e. the curve's mean height, in [0, 1] (high =
better). ``labels_to_target``: the fewest labels at which the mean curve reaches
``target`` × the macro-F1 of the same learner trained on the whole pool with gold labels.
``labels_per_f1_point``: the cost of the rounds, labels added per macro-F1 percentage point
gained from the seed set to the last round on the mean curve (low = cheaper; None when the curve
did not rise). ``vs_random``: each strategy's AULC minus random's, paired by seed (the same seed
set, oracle answers and test split), with the seeds won and the standard error of the gain.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from loop.errors import SimulationError
from loop.learners import Learner, make_learner
from loop.stopping import RULES, StoppingOptions, cohen_kappa, stop_points
from loop.strategies import Diverse, coverage_pick, get_strategy
from thresher.metrics import probs_macro_f1
from thresher.records import representative_mask

log = logging.getLogger(__name__)

STAGE = "simulate"
LearnerFactory = Callable[[Sequence[str], Sequence[str]], Learner]


@dataclass(frozen=True)
class SimulateOptions:
    """What a simulation needs (resolved from config + flags by the caller)."""

    rounds: int = 10
    size: int = 50
    seed_size: int | None = None  # None: same as size
    strategies: tuple[str, ...] = ("margin", "entropy", "random")
    seeds: int = 3
    seed: int = 0
    noise: float = 0.0
    test_fraction: float = 0.2
    learner: str = "fast"
    embedding_model: str = "default"
    target: float = 0.95
    diversity_factor: int = 10
    stopping: StoppingOptions = field(default_factory=StoppingOptions)
    # the seed set of every strategy but random: "random" (the same random draw as random's)
    # or "coverage" (the pool records k-means finds central, as a round without labels picks)
    cold_start: str = "random"

    def validate(self, n_rows: int) -> None:
        if self.rounds < 1 or self.size < 1 or self.seeds < 1:
            raise SimulationError("--rounds, --size and --seeds must be at least 1")
        if not 0.0 <= self.noise < 1.0:
            raise SimulationError(f"--noise must be in [0, 1), got {self.noise}")
        if not 0.0 < self.test_fraction < 1.0:
            raise SimulationError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not self.strategies:
            raise SimulationError("give at least one strategy, e.g. --strategies margin,random")
        if self.cold_start not in ("random", "coverage"):
            raise SimulationError(f"cold_start must be random or coverage, got {self.cold_start!r}")
        pool = n_rows - max(1, round(n_rows * self.test_fraction))
        need = (self.seed_size or self.size) + self.rounds * self.size
        if need > pool:
            raise SimulationError(
                f"the seed set plus {self.rounds} rounds of {self.size} need {need} labelled rows "
                f"but the pool has {pool}; lower --rounds or --size"
            )


@dataclass(frozen=True)
class CurvePoint:
    """One point of a learning curve (macro-F1 and accuracy: high = better). ``kappa``: Cohen's
    kappa of this round's predictions on the stop set against the previous round's (None in
    round 0); ``stop_confidence``: the mean top-1 probability there (``loop.stopping``)."""

    strategy: str
    seed: int
    round: int
    n_labels: int
    macro_f1: float
    accuracy: float
    kappa: float | None = None
    stop_confidence: float | None = None


@dataclass
class SimulationResult:
    """Curves and their summary (``to_dict`` is what ``--json`` prints)."""

    curves: list[CurvePoint]
    aulc: dict[str, float]
    aulc_std: dict[str, float]
    aulc_per_seed: dict[str, list[float]]
    full_macro_f1: float
    labels_to_target: dict[str, int | None]
    classes: tuple[str, ...]
    pool_size: int
    test_size: int
    options: SimulateOptions
    stopping: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels_per_f1_point: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    path: str | None = None
    noop: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def best_vs_random(self) -> dict[str, Any] | None:
        """The best non-random strategy by mean AULC, and its gain over random (paired seeds)."""
        others = {k: v for k, v in self.aulc.items() if k != "random"}
        if "random" not in self.aulc or not others:
            return None
        best = max(others, key=others.get)
        pairs = zip(self.aulc_per_seed[best], self.aulc_per_seed["random"], strict=True)
        wins = sum(b > r for b, r in pairs)
        return {
            "strategy": best,
            "aulc": self.aulc[best],
            "random_aulc": self.aulc["random"],
            "gain": round(self.aulc[best] - self.aulc["random"], 6),
            "seeds_won": wins,
            "seeds": len(self.aulc_per_seed[best]),
        }

    def vs_random(self) -> dict[str, dict[str, Any]]:
        """Per strategy: AULC gain over random paired by seed (mean of the per-seed
        differences), seeds won, and the gain's standard error over seeds (0 for one seed)."""
        if "random" not in self.aulc_per_seed:
            return {}
        base = np.asarray(self.aulc_per_seed["random"])
        out = {}
        for name, values in self.aulc_per_seed.items():
            if name == "random":
                continue
            diff = np.asarray(values) - base
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
            out[name] = {
                "gain": round(float(diff.mean()), 6),
                "gain_se": round(se, 6),
                "seeds_won": int((diff > 0).sum()),
                "seeds": len(diff),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "aulc": self.aulc,
            "aulc_std": self.aulc_std,
            "aulc_per_seed": self.aulc_per_seed,
            "vs_random": self.vs_random(),
            "full_macro_f1": self.full_macro_f1,
            "labels_to_target": self.labels_to_target,
            "labels_per_f1_point": self.labels_per_f1_point,
            "target": self.options.target,
            "stopping": self.stopping,
            "best_vs_random": self.best_vs_random(),
            "classes": list(self.classes),
            "pool_size": self.pool_size,
            "test_size": self.test_size,
            "options": {**asdict(self.options), "strategies": list(self.options.strategies)},
            "seconds": round(self.seconds, 3),
            "path": self.path,
            "noop": self.noop,
        }


def aulc(n_labels: Sequence[float], scores: Sequence[float]) -> float:
    """Area under the learning curve divided by its x-range (the mean height; high = better)."""
    x = np.asarray(n_labels, dtype=np.float64)
    y = np.asarray(scores, dtype=np.float64)
    if len(x) == 1 or x[-1] == x[0]:
        return float(y.mean())
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    return float(trapezoid(y, x) / (x[-1] - x[0]))


def oracle_labels(y: np.ndarray, k: int, noise: float, seed: int) -> np.ndarray:
    """Gold labels with a fraction ``noise`` replaced by a different class, uniformly."""
    rng = np.random.default_rng(seed)
    out = y.copy()
    flip = rng.random(len(y)) < noise
    shift = rng.integers(1, k, size=len(y))  # never 0: a flipped label always changes
    out[flip] = (y[flip] + shift[flip]) % k
    return out


def split_test(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool positions, test positions): the project's split rule (``thresher.split``) over
    positions, stratified by gold label when every class has two rows."""
    from thresher.split import stratified_split

    pool, test = stratified_split(np.arange(len(y)).tolist(), y.tolist(), fraction, seed)
    return np.sort(np.asarray(pool, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


def _run_seed(
    strategy_name: str,
    learner: Learner,
    texts: np.ndarray,
    oracle: np.ndarray,
    y_test: np.ndarray,
    test_texts: list[str],
    seed_set: np.ndarray,
    pool: np.ndarray,
    opts: SimulateOptions,
    seed: int,
    classes: tuple[str, ...],
    stop_texts: list[str],
) -> list[CurvePoint]:
    strategy = get_strategy(strategy_name, factor=opts.diversity_factor)
    needs_embeddings = isinstance(strategy, Diverse)
    labeled = list(seed_set)
    in_labeled = np.zeros(len(texts), dtype=bool)
    in_labeled[seed_set] = True
    points = []
    previous = None
    for r in range(opts.rounds + 1):
        lab = np.asarray(labeled)
        learner.fit(texts[lab].tolist(), [classes[i] for i in oracle[lab]])
        f1, acc = probs_macro_f1(y_test, learner.predict_proba(test_texts))
        stop_probs = learner.predict_proba(stop_texts)
        answers = stop_probs.argmax(axis=1)
        kappa = None if previous is None else round(cohen_kappa(previous, answers), 6)
        previous = answers
        confidence = round(float(stop_probs.max(axis=1).mean()), 6)
        points.append(CurvePoint(strategy_name, seed, r, len(lab), f1, acc, kappa, confidence))
        if r == opts.rounds:
            break
        unl = pool[~in_labeled[pool]]
        unl_texts = texts[unl].tolist()
        probs = learner.predict_proba(unl_texts)
        emb = lab_emb = None
        if needs_embeddings:
            emb = learner.embed(unl_texts)
            lab_emb = learner.embed(texts[lab].tolist())
        picked = unl[
            strategy(
                probs,
                opts.size,
                embeddings=emb,
                labeled_embeddings=lab_emb,
                seed=seed * 100_003 + r,
            )
        ]
        labeled.extend(picked.tolist())
        in_labeled[picked] = True
    return points


def simulate(
    texts: Sequence[str],
    labels: Sequence[str],
    opts: SimulateOptions,
    *,
    learner: Learner | None = None,
    cache_dir=None,
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Run every strategy × seed on in-memory data; pure apart from the embedding cache."""
    t0 = time.perf_counter()
    opts.validate(len(texts))
    classes = tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise SimulationError(f"need at least 2 labels to simulate, found {list(classes)}")
    for name in opts.strategies:
        get_strategy(name)  # fail fast on a typo, before any training
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[lab] for lab in labels], dtype=np.int64)
    text_arr = np.asarray(texts, dtype=object)
    pool, test = split_test(y, opts.test_fraction, opts.seed)
    if learner is None:
        learner = make_learner(
            opts.learner,
            classes,
            pool_texts=text_arr[pool].tolist(),
            embedding_model=opts.embedding_model,
            cache_dir=cache_dir,
            seed=opts.seed,
        )
    test_texts = text_arr[test].tolist()
    learner.fit(text_arr[pool].tolist(), [classes[i] for i in y[pool]])
    full_f1, _ = probs_macro_f1(y[test], learner.predict_proba(test_texts))
    log.info("simulate: pool %d, test %d, full-data macro-F1 %.4f", len(pool), len(test), full_f1)

    curves: list[CurvePoint] = []
    for s in range(opts.seeds):
        seed = opts.seed + s
        rng = np.random.default_rng([opts.seed, s])
        seed_set = np.sort(rng.choice(pool, size=opts.seed_size or opts.size, replace=False))
        oracle = oracle_labels(y, len(classes), opts.noise, seed=opts.seed * 7919 + s)
        # the stop set: pool records drawn once per seed, the same for every strategy
        stop = rng.choice(pool, size=min(opts.stopping.stop_set, len(pool)), replace=False)
        stop_texts = text_arr[np.sort(stop)].tolist()
        covering = None
        if opts.cold_start == "coverage" and any(n != "random" for n in opts.strategies):
            vectors = learner.embed(text_arr[pool].tolist())
            size = opts.seed_size or opts.size
            covering = np.sort(pool[coverage_pick(vectors, size, seed=opts.seed * 7919 + s)])
        for name in opts.strategies:
            curves += _run_seed(
                name,
                learner,
                text_arr,
                oracle,
                y[test],
                test_texts,
                seed_set if covering is None or name == "random" else covering,
                pool,
                opts,
                seed,
                classes,
                stop_texts,
            )
            if progress is not None:
                progress(1)
    return summarize(curves, full_f1, classes, len(pool), len(test), opts, time.perf_counter() - t0)


def summarize(
    curves: list[CurvePoint],
    full_f1: float,
    classes: tuple[str, ...],
    pool_size: int,
    test_size: int,
    opts: SimulateOptions,
    seconds: float,
) -> SimulationResult:
    """AULC mean/std over seeds, and labels needed to reach ``target`` × full-data macro-F1."""
    per_seed: dict[str, list[float]] = {}
    to_target: dict[str, int | None] = {}
    per_point: dict[str, float | None] = {}
    stopping: dict[str, dict[str, Any]] = {}
    for name in opts.strategies:
        runs: dict[int, list[CurvePoint]] = {}
        for p in curves:
            if p.strategy == name:
                runs.setdefault(p.seed, []).append(p)
        per_seed[name] = [
            round(aulc([p.n_labels for p in pts], [p.macro_f1 for p in pts]), 6)
            for _, pts in sorted(runs.items())
        ]
        mean_curve = np.mean([[p.macro_f1 for p in pts] for pts in runs.values()], axis=0)
        xs = [p.n_labels for p in next(iter(runs.values()))]
        hit = np.flatnonzero(mean_curve >= opts.target * full_f1)
        to_target[name] = int(xs[hit[0]]) if hit.size else None
        per_point[name] = labels_per_point(xs, mean_curve)
        stopping[name] = stopping_summary(list(runs.values()), full_f1, pool_size, opts.stopping)
    ddof = 1 if opts.seeds > 1 else 0
    return SimulationResult(
        curves=curves,
        aulc={k: round(float(np.mean(v)), 6) for k, v in per_seed.items()},
        aulc_std={k: round(float(np.std(v, ddof=ddof)), 6) for k, v in per_seed.items()},
        aulc_per_seed=per_seed,
        full_macro_f1=round(full_f1, 6),
        labels_to_target=to_target,
        classes=classes,
        stopping=stopping,
        labels_per_f1_point=per_point,
        pool_size=pool_size,
        test_size=test_size,
        options=opts,
        seconds=seconds,
    )


def labels_per_point(n_labels: Sequence[float], macro_f1: Sequence[float]) -> float | None:
    """Labels added per macro-F1 percentage point gained, first point of the curve to the last
    (low = cheaper); None when the curve did not rise."""
    gain = 100.0 * (float(macro_f1[-1]) - float(macro_f1[0]))
    if len(n_labels) < 2 or gain <= 0.0:
        return None
    return round((float(n_labels[-1]) - float(n_labels[0])) / gain, 2)


def stopping_summary(
    runs: Sequence[Sequence[CurvePoint]], full_f1: float, pool_size: int, opts: StoppingOptions
) -> dict[str, Any]:
    """Where each stopping rule (and the recommendation) stops, over the seeds' curves: the
    mean round and labels at the stop, the labels saved against labelling the whole pool, and
    the macro-F1 given up against the full-data model (high = costly); ``stopped`` counts the
    seeds whose curve met the rule. A seed that never meets it counts at its last round."""
    out: dict[str, Any] = {}
    points = [
        stop_points(
            [p.kappa for p in pts],
            [p.stop_confidence for p in pts],
            [p.n_labels for p in pts],
            opts,
        )
        for pts in runs
    ]
    for rule in (*RULES, "recommended"):
        at = [pp[rule] for pp in points]
        where = [len(pts) - 1 if a is None else a for a, pts in zip(at, runs, strict=True)]
        labels = [runs[i][w].n_labels for i, w in enumerate(where)]
        f1 = [runs[i][w].macro_f1 for i, w in enumerate(where)]
        out[rule] = {
            "stopped": sum(a is not None for a in at),
            "seeds": len(at),
            "round": round(float(np.mean(where)), 3),
            "labels": round(float(np.mean(labels)), 1),
            "labels_saved": round(float(pool_size - np.mean(labels)), 1),
            "macro_f1": round(float(np.mean(f1)), 6),
            "macro_f1_given_up": round(float(full_f1 - np.mean(f1)), 6),
        }
    return out


def curves_csv(curves: Sequence[CurvePoint]) -> str:
    """The curves as CSV text: strategy, seed, round, n_labels, macro_f1, accuracy, kappa,
    stop_confidence (the last two empty where not measured)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        [
            "strategy",
            "seed",
            "round",
            "n_labels",
            "macro_f1",
            "accuracy",
            "kappa",
            "stop_confidence",
        ]
    )
    for p in curves:
        writer.writerow(
            [
                p.strategy,
                p.seed,
                p.round,
                p.n_labels,
                f"{p.macro_f1:.6f}",
                f"{p.accuracy:.6f}",
                "" if p.kappa is None else f"{p.kappa:.6f}",
                "" if p.stop_confidence is None else f"{p.stop_confidence:.6f}",
            ]
        )
    return buf.getvalue()


def plot_curves(result: SimulationResult, path, title: str = "") -> None:
    """Mean macro-F1 vs labels per strategy (band: ± 1 std over seeds) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name in result.options.strategies:
        runs: dict[int, list[CurvePoint]] = {}
        for p in result.curves:
            if p.strategy == name:
                runs.setdefault(p.seed, []).append(p)
        ys = np.array([[p.macro_f1 for p in pts] for pts in runs.values()])
        xs = [p.n_labels for p in next(iter(runs.values()))]
        mean, std = ys.mean(axis=0), ys.std(axis=0)
        label = f"{name} (AULC {result.aulc[name]:.3f} ± {result.aulc_std[name]:.3f})"
        ax.plot(xs, mean, marker="o", markersize=3, label=label)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.15)
    full = result.full_macro_f1
    ax.axhline(full, color="black", linewidth=0.8, label=f"all {result.pool_size} labels")
    ax.axhline(
        result.options.target * full,
        color="gray",
        linestyle="--",
        linewidth=0.8,
        label=f"{result.options.target:.0%} of that",
    )
    ax.set_xlabel("labelled records")
    ax.set_ylabel("macro-F1 on the test split")
    ax.set_title(title or f"learning curves ({result.options.seeds} seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def load_labelled_records(project) -> tuple[str, Any]:
    """The most curated labelled records: score > dedup > ingest, representatives only."""
    import pandas as pd

    stage, path = project.latest_records(["score", "dedup", "ingest"])
    frame = pd.read_parquet(path)
    frame = frame[representative_mask(frame)]
    frame = frame[frame["label"].notna()]
    return stage, frame.reset_index(drop=True)


def run_simulation(
    project,
    opts: SimulateOptions,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """The ``simulate`` stage: read the project's labelled records, write ``DIR/simulate/``
    (curves.csv, summary.json, learning_curves.png, manifest.json). Unchanged inputs: no-op."""
    import json

    from thresher.project import fingerprint, stage_output, upstream_input

    stage, frame = load_labelled_records(project)
    inp = upstream_input(project, stage)
    options = {**asdict(opts), "strategies": list(opts.strategies)}
    fp = fingerprint({"input": inp["sha256"], "options": options})
    summary_path = project.stage_dir(STAGE) / "summary.json"
    if not force and project.is_fresh(STAGE, fp) and summary_path.exists():
        data = json.loads(summary_path.read_text(encoding="utf-8"))
        result = _result_from_summary(data, opts)
        result.path, result.noop = str(project.stage_dir(STAGE)), True
        return result
    if len(frame) < 10:
        raise SimulationError(
            f"{inp['path']} has {len(frame)} labelled records; the simulator needs gold labels "
            "(ingest a labelled file)"
        )
    cache = project.embedding_cache
    result = simulate(
        frame["text"].tolist(),
        frame["label"].astype(str).tolist(),
        opts,
        cache_dir=cache,
        progress=progress,
    )
    with stage_output(
        project, STAGE, fp, inputs=[inp], config=options, packages=("scikit-learn", "numpy")
    ) as run:
        run.path("curves.csv").write_text(curves_csv(result.curves), encoding="utf-8")
        plot_curves(result, run.path("learning_curves.png"))
        result.path = str(project.stage_dir(STAGE))
        run.path("summary.json").write_text(
            json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        run.counts = {"records": len(frame), "pool": result.pool_size, "test": result.test_size}
        run.timings["simulate"] = round(result.seconds, 4)
        run.extra["seed"] = opts.seed
    return result


def _result_from_summary(data: dict[str, Any], opts: SimulateOptions) -> SimulationResult:
    return SimulationResult(
        curves=[],
        aulc=data["aulc"],
        aulc_std=data["aulc_std"],
        aulc_per_seed=data["aulc_per_seed"],
        full_macro_f1=data["full_macro_f1"],
        labels_to_target=data["labels_to_target"],
        classes=tuple(data["classes"]),
        stopping=data.get("stopping", {}),
        labels_per_f1_point=data.get("labels_per_f1_point", {}),
        pool_size=data["pool_size"],
        test_size=data["test_size"],
        options=opts,
        seconds=data.get("seconds", 0.0),
    )
