"""Cosine k-NN and semantic near pairs at scale: ``thresher.neighbours`` (k-NN on its ANN index,
usearch HNSW over a float16 memmap; pairs by SimHash banding, ``thresher.simhash``) vs its exact
path (blocked float32 matmul, what outliers, dedup and the monitor ran before) vs scikit-learn
``NearestNeighbors(metric="cosine", algorithm="brute")`` (``kneighbors`` and
``radius_neighbors``), on the same generated vectors in one run.

    python benchmarks/neighbours.py [--sizes 100000 1000000] [--sample 2000] [--out FILE]

Vectors: 384-d unit rows in clusters (one cluster per 500 rows, each a random centre plus a
16-d random subspace and a little isotropic noise, so a row's nearest neighbour sits at cosine
~0.7 like sentence embeddings) with 0.5 % planted near copies (cosine 0.93-0.995 to their
source). Each method runs in a fresh subprocess; its peak memory is that process's ru_maxrss
(file pages of the memmap it touched included) minus the interpreter's start-up RSS.

k-NN (k = 10): recall@10 of the ANN path against the exact neighbours of ``--sample`` random
query rows. Semantic pairs (cosine ≥ 0.95): the share of the exact pairs the ANN path finds,
counted over the pairs of the sample rows plus ``--sample`` planted rows; the ANN run also
times the connected components that turn pairs into semantic clusters (``curate dedup``'s
step after the pairs), so its seconds are the whole semantic dedup given the vectors. Above
``--full-max``
rows the exact path and scikit-learn answer only the sample rows and their full time is the
sample's time scaled linearly to all rows (``extrapolated: true``); the exact pair search is
scaled to the n²/2 upper triangle, scikit-learn's to all n rows."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIM = 384
K = 10
THRESHOLD = 0.95
ROWS_PER_CLUSTER = 500
SUBSPACE = 16
PLANTED_SHARE = 0.005
CHUNK = 65_536


def generate(n: int, folder: Path, seed: int = 0, data: str = "clusters") -> dict:
    """Write ``x32.npy`` (float32) and ``x16.npy`` (float16) with ``n`` unit rows from the
    ``data`` generator and planted near copies, a chunk at a time; ``planted.npy`` holds the rows
    that are copies."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = (_cluster_rows if data == "clusters" else _topic_rows)(n, rng)
    x32 = np.lib.format.open_memmap(folder / "x32.npy", "w+", np.float32, (n, DIM))
    x16 = np.lib.format.open_memmap(folder / "x16.npy", "w+", np.float16, (n, DIM))
    planted = []
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        block = rows(m)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        copies = max(1, int(m * PLANTED_SHARE))
        source = rng.choice(m - copies, copies, replace=False)
        noise = rng.normal(size=(copies, DIM)).astype(np.float32)
        noise *= (rng.uniform(0.1, 0.4, copies) / np.linalg.norm(noise, axis=1))[:, None]
        near = block[source] + noise
        block[m - copies :] = near / np.linalg.norm(near, axis=1, keepdims=True)
        order = rng.permutation(m)
        block = block[order]
        planted.append(start + np.flatnonzero(order >= m - copies))
        x32[start : start + m] = block
        x16[start : start + m] = block
    x32.flush()
    x16.flush()
    planted_rows = np.concatenate(planted)
    np.save(folder / "planted.npy", planted_rows)
    shape = _shape_stats(x32)
    return {
        "generator": data,
        "planted_copies": len(planted_rows),
        **shape,
        **_float16_agreement(x32, x16),
    }


