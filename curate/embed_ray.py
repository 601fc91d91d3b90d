"""Sentence embeddings on a Ray actor pool (optional extra: ``pip install thresher[ray]``).

Each actor loads the encoder once (``thresher.embeddings.load_encoder``) and embeds the blocks it
is given with ``thresher.embeddings.embed_texts``, so a vector is the one the local call would
give (same model, device kind and precision). With GPUs every actor takes one (``num_gpus=1``)
and the pool has one actor per GPU; without, one actor per ``cpus_per_actor`` CPUs. The driver
keeps only the texts and the result, in input order.

``cache_dir`` is the project's embedding cache: each actor reads it and adds the texts it
embedded (shards are named per process, so actors never write the same file). On a cluster of
several machines it must be on storage every node sees, or each node keeps its own cache.
``ray.init()`` is left to the caller or to Ray's defaults (``RAY_ADDRESS`` names a cluster).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.ray_support import import_ray

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayEmbedOptions:
    """How the pool is sized. ``gpus``: one GPU per actor (None: when the driver sees CUDA);
    ``actors``: pool size (0: one per GPU, or one per ``cpus_per_actor`` CPUs of the cluster);
    ``block_rows``: texts per task handed to an actor."""

    gpus: bool | None = None
    actors: int = 0
    cpus_per_actor: int = 1
    block_rows: int = 1024
    batch_size: int = 64
    precision: str = "auto"


class _Embedder:
    """An actor: the encoder loaded and the cache read once (``thresher.embeddings.Embedder``),
    then one block (pos, text) → (pos, vector) per call."""

    def __init__(self, model, device, precision, batch_size, cache_dir, threads) -> None:
        import torch

        from thresher.embeddings import Embedder, load_encoder

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        cache = Path(cache_dir) if cache_dir else None
        self.embedder = Embedder(model, cache, batch_size, device, precision)
        load_encoder(model, device, precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = self.embedder.rows([str(t) for t in batch["text"]])
        vectors = np.stack(rows).astype(np.float32, copy=False)
        return {"pos": batch["pos"], "vector": vectors}


def _use_gpus(opts: RayEmbedOptions) -> bool:
    if opts.gpus is not None:
        return opts.gpus
    import torch

    return bool(torch.cuda.is_available())


def _pool_size(ray, opts: RayEmbedOptions, gpus: bool) -> int:
    if opts.actors > 0:
        return opts.actors
    resources = ray.cluster_resources()
    if gpus:
        return max(1, int(resources.get("GPU", 1)))
    return max(1, int(resources.get("CPU", 1)) // max(1, opts.cpus_per_actor))


def embed_texts_ray(
    texts: Sequence[str],
    model: str | None = "default",
    *,
    cache_dir: Path | None = None,
    options: RayEmbedOptions | None = None,
) -> np.ndarray:
    """Embed ``texts`` on a Ray actor pool → float32 array (n, dim), L2-normalised, in input
    order: what ``thresher.embeddings.embed_texts`` returns, within float tolerance."""
    ray = import_ray()
    import pyarrow as pa

    opts = options or RayEmbedOptions()
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    n = len(texts)
    if n == 0:
        return np.zeros((0, 384), dtype="float32")
    gpus = _use_gpus(opts)
    actors = _pool_size(ray, opts, gpus)
    table = pa.table(
        {"pos": np.arange(n, dtype=np.int64), "text": pa.array(list(texts), pa.string())}
    )
    step = max(1, min(opts.block_rows, -(-n // actors)))
    blocks = [table.slice(start, step) for start in range(0, n, step)]
    log.info("ray: embedding %d texts on %d %s actor(s)", n, actors, "GPU" if gpus else "CPU")
    out = ray.data.from_arrow(blocks).map_batches(
        _Embedder,
        fn_constructor_kwargs={
            "model": model,
            "device": "cuda" if gpus else "cpu",
            "precision": opts.precision,
            "batch_size": opts.batch_size,
            "cache_dir": str(cache_dir) if cache_dir is not None else None,
            "threads": opts.cpus_per_actor,
        },
        batch_size=None,
        batch_format="numpy",
        concurrency=actors,
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else opts.cpus_per_actor,
    )
    result: np.ndarray | None = None
    seen = 0
    for batch in out.iter_batches(batch_format="numpy", batch_size=None):
        vectors = np.asarray(batch["vector"], dtype=np.float32)
        if result is None:
            result = np.empty((n, vectors.shape[1]), dtype=np.float32)
        result[batch["pos"]] = vectors
        seen += len(vectors)
    if result is None or seen != n:
        raise RuntimeError(f"ray: {seen} of {n} embeddings came back")
    return result
