"""Ingest throughput and peak memory on a generated JSON Lines file.

thresher's whole ingest (validation, quarantine, ids, Parquet) runs as a real subprocess and is
compared, in the same run, with the common quick path: pandas.read_json(lines=True) followed by
DataFrame.to_parquet (no per-row validation; it aborts on the first malformed line, so the peer
reads a clean copy of the data). Prints one JSON object.

    python benchmarks/ingest_speed.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the quick brown fox jumps over lazy dog movie plot actor scene great terrible "
    "boring fun story music long short film review"
).split()


def generate(path: Path, clean_path: Path, rows: int, bad_rate: float, seed: int) -> int:
    rng = random.Random(seed)
    bad = 0
    with open(path, "w") as fh, open(clean_path, "w") as clean:
        for i in range(rows):
            if rng.random() < bad_rate:
                bad += 1
                fh.write(
                    rng.choice(['{"text": ', '{"text": ""}', "[1, 2]", '{"label": "x"}']) + "\n"
                )
                continue
            text = " ".join(rng.choices(WORDS, k=rng.randint(8, 40)))
            line = (
                json.dumps(
                    {"text": f"{i} {text}", "label": rng.choice(["pos", "neg"]), "source_id": i}
                )
                + "\n"
            )
            fh.write(line)
            clean.write(line)
    return bad


_RSS_WRAPPER = (
    "import atexit, resource, runpy, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    "f'MAXRSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n'))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__') if sys.argv[0].endswith('.py') "
    "else runpy.run_module(sys.argv[0], run_name='__main__')\n"
)


def timed_child(args: list[str]) -> tuple[float, int, str]:
    """Run ``python -m MODULE ...`` or ``python SCRIPT.py ...``; wall seconds, own peak RSS (KB)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_WRAPPER, *args], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - t0
    rss_kb = int(proc.stderr.rsplit("MAXRSS_KB ", 1)[1].split()[0])
    return wall, rss_kb, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--bad-rate", type=float, default=0.01)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        src, clean = tmp_path / "in.jsonl", tmp_path / "clean.jsonl"
        bad = generate(src, clean, args.rows, args.bad_rate, seed=0)
        size_mb = src.stat().st_size / 1e6
        peer = tmp_path / "peer.py"
        peer.write_text(
            "import sys, pandas as pd\n"
            "df = pd.read_json(sys.argv[1], lines=True)\n"
            "df.to_parquet(sys.argv[2])\n"
        )
        peer_wall, peer_rss, _ = timed_child([str(peer), str(clean), str(tmp_path / "p.parquet")])
        ours_wall, ours_rss, out = timed_child(
            ["thresher", "curate", "ingest", str(src), "-p", str(tmp_path / "proj"), "--json"]
        )
        summary = json.loads(out)
    assert summary["rejected"] == bad and summary["kept"] + summary["rejected"] == args.rows
    result = {
        "benchmark": "ingest_speed",
        "rows": args.rows,
        "file_mb": round(size_mb, 1),
        "rejected": bad,
        "thresher": {
            "wall_s": round(ours_wall, 2),
            "rows_per_s": round(args.rows / ours_wall),
            "peak_rss_mb": round(ours_rss / 1024),
        },
        "pandas_read_json_to_parquet": {
            "wall_s": round(peer_wall, 2),
            "rows_per_s": round((args.rows - bad) / peer_wall),
            "peak_rss_mb": round(peer_rss / 1024),
        },
        "speed_ratio_vs_pandas": round(peer_wall / ours_wall, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
