"""Sentence embeddings with an on-disk cache keyed by text hash.

Vectors are L2-normalized float32, so a dot product is the cosine similarity. The cache lives under
``DIR/.cache/embeddings/<model key>/`` as append-only ``.npz`` shards (text hashes + vectors); a
rerun embeds only texts it has not seen. Shared by dedup (semantic), scoring, review (vectors) and
the active-learning loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from thresher.assets import resolve_model

log = logging.getLogger(__name__)

_MODELS: dict[str, object] = {}


def _model_key(model_path: str) -> str:
    name = "-".join(Path(model_path).parts[-2:]) or "model"
    digest = hashlib.blake2b(model_path.encode(), digest_size=4).hexdigest()
    return f"{name}-{digest}"


def _hash_texts(texts: Sequence[str]):
    import numpy as np

    return np.array(
        [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts], dtype="S16"
    )


_CPUINFO = Path("/proc/cpuinfo")


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix units (AVX512-BF16 or AMX). Without them torch
    emulates bf16, which measured 9x slower than float32 on an AVX2 machine.

    The one CPU-feature check behind ``precision="auto"``: tests force it both ways."""
    import torch

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    try:
        flags = _CPUINFO.read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` → float16 on CUDA, bfloat16 on a CPU with bf16 units, else float32."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "float16"
    return "bfloat16" if device == "cpu" and cpu_has_bf16() else "float32"


def load_encoder(model: str | None = "default", device: str | None = None, precision: str = "auto"):
    """A ``SentenceTransformer`` for ``model`` (default: the offline MiniLM), cached per process.

    ``precision``: auto | float32 | bfloat16 | float16 (auto picks by hardware; see
    ``resolve_precision``). Reduced precision keeps cosine ≥ 0.999 with float32 vectors
    (benchmarks/embed.py checks it)."""
    import torch

    ref = resolve_model(model, "embedding")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_precision(precision, device)
    key = f"{ref.path}|{device}|{dtype}"
    if key not in _MODELS:
        if ref.is_local:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            check_module_types(Path(ref.path))
        from sentence_transformers import SentenceTransformer

        log.info("loading encoder %s on %s in %s", ref.path, device, dtype)
        _MODELS[key] = SentenceTransformer(
            ref.path, device=device, model_kwargs={"torch_dtype": getattr(torch, dtype)}
        )
    return _MODELS[key]


def check_module_types(folder: Path) -> None:
    """Refuse a local sentence-transformers folder whose ``modules.json`` names a class outside
    ``sentence_transformers``: loading it would import (and run) that code. A model folder may
    be named by someone else's project config; sentence-transformers before 6.0 imported such
    classes from local folders without ``trust_remote_code``."""
    import json

    from thresher.errors import ConfigError

    path = folder / "modules.json"
    if not path.is_file():
        return
    try:
        types = [str(m.get("type", "")) for m in json.loads(path.read_text(encoding="utf-8"))]
    except (ValueError, AttributeError, TypeError) as err:
        raise ConfigError(f"{path} is not a sentence-transformers module list: {err}") from err
    foreign = [t for t in types if not t.startswith("sentence_transformers.")]
    if foreign:
        raise ConfigError(
            f"{path} names code outside sentence_transformers ({foreign[0]!r}); thresher does "
            "not run a model folder's own code: use a standard sentence-transformers model"
        )


def embedding_dim(encoder) -> int:
    """Vector size of a ``SentenceTransformer`` (the method was renamed in v5)."""
    dim_of = getattr(encoder, "get_embedding_dimension", None) or (
        encoder.get_sentence_embedding_dimension
    )
    return int(dim_of())


class EmbeddingCache:
    """Append-only store of (text hash → vector) for one model."""

    def __init__(self, root: Path, model_path: str) -> None:
        self.dir = Path(root) / _model_key(model_path)
        self._index: dict[bytes, tuple[int, int]] | None = None
        self._shards: list = []

    def _load(self) -> None:
        import numpy as np

        if self._index is not None:
            return
        self._index = {}
        self._shards = []
        if not self.dir.exists():
            return
        for shard_path in sorted(self.dir.glob("shard-*.npz")):
            with np.load(shard_path, allow_pickle=False) as shard:
                keys, vectors = shard["keys"], shard["vectors"]
            shard_no = len(self._shards)
            self._shards.append(vectors)
            for row, key in enumerate(keys.tolist()):
                self._index[key] = (shard_no, row)

    def lookup(self, keys) -> tuple[list[int], list]:
        """Positions of ``keys`` that are cached, and their vectors."""
        self._load()
        assert self._index is not None
        hits, vectors = [], []
        for pos, key in enumerate(keys.tolist()):
            loc = self._index.get(key)
            if loc is not None:
                hits.append(pos)
                vectors.append(self._shards[loc[0]][loc[1]])
        return hits, vectors

    def add(self, keys, vectors) -> None:
        import numpy as np

        from thresher.project import current_umask

        if len(keys) == 0:
            return
        self._load()
        assert self._index is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        shard_no = len(self._shards)
        final = self.dir / f"shard-{shard_no:06d}-{os.getpid()}.npz"
        tmp = final.with_suffix(".tmp.npz")
        np.savez(tmp, keys=keys, vectors=vectors)
        tmp.chmod(0o666 & ~current_umask())
        os.replace(tmp, final)
        self._shards.append(vectors)
        for row, key in enumerate(keys.tolist()):
            self._index[key] = (shard_no, row)


def embed_texts(
    texts: Sequence[str],
    model: str | None = "default",
    *,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    device: str | None = None,
    precision: str = "auto",
    progress: Callable[[int], None] | None = None,
    out: Path | None = None,
):
    """Embed ``texts`` → float32 array (n, dim), L2-normalized. Cached texts are not re-embedded.

    ``cache_dir`` (e.g. ``DIR/.cache/embeddings``) enables the cache; None embeds everything.
    ``out``: write the vectors to this ``.npy`` file as float16 instead (cosine with the float32
    vectors ≥ 0.9999) and return it memory-mapped read-only, so that a large matrix is not held
    in memory a second time beside the cache."""
    import numpy as np

    embedder = Embedder(model, cache_dir, batch_size, device, precision, progress)
    result = embedder.rows(texts)
    if out is not None:
        return _write_float16(result, Path(out))
    if not texts:
        return np.zeros((0, 384), dtype="float32")
    return np.stack(result).astype("float32", copy=False)


def write_float16_rows(chunks: Iterable, n: int, out: Path):
    """``n`` vectors arriving in ``chunks`` (arrays of rows) into a float16 ``.npy`` at ``out``
    (written to a temporary file, then renamed), returned memory-mapped read-only: the vectors
    are never all in memory at once."""
    import numpy as np

    tmp = out.with_name(out.name + ".tmp")
    matrix = None
    start = 0
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if matrix is None:
            shape = (n, np.shape(chunk)[1])
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        if start + len(chunk) > n:
            raise ValueError(f"more than the {n} vectors announced")
        matrix[start : start + len(chunk)] = chunk
        start += len(chunk)
    if start != n:
        raise ValueError(f"{start} vectors written, {n} announced")
    if matrix is None:
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(0, 384))
    matrix.flush()
    del matrix
    os.replace(tmp, out)
    return np.load(out, mmap_mode="r")


class Embedder:
    """One model and one cache, embedding any number of text lists: cached texts are looked up,
    each distinct missing text is embedded once and added to the cache. The cache is read once,
    so a long run of batches should share one ``Embedder``."""

    def __init__(
        self,
        model: str | None = "default",
        cache_dir: Path | None = None,
        batch_size: int = 64,
        device: str | None = None,
        precision: str = "auto",
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.model, self.batch_size = model, batch_size
        self.device, self.precision, self.progress = device, precision, progress
        ref = resolve_model(model, "embedding")
        self.cache = EmbeddingCache(cache_dir, ref.path) if cache_dir is not None else None
        self._encoder = None

    def rows(self, texts: Sequence[str]) -> list:
        """One L2-normalized float32 vector per text, in order."""
        import numpy as np

        keys = _hash_texts(texts)
        result: list = [None] * len(texts)
        if self.cache is not None:
            hits, vectors = self.cache.lookup(keys)
            for pos, vec in zip(hits, vectors, strict=True):
                result[pos] = vec
        missing: dict[bytes, list[int]] = {}
        for pos, key in enumerate(keys.tolist()):
            if result[pos] is None:
                missing.setdefault(key, []).append(pos)
        log.info(
            "embeddings: %d cached, %d to compute",
            len(texts) - sum(map(len, missing.values())),
            len(missing),
        )
        if not missing:
            return result
        if self._encoder is None:
            self._encoder = load_encoder(self.model, self.device, self.precision)
        firsts = [positions[0] for positions in missing.values()]
        new_keys = np.array(list(missing.keys()), dtype="S16")
        new_vectors = np.empty((len(firsts), embedding_dim(self._encoder)), "float32")
        step = max(self.batch_size * 16, 1024)
        for start in range(0, len(firsts), step):
            chunk = [texts[i] for i in firsts[start : start + step]]
            vectors = self._encoder.encode(
                chunk,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                show_progress_bar=False,
            ).float()
            # Normalize in float32: reduced-precision norms would cost agreement.
            vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
            new_vectors[start : start + len(chunk)] = vectors.cpu().numpy()
            if self.progress is not None:
                self.progress(len(chunk))
        if self.cache is not None:
            self.cache.add(new_keys, new_vectors)
        for (_, positions), vec in zip(missing.items(), new_vectors, strict=True):
            for pos in positions:
                result[pos] = vec
        return result


def _write_float16(rows: list, out: Path, block: int = 65_536):
    """``rows`` (vectors) into a float16 ``.npy`` at ``out`` a block at a time."""
    import numpy as np

    chunks = (np.stack(rows[i : i + block]) for i in range(0, len(rows), block))
    return write_float16_rows(chunks, len(rows), out)
