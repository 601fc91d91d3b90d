"""Pair precision/recall/F1 of thresher dedup vs datasketch MinHashLSH on planted duplicates.

Corpus: ``dedup_data.make_corpus`` (news-length documents; planted exact copies, word edits of
1-5 %, truncations to 90-97 %). Both sides use word 3-gram shingles of the same normalised words,
128 permutations and threshold 0.7; clusters are the transitive closure of the found pairs, and a
pair counts when both documents land in one cluster. datasketch is run the usual way (query, then
insert; LSH candidates taken as duplicates) and also with candidates verified by its Jaccard
estimate. Prints one JSON object.

    python benchmarks/dedup_quality.py [--size 20000] [--threshold 0.7] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup_data import make_corpus  # noqa: E402


def pair_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pair precision/recall/F1; labels < 0 are singletons."""

    def n_pairs(counts):
        counts = np.asarray(counts, dtype=np.int64)
        return int((counts * (counts - 1) // 2).sum())

    def sizes(labels):
        return np.unique(labels[labels >= 0], return_counts=True)[1]

    both = (pred >= 0) & (truth >= 0)
    cells = np.unique(np.stack([pred[both], truth[both]], axis=1), axis=0, return_counts=True)[1]
    tp = n_pairs(cells)
    predicted, actual = n_pairs(sizes(pred)), n_pairs(sizes(truth))
    precision = tp / predicted if predicted else 1.0
    recall = tp / actual if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def components(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    from curate.minhash import components

    comp = components(n, np.array(pairs, dtype=np.int64).reshape(-1, 2))
    sizes = np.bincount(comp, minlength=n)
    return np.where(sizes[comp] >= 2, comp, -1)


def run_thresher(texts: list[str], threshold: float) -> tuple[np.ndarray, float]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.dedup import DedupOptions, dedup
    from curate.ingest import IngestOptions, ingest
    from thresher.project import Project

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.parquet"
        pq.write_table(pa.table({"text": texts}), src)
        project = Project.at(Path(tmp) / "proj")
        ingest([src], project, IngestOptions(label_col=None))
        t0 = time.perf_counter()
        dedup(project, DedupOptions(threshold=threshold))
        seconds = time.perf_counter() - t0
        col = pq.read_table(project.records_path("dedup"), columns=["dup_cluster"])
        pred = np.array([-1 if v is None else v for v in col.column(0).to_pylist()])
    return pred, seconds


def run_datasketch(texts: list[str], threshold: float, verify: bool) -> tuple[np.ndarray, float]:
    from datasketch import MinHash, MinHashLSH

    from curate.normalize import words

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    hashes = []
    pairs = []
    for i, text in enumerate(texts):
        w = words(text)
        shingles = {" ".join(w[j : j + 3]).encode() for j in range(max(len(w) - 2, 1))}
        m = MinHash(num_perm=128)
        m.update_batch(list(shingles))
        for j in lsh.query(m):
            if not verify or m.jaccard(hashes[j]) >= threshold:
                pairs.append((j, i))
        lsh.insert(i, m)
        hashes.append(m)
    seconds = time.perf_counter() - t0
    return components(len(texts), pairs), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    texts, truth, kinds = make_corpus(args.size, seed=args.seed)
    ours, ours_s = run_thresher(texts, args.threshold)
    ds_raw, ds_raw_s = run_datasketch(texts, args.threshold, verify=False)
    ds_ver, _ = run_datasketch(texts, args.threshold, verify=True)
    kinds_arr = np.array(kinds)
    recall_by_kind = {}
    for kind in ("exact", "near", "truncated"):
        # a variant is found when it shares a cluster with its original
        found = total = 0
        original = {
            int(t): i for i, (t, k) in enumerate(zip(truth, kinds, strict=True)) if k == "original"
        }
        for i in np.flatnonzero(kinds_arr == kind):
            j = original[int(truth[i])]
            total += 1
            found += int(ours[i] >= 0 and ours[i] == ours[j])
        recall_by_kind[kind] = round(found / total, 4) if total else None
    result = {
        "benchmark": "dedup_quality",
        "docs": args.size,
        "planted_clusters": int(len(set(truth[truth >= 0].tolist()))),
        "threshold": args.threshold,
        "shingles": "word 3-grams",
        "num_perm": 128,
        "thresher": {
            **pair_scores(ours, truth),
            "seconds": round(ours_s, 3),
            "variant_recall_by_kind": recall_by_kind,
        },
        "datasketch_lsh": {**pair_scores(ds_raw, truth), "seconds": round(ds_raw_s, 3)},
        "datasketch_lsh_verified": pair_scores(ds_ver, truth),
    }
    result["f1_ratio_vs_datasketch"] = round(
        result["thresher"]["f1"] / max(result["datasketch_lsh"]["f1"], 1e-9), 4
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
