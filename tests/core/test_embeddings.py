"""Embedding precision by CPU feature: ``cpu_has_bf16`` is the one check behind
``precision="auto"``; both of its branches run on any machine (torch computes bf16 in software on
a CPU without bf16 units: slower, same numbers within the documented cosine >= 0.999)."""

from __future__ import annotations

import numpy as np
import pytest

from thresher import embeddings
from thresher.embeddings import cpu_has_bf16, embed_texts, load_encoder, resolve_precision

TEXTS = [
    "The film was a delight from start to finish.",
    "Quarterly revenue fell short of the analysts' forecast.",
    "Heavy rain is expected across the north tonight.",
    "a",
    "Résumé: naïve café owners reopen after the storm — 3 days later.",
    "The committee postponed the vote on the new budget until next week " * 8,
]


@pytest.fixture(params=["bf16 units", "no bf16 units"])
def cpu_branch(request, monkeypatch) -> bool:
    """``cpu_has_bf16`` forced to one answer."""
    has = request.param == "bf16 units"
    monkeypatch.setattr(embeddings, "cpu_has_bf16", lambda: has)
    return has


def test_auto_precision_follows_the_forced_cpu_branch(cpu_branch):
    assert resolve_precision("auto", "cpu") == ("bfloat16" if cpu_branch else "float32")
    assert resolve_precision("auto", "cuda") == "float16"
    assert resolve_precision("auto", "cuda:1") == "float16"
    assert resolve_precision("float32", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"


def test_both_cpu_branches_agree_with_float32(cpu_branch):
    import torch

    encoder = load_encoder("default", "cpu", "auto")
    assert next(encoder.parameters()).dtype == (torch.bfloat16 if cpu_branch else torch.float32)
    auto = embed_texts(TEXTS, device="cpu", precision="auto")
    full = embed_texts(TEXTS, device="cpu", precision="float32")
    assert auto.dtype == np.float32 and auto.shape == full.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(auto, axis=1), 1.0, atol=1e-5)
    cosine = (auto * full).sum(axis=1)
    assert cosine.min() >= 0.999
    if not cpu_branch:
        assert np.array_equal(auto, full)  # the same float32 encoder


@pytest.mark.parametrize(
    ("torch_probes", "cpuinfo", "expected"),
    [
        ({"_is_avx512_bf16_supported": True}, None, True),
        ({"_is_amx_tile_supported": True}, None, True),
        ({}, "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),
        ({}, "flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n", True),
        ({}, "flags\t\t: fpu sse2 avx avx2 fma\n", False),
        ({}, None, False),  # no /proc (macOS, Windows): float32
    ],
)
def test_cpu_has_bf16_reads_torch_then_cpuinfo(
    monkeypatch, tmp_path, torch_probes, cpuinfo, expected
):
    import torch

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        value = torch_probes.get(probe, False)
        monkeypatch.setattr(torch.cpu, probe, lambda value=value: value, raising=False)
    info = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        info.write_text(cpuinfo)
    monkeypatch.setattr(embeddings, "_CPUINFO", info)
    assert cpu_has_bf16() is expected


def test_a_model_folder_naming_foreign_code_is_refused_and_not_imported(tmp_path, monkeypatch):
    """A project config may name a local model folder; its modules.json can name any class, and
    sentence-transformers < 6 imported it. thresher refuses it before loading anything."""
    import json
    import sys

    from thresher.errors import ConfigError

    marker = tmp_path / "pwned"
    (tmp_path / "planted_st_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "model"
    folder.mkdir()
    modules = [{"idx": 0, "name": "0", "path": "", "type": "planted_st_mod.Evil"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="outside sentence_transformers") as err:
        load_encoder(str(folder), "cpu", "float32")
    assert "\n" not in str(err.value)
    assert not marker.exists() and "planted_st_mod" not in sys.modules


def test_embedder_serves_batches_from_one_cache_read_into_a_float16_file(tmp_path, monkeypatch):
    from thresher.assets import resolve_model
    from thresher.embeddings import Embedder, EmbeddingCache, _hash_texts, write_float16_rows

    texts = [f"text number {i}" for i in range(10)]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cache_dir = tmp_path / "cache"
    EmbeddingCache(cache_dir, resolve_model("default").path).add(_hash_texts(texts), vectors)
    loads = []
    original = EmbeddingCache._load
    monkeypatch.setattr(
        EmbeddingCache, "_load", lambda self: (loads.append(self._index is None), original(self))
    )
    monkeypatch.setattr(embeddings, "load_encoder", lambda *a, **k: pytest.fail("not cached"))
    embedder = Embedder(cache_dir=cache_dir)
    batches = [texts[:4], texts[4:], texts[2:3]]
    out = write_float16_rows((np.stack(embedder.rows(b)) for b in batches), 11, tmp_path / "x.npy")
    assert out.dtype == np.float16 and out.shape == (11, 8)
    np.testing.assert_allclose(out[:10], vectors, atol=1e-3)
    np.testing.assert_allclose(out[10], vectors[2], atol=1e-3)
    assert len(loads) == 3 and sum(loads) == 1  # three batches, the shards read once
    assert not (tmp_path / "x.npy.tmp").exists()
    with pytest.raises(ValueError, match="12 announced"):
        write_float16_rows(iter([vectors]), 12, tmp_path / "y.npy")
