"""A training run's checkpoint in ``DIR/tune/.work/<run>/``: what ``resume=True`` continues from.

One file per run (under FSDP one per rank: each holds its shard). It holds tensors and plain
containers only, with the step counters and the Python/numpy RNG states as JSON text, so it is
read with ``weights_only=True``: a file that would need code to load is refused, never run.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError
from thresher.project import atomic_output
from tune.distributed import Dist

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # 2: tensors + JSON text, read with weights_only=True


@dataclass
class State:
    """Everything a resumed run needs besides the weights and optimizer."""

    step: int = 0
    epoch: int = 0
    best_f1: float = -1.0
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    tokens: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)


def checkpoint_path(work: Path, d: Dist) -> Path:
    """One checkpoint per run; under FSDP one per rank (each holds its shard)."""
    return work / (f"checkpoint-rank{d.rank}-of-{d.world}.pt" if d.fsdp else CHECKPOINT)


def save_checkpoint(path: Path, trained: dict[str, Any], state: State, best: Any) -> None:
    """Write ``trained`` (the ``weights``, ``optim``, ``sched`` and ``scaler`` state dicts),
    ``state``, the best evaluation's weights and every RNG state to ``path`` atomically."""
    import numpy as np
    import torch

    numpy_rng = np.random.get_state()
    meta = {
        "state": state.__dict__,
        "rng_python": random.getstate(),
        "rng_numpy": [numpy_rng[0], numpy_rng[1].tolist(), *numpy_rng[2:]],
    }
    blob = {
        "format": CHECKPOINT_FORMAT,
        **trained,
        "best": best,
        "meta": json.dumps(meta, default=float),
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_output(path) as tmp:
        torch.save(blob, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by ``save_checkpoint``, loaded with ``weights_only=True``: a file
    that would need code to load (any other pickle) is refused with a one-line error, never run.
    ``meta`` comes back decoded (``state``, ``rng_python``, ``rng_numpy``)."""
    import pickle

    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ThresherError(
            f"{path} is not a checkpoint thresher can load safely (only tensors and plain data "
            f"are read, never code); remove {path.parent} and train without --resume"
        ) from err
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ThresherError(
            f"{path} was written by another thresher version; remove {path.parent} and train "
            "without --resume"
        )
    return {**blob, "meta": json.loads(blob["meta"])}


def restore_rng(blob: dict[str, Any]) -> State:
    """Set the Python, numpy, torch (and CUDA) RNGs to a read checkpoint's; return its state."""
    import numpy as np
    import torch

    meta = blob["meta"]
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(meta["rng_numpy"]))
    torch.set_rng_state(blob["rng_torch"])
    if blob["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng_cuda"])
    return State(**meta["state"])
