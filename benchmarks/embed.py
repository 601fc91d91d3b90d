"""Embedding throughput and agreement: thresher's embed_texts vs plain SentenceTransformer.encode.

Both run in this process on the same ~300-word documents (built by joining demo-corpus review
snippets), without the cache. thresher picks its precision by hardware (float16 on CUDA, bfloat16
on a CPU with AVX512-BF16/AMX units, else float32); the peer is ``encode`` with its defaults.
Prints one JSON object: docs/s for both, the ratio, and the minimum cosine between the two.

    python benchmarks/embed.py [--docs 200] [--device cpu|cuda] [--model FOLDER] [--docs-file F]

``--model``/``--docs-file`` let it run where the offline packages are not installed (a folder
with the model, and a file of documents, one per line, as ``--write-docs F`` writes them).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def documents(n: int, words: int = 300) -> list[str]:
    from thresher.assets import write_demo_corpus

    path = write_demo_corpus(Path(tempfile.mkdtemp()) / "demo.csv")
    with open(path, newline="") as fh:
        snippets = [row["text"] for row in csv.DictReader(fh)]
    docs, buf, i = [], [], 0
    while len(docs) < n:
        buf.extend(snippets[i % len(snippets)].split())
        i += 1
        if len(buf) >= words:
            docs.append(" ".join(buf[:words]))
            buf = []
    return docs


def main() -> None:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from thresher.assets import default_encoder_path
    from thresher.embeddings import embed_texts, load_encoder, resolve_precision

    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--device", default=None, help="cpu | cuda [cuda when there is one]")
    parser.add_argument("--model", default="default", help="encoder folder [offline MiniLM]")
    parser.add_argument("--docs-file", type=Path, default=None)
    parser.add_argument("--write-docs", type=Path, default=None)
    args = parser.parse_args()
    if args.docs_file is not None:
        docs = args.docs_file.read_text().splitlines()[: args.docs]
    else:
        docs = documents(args.docs)
    if args.write_docs is not None:
        args.write_docs.write_text("\n".join(docs) + "\n")
        return
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = default_encoder_path() if args.model == "default" else Path(args.model)

    plain = SentenceTransformer(str(path), device=device)
    plain.encode(docs[:8])  # warm-up
    t0 = time.perf_counter()
    reference = plain.encode(docs, normalize_embeddings=True)
    plain_s = time.perf_counter() - t0

    load_encoder(args.model, device).encode(docs[:8])  # warm-up, same as the peer
    t0 = time.perf_counter()
    ours = embed_texts(docs, args.model, device=device)
    ours_s = time.perf_counter() - t0

    cosine = (ours * reference).sum(axis=1)
    print(
        json.dumps(
            {
                "benchmark": "embed",
                "docs": len(docs),
                "words_per_doc": 300,
                "device": device,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "thresher_precision": resolve_precision("auto", device),
                "thresher_docs_per_s": round(len(docs) / ours_s, 1),
                "plain_encode_docs_per_s": round(len(docs) / plain_s, 1),
                "speed_ratio": round(plain_s / ours_s, 2),
                "min_cosine": round(float(np.min(cosine)), 5),
                "mean_cosine": round(float(np.mean(cosine)), 6),
            }
        )
    )


if __name__ == "__main__":
    main()
