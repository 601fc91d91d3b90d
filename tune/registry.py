"""The production registry: which run serves, and how it got there (``DIR/tune/registry.json``).

``{"production": RUN | null, "history": [entry, ...]}``, oldest entry first. An entry says who
promoted which run when, with its test metrics, a fingerprint of its training data, its base
model, the run it replaced and the comparison with it (``tune/promote.py`` writes entries).

``production`` is a reserved run name: ``tune.evaluate.find_run(tune_dir, "production")`` and so
``--run production`` / ``--against production`` resolve through ``production_run``. This module
reads and writes the file only; it imports no other ``tune`` module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError

PRODUCTION = "production"
# names that --run/--against resolve to something other than DIR/tune/<name>/
RESERVED_RUN_NAMES = frozenset({PRODUCTION, "baseline"})
REGISTRY_FILE = "registry.json"


def registry_file(tune_dir: str | Path) -> Path:
    """``DIR/tune/registry.json`` for the project's ``DIR/tune`` folder
    (the same path as ``Project.registry_path``)."""
    return Path(tune_dir) / REGISTRY_FILE


def read_registry(tune_dir: str | Path) -> dict[str, Any]:
    """The registry, or an empty one (``production`` None, no history) when nothing was promoted."""
    path = registry_file(tune_dir)
    if not path.exists():
        return {"production": None, "history": []}
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ThresherError(
            f"{path} is not readable JSON ({err}); restore it or promote again with "
            "`thresher tune promote -p DIR --run RUN --force`"
        ) from err
    if not isinstance(registry, dict):
        raise ThresherError(f"{path} is not a registry (a JSON object); restore it")
    registry.setdefault("production", None)
    registry.setdefault("history", [])
    return registry


def production_name(tune_dir: str | Path) -> str | None:
    """The name of the production run, or None when nothing was promoted."""
    return read_registry(tune_dir).get("production")


def production_run(tune_dir: str | Path) -> Path:
    """The folder of the production run, or a one-line error saying how to promote one."""
    tune_dir = Path(tune_dir)
    name = production_name(tune_dir)
    project_dir = tune_dir.parent
    if not name:
        raise ThresherError(
            f"no production model; run `thresher tune promote -p {project_dir} --run RUN`"
        )
    path = tune_dir / name
    if not (path / "config.json").is_file():
        raise ThresherError(
            f"the production run {name!r} ({registry_file(tune_dir)}) is gone from {tune_dir}; "
            f"promote another: `thresher tune promote -p {project_dir} --run RUN --force`"
        )
    return path


def write_registry(tune_dir: str | Path, registry: dict[str, Any]) -> Path:
    """Replace the registry file atomically; its path."""
    from thresher.project import atomic_write_json

    path = registry_file(tune_dir)
    atomic_write_json(path, registry)
    return path