def _cluster_rows(n: int, rng):
    """``clusters``: one cluster per 500 rows, each a random centre plus a 16-d random subspace
    (its own, so clusters are mutually orthogonal) and a little isotropic noise."""
    import numpy as np

    n_clusters = max(10, n // ROWS_PER_CLUSTER)
    centres = rng.normal(size=(n_clusters, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.normal(size=(n_clusters, SUBSPACE, DIM)).astype(np.float32) * 3 / np.sqrt(DIM)
    spread = rng.uniform(0.2, 0.4, n_clusters).astype(np.float32)

    def rows(m: int):
        which = rng.integers(0, n_clusters, m)
        z = rng.normal(size=(m, SUBSPACE)).astype(np.float32) * spread[which, None]
        block = centres[which] + np.einsum("ms,msd->md", z, bases[which])
        return block + rng.normal(scale=0.02, size=(m, DIM)).astype(np.float32)

    return rows


TOPIC_SHAPE = {"common": 1.6, "topic": 0.55, "subtopic": 0.75, "spread": 0.8, "noise": 1.6}


def _topic_rows(n: int, rng):
    """``topics``: shaped like sentence embeddings. A direction shared by all rows, topics
    (one per 20 subtopics), subtopics (one per 500 rows) near their topic, rows spread over a
    24-d subspace of their subtopic plus isotropic noise. ``TOPIC_SHAPE`` was set so that
    8,000 rows match 8,000 all-MiniLM-L6-v2 embeddings of the demo corpus on mean cosine
    (0.195 vs 0.207), nearest-neighbour cosine (0.613 vs 0.601) and 10th (0.508 vs 0.490)."""
    import numpy as np

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    shape = TOPIC_SHAPE
    n_sub = max(10, n // ROWS_PER_CLUSTER)
    common = unit(rng.normal(size=DIM)).astype(np.float32)
    topics = unit(rng.normal(size=(max(2, n_sub // 20), DIM)))
    parent = rng.integers(0, len(topics), n_sub)
    own = unit(rng.normal(size=(n_sub, DIM)))
    subs = unit(0.45 * common + shape["topic"] * topics[parent] + shape["subtopic"] * own)
    subs = subs.astype(np.float32)
    bases = rng.normal(size=(n_sub, 24, DIM)).astype(np.float32) / np.sqrt(DIM)

    def rows(m: int):
        which = rng.integers(0, n_sub, m)
        z = rng.normal(size=(m, 24)).astype(np.float32) * shape["spread"]
        block = subs[which] + np.einsum("ms,msd->md", z, bases[which])
        noise = rng.normal(scale=shape["noise"] / np.sqrt(DIM), size=(m, DIM))
        return block + noise.astype(np.float32) + shape["common"] * common

    return rows


def _shape_stats(x32) -> dict:
    """Mean cosine, nearest and 10th-nearest cosine of 1,000 rows among the first 20,000."""
    import numpy as np

    head = np.asarray(x32[: min(len(x32), 20_000)], np.float32)
    sims = head[:1000] @ head.T
    sims[np.arange(min(1000, len(head))), np.arange(min(1000, len(head)))] = -np.inf
    top = np.sort(sims, axis=1)
    finite = np.isfinite(sims)
    return {
        "mean_cosine": round(float(sims[finite].mean()), 3),
        "nn_cosine_first_20k": round(float(top[:, -1].mean()), 3),
        "tenth_nn_cosine_first_20k": round(float(top[:, -10].mean()), 3),
    }


def _float16_agreement(x32, x16) -> dict:
    """Cosine between each float32 row and its float16 copy (min and mean over 20k rows)."""
    import numpy as np

    rows = slice(0, min(len(x32), 20_000))
    a = np.asarray(x32[rows], np.float64)
    b = np.asarray(x16[rows], np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"float16_cosine_min": float(cos.min()), "float16_cosine_mean": float(cos.mean())}


# --------------------------------------------------------------------------------------------
# One method in a fresh process


def child(method: str, folder: Path, full: bool) -> dict:
    """Run ``method`` on the vectors in ``folder``, save its answers there, return its time."""
    import numpy as np

    from thresher import neighbours as nb

    if method == "start":  # the interpreter and imports alone
        return {"peak_rss_mib": _peak_rss_mib()}
    sample = np.load(folder / "sample.npy")
    pair_rows = np.load(folder / "pair_rows.npy")
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    out: dict = {}
    if method == "ann_knn":
        x = np.load(folder / "x16.npy", mmap_mode="r")
        _, idx = nb.cosine_knn(x, K, method="ann")
        np.save(folder / "ann_knn.npy", idx[sample])
    elif method == "ann_pairs":
        from curate.minhash import components

        x = np.load(folder / "x16.npy", mmap_mode="r")
        out["path"] = nb.pair_path(len(x), THRESHOLD, "ann")
        pairs = nb.pairs_above(x, THRESHOLD, method="ann")
        out["pairs_seconds"] = time.perf_counter() - t0
        clusters = components(len(x), pairs)
        out["rows_in_semantic_clusters"] = int((np.bincount(clusters) > 1)[clusters].sum())
        np.save(folder / "ann_pairs.npy", pairs)
        out["pairs"] = len(pairs)
    elif method == "exact_knn":
        x = np.load(folder / "x32.npy")
        if full:
            _, idx = nb.cosine_knn(x, K, method="exact")
            idx = idx[sample]
        else:
            _, idx = nb.exact_knn(x, K, query_rows=sample)
        np.save(folder / "exact_knn.npy", idx)
    elif method == "exact_pairs":
        x = np.load(folder / "x32.npy")
        if full:
            pairs = nb.pairs_above(x, THRESHOLD, method="exact")
            out["pairs"] = len(pairs)
        else:  # the sample rows against every row
            pairs = _pairs_of(x, pair_rows)
        np.save(folder / "exact_pairs.npy", pairs)
    elif method == "sklearn_pairs":
        from sklearn.neighbors import NearestNeighbors

        x = np.load(folder / "x32.npy")
        model = NearestNeighbors(metric="cosine", algorithm="brute").fit(x)
        rows = np.arange(len(x)) if full else pair_rows
        found = []
        for start in range(0, len(rows), 4096):  # radius answers are ragged: a block at a time
            part = rows[start : start + 4096]
            hits = model.radius_neighbors(x[part], radius=1 - THRESHOLD, return_distance=False)
            sizes = [len(h) for h in hits]
            found.append(np.stack([np.repeat(part, sizes), np.concatenate(hits)], axis=1))
        pairs = np.concatenate(found)
        pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1), axis=0)
        np.save(folder / "sklearn_pairs.npy", pairs)
    elif method == "sklearn_knn":
        from sklearn.neighbors import NearestNeighbors

        x = np.load(folder / "x32.npy")
        model = NearestNeighbors(n_neighbors=K + 1, metric="cosine", algorithm="brute").fit(x)
        queries = x if full else x[sample]
        _, idx = model.kneighbors(queries)
        idx = idx[sample] if full else idx
        np.save(folder / "sklearn_knn.npy", _drop_self(idx, sample))
    else:
        raise SystemExit(f"unknown method {method}")
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = time.process_time() - cpu0
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def _peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: reset by exec, unlike ru_maxrss, which a
    child forked from a big parent inherits)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pairs_of(x, rows):
    import numpy as np

    from thresher.neighbours import unit_rows

    xn = unit_rows(x)
    found = []
    for start in range(0, len(rows), 256):
        part = rows[start : start + 256]
        r, c = np.nonzero(xn[part] @ xn.T >= THRESHOLD)
        found.append(np.stack([part[r], c], axis=1))
    pairs = np.concatenate(found)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(np.sort(pairs, axis=1), axis=0)


def _drop_self(idx, rows):
    keep = idx != rows[:, None]
    keep[keep.all(axis=1), -1] = False
    return idx[keep].reshape(len(idx), -1)[:, :K]


def _run_child(method: str, folder: Path, full: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--folder", str(folder)]
    if full:
        cmd.append("--full")
    base = subprocess.run(
        [sys.executable, __file__, "--child", "start", "--folder", "."],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    start = json.loads(base.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    result["peak_rss_above_start_mib"] = result["peak_rss_mib"] - start
    return {key: round(v, 2) if isinstance(v, float) else v for key, v in result.items()}


def _recall(found, truth) -> float:
    return float(sum(len(set(a) & set(b)) for a, b in zip(found, truth, strict=True)) / truth.size)


KNN_METHODS = ("ann_knn", "exact_knn", "sklearn_knn")
PAIR_METHODS = ("ann_pairs", "exact_pairs", "sklearn_pairs")


def run_size(
    n: int,
    sample_size: int,
    full_max: int,
    seed: int = 0,
    parts: tuple[str, ...] = ("knn", "pairs"),
    generator: str = "clusters",
) -> dict:
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="neighbours-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        data = generate(n, folder, seed, generator)
        data["generate_seconds"] = round(time.perf_counter() - t0, 1)
        rng = np.random.default_rng(seed + 1)
        sample = np.sort(rng.choice(n, min(sample_size, n), replace=False))
        planted = np.load(folder / "planted.npy")
        planted_sample = rng.choice(planted, min(sample_size, len(planted)), replace=False)
        pair_rows = np.unique(np.concatenate([sample, planted_sample]))
        np.save(folder / "sample.npy", sample)
        np.save(folder / "pair_rows.npy", pair_rows)
        full = n <= full_max
        scale = 1.0 if full else n / len(sample)
        result: dict = {"n": n, "dim": DIM, "k": K, "data": data, "sample_rows": len(sample)}
        result["exact_full"] = full
        methods = {}
        todo = KNN_METHODS * ("knn" in parts) + PAIR_METHODS * ("pairs" in parts)
        for method in todo:
            print(f"n={n}: {method} ...", file=sys.stderr, flush=True)
            methods[method] = _run_child(method, folder, full)
            methods[method]["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
        result["methods"] = methods
        if "knn" in parts:
            _knn_summary(result, folder, full, scale)
        if "pairs" in parts:
            _pairs_summary(result, folder, full, n, pair_rows)
        return result


def _knn_summary(result: dict, folder: Path, full: bool, scale: float) -> None:
    import numpy as np

    methods = result["methods"]
    truth = np.load(folder / "exact_knn.npy")
    ann = np.load(folder / "ann_knn.npy")
    sk = np.load(folder / "sklearn_knn.npy")
    methods["ann_knn"]["recall_at_10"] = round(_recall(ann, truth), 4)
    methods["sklearn_knn"]["recall_at_10"] = round(_recall(sk, truth), 4)
    for name in ("exact_knn", "sklearn_knn"):
        m = methods[name]
        m["extrapolated"] = not full
        m["full_seconds"] = round(m["seconds"] * scale, 1)
    ann_s = methods["ann_knn"]["seconds"]
    result["knn_speedup_vs_exact"] = round(methods["exact_knn"]["full_seconds"] / ann_s, 1)
    result["knn_speedup_vs_sklearn"] = round(methods["sklearn_knn"]["full_seconds"] / ann_s, 1)


def _pairs_summary(result: dict, folder: Path, full: bool, n: int, pair_rows) -> None:
    import numpy as np

    methods = result["methods"]
    exact_pairs = np.load(folder / "exact_pairs.npy")
    want = {tuple(p) for p in exact_pairs.tolist()}
    for name in ("ann_pairs", "sklearn_pairs"):
        found = np.load(folder / f"{name}.npy")
        if not full:  # compare on pairs touching the pair rows
            found = found[np.isin(found, pair_rows).any(axis=1)]
        got = {tuple(p) for p in found.tolist()}
        methods[name]["exact_pairs_compared"] = len(want)
        methods[name]["share_of_exact_pairs_found"] = round(len(want & got) / len(want), 4)
        methods[name]["pairs_not_in_exact"] = len(got - want)
    scales = {"exact_pairs": n / (2 * len(pair_rows)), "sklearn_pairs": n / len(pair_rows)}
    for name, scale in scales.items():
        m = methods[name]
        m["extrapolated"] = not full
        m["full_seconds"] = m["seconds"] if full else round(m["seconds"] * scale, 1)
    ann_s = methods["ann_pairs"]["seconds"]
    result["pairs_speedup_vs_exact"] = round(methods["exact_pairs"]["full_seconds"] / ann_s, 1)
    result["pairs_speedup_vs_sklearn"] = round(methods["sklearn_pairs"]["full_seconds"] / ann_s, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--sample", type=int, default=2000, help="query rows checked")
    parser.add_argument("--full-max", type=int, default=200_000, help="exact on all rows up to")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("knn", "pairs"),
        default=["knn", "pairs"],
        help="k-NN methods, semantic-pair methods, or both",
    )
    parser.add_argument(
        "--data",
        choices=("clusters", "topics"),
        default="clusters",
        help="vector generator: mutually orthogonal clusters, or topics shaped like MiniLM",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.full)))
        return
    from thresher.neighbours import EXACT_MAX_ROWS, REPRODUCIBLE_BUILD_MAX_ROWS, AnnParams
    from thresher.simhash import BITS, SEED, bands_for

    cores = len(os.sched_getaffinity(0))
    result = {
        "what": "cosine k-NN (k=10) and semantic pairs >= 0.95: thresher ANN / SimHash vs exact "
        "vs sklearn",
        "machine": f"{cores} cores, load {os.getloadavg()[0]:.1f} at start (shared)",
        "ann": {
            "library": "usearch",
            **AnnParams().__dict__,
            "exact_max_rows": EXACT_MAX_ROWS,
            "reproducible_build_max_rows": REPRODUCIBLE_BUILD_MAX_ROWS,
        },
        "simhash": {"bits": BITS, "bands": bands_for(THRESHOLD), "seed": SEED},
        "sizes": [],
    }
    for n in args.sizes:  # saved after each size: the 1M run is long
        parts = tuple(args.parts)
        result["sizes"].append(
            run_size(n, args.sample, args.full_max, parts=parts, generator=args.data)
        )
        result["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
        emit(result, args.out)


if __name__ == "__main__":
    main()
