"""Promotion: make a finished run the production model, unless it is worse than the one serving.

The run is compared with the current production run on the test records both scored
(``tune.evaluate.evaluate_run``: a paired bootstrap CI of the difference). A classifier is
significantly worse when the CI of its macro-F1 difference (higher = better) lies wholly below
0; a run on instruction/response pairs when the CI of its answer-loss difference (nats/token,
lower = better) lies wholly above 0. A significantly worse run is refused unless forced. The
registry (``tune/registry.py``) records each promotion with who, when, the metrics, a
fingerprint of the training data and the comparison.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError
from thresher.project import Project, file_sha256
from tune.registry import production_name, read_registry, write_registry
from tune.runtime import read_run_config, trained_on_pairs


class PromotionRefused(ThresherError):
    """The run is significantly worse than the production model (or cannot be compared)."""


@dataclass(frozen=True)
class PromoteResult:
    """What ``promote`` did: ``promoted`` False with ``noop`` True when the run already serves."""

    run: str
    previous: str | None
    promoted: bool
    noop: bool
    forced: bool
    metrics: dict[str, Any]
    comparison: dict[str, Any] | None
    registry: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promote(
    project: Project, run_dir: str | Path, force: bool = False, n_boot: int = 1000
) -> PromoteResult:
    """Make ``run_dir`` (a finished run under ``DIR/tune``) the production model.

    Refuses (``PromotionRefused``) a run significantly worse than the current production run,
    or one that cannot be compared with it, unless ``force``. The first promotion needs no
    comparison; promoting the production run again changes nothing (``noop``)."""
    tune_dir = project.root / "tune"
    run_dir = _run_under(tune_dir, Path(run_dir))
    registry = read_registry(tune_dir)
    previous = production_name(tune_dir)
    metrics = run_metrics(run_dir)
    if previous == run_dir.name:
        return PromoteResult(
            run_dir.name, previous, False, True, force, metrics, None, str(project.registry_path)
        )
    comparison = None
    if previous is not None and (tune_dir / previous / "config.json").is_file():
        comparison = compare_with_production(run_dir, tune_dir / previous, force, n_boot)
        if comparison.get("significantly_worse") and not force:
            raise PromotionRefused(_refusal(project, run_dir.name, previous, comparison))
    entry = {
        "run": run_dir.name,
        "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "by": _user(),
        "metrics": metrics,
        "data_fingerprint": _data_fingerprint(run_dir),
        "base": read_run_config(run_dir).get("base"),
        "previous": previous,
        "forced": bool(force),
        "comparison": comparison,
    }
    registry["production"] = run_dir.name
    registry["history"] = [*registry["history"], entry]
    path = write_registry(tune_dir, registry)
    return PromoteResult(run_dir.name, previous, True, False, force, metrics, comparison, str(path))


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's test metrics from ``metrics.json``: macro_f1, accuracy, n (classifier) or
    loss, perplexity, n (pairs)."""
    path = run_dir / "metrics.json"
    if not path.exists():
        raise ThresherError(
            f"{path} not found; the run did not finish (rerun `thresher tune train`)"
        )
    test = json.loads(path.read_text()).get("test", {})
    keys = ("loss", "perplexity", "n") if "loss" in test else ("macro_f1", "accuracy", "n")
    return {k: test.get(k) for k in keys}


def compare_with_production(
    run_dir: Path, production_dir: Path, force: bool, n_boot: int = 1000
) -> dict[str, Any]:
    """The bootstrap comparison of ``run_dir`` with the production run: ``against``, ``metric``
    (macro_f1: higher = better; loss: lower = better), ``diff`` (run − production), ``ci_low``,
    ``ci_high``, ``n_shared``, ``significantly_worse``. Runs that cannot be compared (a classifier
    and a pairs run, other labels, no shared test records) raise ``PromotionRefused``, or with
    ``force`` give ``{"against", "error"}``."""
    from tune.evaluate import evaluate_run

    try:
        if _is_pairs(run_dir) != _is_pairs(production_dir):
            raise ThresherError(
                f"{run_dir.name} and {production_dir.name} are not the same kind of run "
                "(a classifier and an instruction/response run)"
            )
        result = evaluate_run(run_dir, against=str(production_dir), n_boot=n_boot)
    except ThresherError as err:
        if force:
            return {"against": production_dir.name, "error": str(err)}
        raise PromotionRefused(
            f"cannot compare {run_dir.name} with production {production_dir.name}: {err}; "
            "promote anyway with --force"
        ) from err
    cmp = result["comparison"]
    pairs = "loss" in result
    worse = cmp["ci_low"] > 0 if pairs else cmp["ci_high"] < 0
    return {
        "against": production_dir.name,
        "metric": "loss" if pairs else "macro_f1",
        "diff": cmp["diff"],
        "ci_low": cmp["ci_low"],
        "ci_high": cmp["ci_high"],
        "n_shared": cmp.get("n_shared"),
        "significantly_worse": bool(worse),
    }


def _refusal(project: Project, run: str, previous: str, cmp: dict[str, Any]) -> str:
    what = (
        "answer loss (lower is better)"
        if cmp["metric"] == "loss"
        else "macro-F1 (higher is better)"
    )
    return (
        f"refused: {run} is significantly worse than production {previous}: {what} difference "
        f"{cmp['diff']:+.4f} (95% CI {cmp['ci_low']:+.4f} .. {cmp['ci_high']:+.4f}, "
        f"n={cmp['n_shared']}); promote anyway with "
        f"`thresher tune promote -p {project.root} --run {run} --force`"
    )


def _run_under(tune_dir: Path, run_dir: Path) -> Path:
    """``run_dir`` when it is a finished run directly under ``tune_dir`` (the registry names
    runs by folder name), else a one-line error."""
    if not (run_dir / "config.json").is_file():
        raise ThresherError(f"{run_dir} is not a finished run; run `thresher tune train` first")
    if run_dir.resolve().parent != tune_dir.resolve():
        raise ThresherError(
            f"{run_dir} is not a run of this project (under {tune_dir}); only the project's "
            "own runs can be promoted"
        )
    return tune_dir / run_dir.name


def _is_pairs(run_dir: Path) -> bool:
    return trained_on_pairs(read_run_config(run_dir))


def _data_fingerprint(run_dir: Path) -> str | None:
    """sha256 of the run's training data (``train_data.parquet``), None when it is missing."""
    path = run_dir / "train_data.parquet"
    return file_sha256(path) if path.exists() else None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (e.g. a container user without passwd entry)
        return "unknown"
