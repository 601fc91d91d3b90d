"""Embedding throughput and agreement: thresher's embed_texts vs plain SentenceTransformer.encode.

Both run in this process on the same ~300-word documents (built by joining demo-corpus review
snippets), without the cache. thresher picks its precision by hardware (float16 on CUDA, bfloat16
on a CPU with AVX512-BF16/AMX units, else float32); the peer is ``encode`` with its defaults.
Prints one JSON object: docs/s for both, the ratio, and the minimum cosine between the two.

    python benchmarks/embed.py [--docs 200]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

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

    from curate.embeddings import embed_texts, load_encoder, resolve_precision
    from thresher.assets import default_encoder_path

    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=200)
    args = parser.parse_args()
    docs = documents(args.docs)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    plain = SentenceTransformer(str(default_encoder_path()), device=device)
    plain.encode(docs[:8])  # warm-up
    t0 = time.perf_counter()
    reference = plain.encode(docs, normalize_embeddings=True)
    plain_s = time.perf_counter() - t0

    load_encoder("default", device).encode(docs[:8])  # warm-up, same as the peer
    t0 = time.perf_counter()
    ours = embed_texts(docs, "default", device=device)
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
