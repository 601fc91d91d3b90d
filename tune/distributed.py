"""Training in several processes: DDP (every rank holds the whole model) or FSDP (every rank holds
a shard of each parameter, for models that do not fit one device).

The same command runs under ``torchrun``/``accelerate launch``; ``tune.strategy`` picks the
wrapper. Under FSDP every rank takes part in evaluation and in saving (the forward pass gathers
shards), each rank checkpoints its own shard and optimizer state, and the adapter is saved from
the gathered (full) LoRA weights. With one process both strategies are plain training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("ddp", "fsdp")


@dataclass
class Dist:
    """Process-group facts: rank 0 writes; world 1 = one process; ``fsdp``: parameters sharded."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    fsdp: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def evaluates(self) -> bool:
        """Whether this rank runs evaluation forwards (all ranks under FSDP, else rank 0)."""
        return self.main or self.fsdp


def init_distributed(strategy: str = "ddp") -> Dist:
    import torch
    import torch.distributed as dist

    if strategy not in STRATEGIES:
        from thresher.errors import ConfigError

        raise ConfigError(f"unknown tune.strategy {strategy!r}; use ddp or fsdp")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", "0")),
        fsdp=strategy == "fsdp",
    )


def shard_model(model, blocks, device, amp) -> None:
    """FSDP2 ``fully_shard`` on each transformer block, then on the root. On GPU the fp32 shards
    are gathered in ``amp`` precision for compute and gradients are reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {}
    if device.type == "cuda" and amp is not None:
        import torch

        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)


def wrap_ddp(model, d: Dist, device):
    if d.world == 1 or d.fsdp:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def trainable_state(model, full: bool = True) -> dict[str, Any]:
    """The trainable weights on the CPU. ``full``: whole tensors (gathered from the shards under
    FSDP, so every rank must call it); else this rank's local shard."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        t = p.detach()
        if _is_dtensor(t):
            t = t.full_tensor() if full else t.to_local()
        out[name] = t.cpu().clone()
    return out


def load_trainable(model, weights: dict[str, Any], full: bool = True) -> None:
    """Inverse of ``trainable_state`` (full tensors are re-sharded under FSDP)."""
    from torch.distributed.tensor import distribute_tensor

    params = dict(model.named_parameters())
    for name, value in weights.items():
        p = params[name]
        if _is_dtensor(p):
            if full:
                sharded = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
                p.data.to_local().copy_(sharded.to_local())
            else:
                p.data.to_local().copy_(value.to(p.device))
        else:
            p.data.copy_(value.to(p.device))


def optimizer_state(optim) -> dict[str, Any]:
    """``optim.state_dict()`` with sharded state tensors as this rank's local shards (picklable)."""
    sd = optim.state_dict()
    sd["state"] = {idx: dict(st) for idx, st in sd["state"].items()}  # not the live state
    local = []
    for idx, st in sd["state"].items():
        for key, value in list(st.items()):
            if _is_dtensor(value):
                st[key] = value.to_local().cpu().clone()
                local.append((idx, key))
    sd["_local_shards"] = local
    return sd


def load_optimizer_state(optim, sd: dict[str, Any]) -> None:
    """Inverse of ``optimizer_state`` on the same sharding (same world size)."""
    from torch.distributed.tensor import DTensor

    sd = {**sd, "state": {idx: dict(st) for idx, st in sd["state"].items()}}
    params = [p for group in optim.param_groups for p in group["params"]]
    for idx, key in sd.pop("_local_shards", []):
        p = params[idx]
        sd["state"][idx][key] = DTensor.from_local(
            sd["state"][idx][key].to(p.device),
            p.device_mesh,
            p.placements,
            shape=p.shape,
            stride=p.stride(),
        )
    optim.load_state_dict(sd)


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
