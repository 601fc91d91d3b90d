"""Outlier scores of the score stage: ``curate.noise.knn_cosine_distances`` (blocked float32
matmul + partition) vs scikit-learn's brute-force cosine ``NearestNeighbors``, the peer it
replaced, in one process on the same vectors (384-d, like MiniLM embeddings; k = 10).

    python benchmarks/outliers.py [--sizes 20000 50000 100000] [--dims 384 100] [--out FILE]

Per size: seconds of each, the speed ratio, the largest difference of the mean k-NN distance
(the outlier score's input) and how many near-OOD flags differ."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402


def run(n: int, dim: int = 384, k: int = 10, seed: int = 0) -> dict:
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    from curate.noise import OUTLIER_THRESHOLD, knn_cosine_distances

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(50, dim))
    x = (centers[rng.integers(0, 50, n)] + rng.normal(scale=1.5, size=(n, dim))).astype(np.float32)
    t0 = time.perf_counter()
    ours = knn_cosine_distances(x, k).mean(axis=1, dtype=np.float64)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dist, _ = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x).kneighbors(x)
    peer = dist[:, 1:].mean(axis=1)
    peer_s = time.perf_counter() - t0

    def flags(d):
        q1, q3 = np.percentile(d, [25, 75])
        return d > q3 + (1 / OUTLIER_THRESHOLD - 1) * (q3 - q1)

    return {
        "n": n,
        "dim": dim,
        "k": k,
        "thresher_seconds": round(ours_s, 2),
        "sklearn_brute_cosine_seconds": round(peer_s, 2),
        "speed_ratio": round(peer_s / ours_s, 2),
        "max_abs_diff_mean_distance": float(np.abs(ours - peer).max()),
        "near_ood_flags": int(flags(peer).sum()),
        "near_ood_flags_differing": int((flags(ours) != flags(peer)).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000, 100000])
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[384], help="384: MiniLM; 100: fast mode's SVD"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = [run(n, dim) for dim in args.dims for n in args.sizes]
    emit({"benchmark": "outliers", "cpus": os.cpu_count(), "runs": results}, args.out)


if __name__ == "__main__":
    main()
