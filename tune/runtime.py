"""What training, evaluation and prediction share about where and how a model runs: the device,
the mixed-precision dtype, and a finished run's ``config.json``.

A leaf of the ``tune`` package (it imports no other ``tune`` module but ``distributed``), so the
recipe, the scorers and the predictor can all use it without importing each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError
from tune.distributed import Dist


def training_device(d: Dist):
    """This rank's device: its local GPU (made current) when CUDA is available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def default_device(name: str | None = None):
    """``name`` as a torch device, or the GPU when CUDA is available, else the CPU."""
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def amp_dtype(precision: str, device):
    """Autocast dtype: bf16 where the GPU supports it, else fp16; none (fp32) on CPU."""
    import torch

    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A finished run's ``config.json`` (run, task, base, labels, options)."""
    path = run_dir / "config.json"
    if not path.exists():
        raise ThresherError(f"{path} not found; is {run_dir} a finished `thresher tune train` run?")
    return json.loads(path.read_text())


def trained_on_pairs(config: dict[str, Any]) -> bool:
    """Whether a run's config says it trained on instruction/response pairs (no classes)."""
    return bool(config.get("options", {}).get("data", {}).get("response_column"))
