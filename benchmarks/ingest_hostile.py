"""Peak memory of ingest on hostile inputs: one 400 MB line, one row nested 100 000 levels deep.

For each format (``.jsonl.gz``, ``.csv.gz``, ``.json.gz`` holding one array) it writes ``--rows``
ordinary rows (a baseline file) and the same rows with one ``--line-mb`` MB row in the middle
(a small file: the long row is repetitive text, so it compresses about 1000 to 1); for JSON Lines
also the same rows with one line of 100 000 ``[``. Each file is ingested by
``python -m thresher curate ingest FILE -p DIR --json --force`` as a child process, whose peak RSS
comes from ``os.wait4`` (through the launcher of ``dedup_speed``). The figure is the peak with the
hostile row minus the baseline's peak. The peer, in the same run and measured the same way: a
plain line loop over the same two .jsonl.gz files (``for line in gzip.open(...)``), which holds
the whole long line. Prints one JSON object.

    python benchmarks/ingest_hostile.py [--rows 50000] [--line-mb 400] [--out FILE]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _report import emit  # noqa: E402
from dedup_speed import run_process  # noqa: E402

WORDS = (
    "the quick brown fox jumps over a lazy dog while markets rally and the council votes on a "
    "new budget for schools roads and parks after a long debate"
).split()
FMTS = ("jsonl", "csv", "json")
PIECE = b"lorem ipsum dolor sit amet " * 4096  # ~110 KB, written again and again


def _texts(rows: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{i} " + " ".join(rng.choices(WORDS, k=rng.randint(20, 60))) for i in range(rows)]


def _row(fmt: str, text: str, label: str) -> bytes:
    if fmt == "csv":
        return f"{text},{label}\n".encode()
    return json.dumps({"text": text, "label": label}).encode()


def write_file(path: Path, fmt: str, texts: list[str], hostile: str | None, line_mb: int) -> None:
    """``texts`` as rows of ``fmt``; ``hostile`` (long | nested) puts one such row in the middle."""
    middle = len(texts) // 2
    with gzip.open(path, "wb", compresslevel=6) as fh:
        fh.write(b"text,label\n" if fmt == "csv" else b"[\n" if fmt == "json" else b"")
        for i, text in enumerate(texts):
            if i == middle and hostile == "long":
                fh.write(b'{"text": "' if fmt != "csv" else b"")
                for _ in range(line_mb * 2**20 // len(PIECE)):
                    fh.write(PIECE)
                fh.write(b'"}' if fmt != "csv" else b",pos")
                fh.write(b",\n" if fmt == "json" else b"\n")
            elif i == middle and hostile == "nested":
                fh.write(b"[" * 100_000 + b"\n")
            sep = b",\n" if fmt == "json" and i < len(texts) - 1 else b"\n"
            fh.write(_row(fmt, text, ("pos", "neg")[i % 2]) + (b"" if fmt == "csv" else sep))
        fh.write(b"]\n" if fmt == "json" else b"")


def ingest_run(path: Path, project: Path) -> dict:
    cmd = [sys.executable, "-m", "thresher", "curate", "ingest", str(path), "-p", str(project)]
    run = run_process([*cmd, "--json", "--force"])
    summary = json.loads(run.pop("stdout"))
    return {
        "peak_rss_mib": round(run["peak_rss_mib"], 1),
        "wall_s": round(run["wall_s"], 2),
        "file_mib": round(path.stat().st_size / 2**20, 2),
        "rows_in": summary["rows_in"],
        "kept": summary["kept"],
        "by_reason": summary["by_reason"],
    }


def line_loop_run(path: Path) -> dict:
    code = "import gzip, sys\nfor line in gzip.open(sys.argv[1], 'rb'):\n    pass\n"
    run = run_process([sys.executable, "-c", code, str(path)])
    return {"peak_rss_mib": round(run["peak_rss_mib"], 1), "wall_s": round(run["wall_s"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--line-mb", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    texts = _texts(args.rows, seed=0)
    result: dict = {
        "benchmark": "ingest_hostile",
        "rows": args.rows,
        "long_line_mib": args.line_mb,
        "max_line_bytes": "default (16 MiB)",
    }
    peer: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for fmt in FMTS:
            runs = {}
            for hostile in (None, "long", "nested") if fmt == "jsonl" else (None, "long"):
                path = tmp_path / f"{hostile or 'baseline'}.{fmt}.gz"
                write_file(path, fmt, texts, hostile, args.line_mb)
                runs[hostile or "baseline"] = ingest_run(path, tmp_path / f"proj-{fmt}")
                if fmt == "jsonl" and hostile != "nested":
                    peer[hostile or "baseline"] = line_loop_run(path)
                path.unlink()
            base = runs["baseline"]["peak_rss_mib"]
            for name in ("long", "nested"):
                if name in runs:
                    over = runs[name]["peak_rss_mib"] - base
                    runs[name]["peak_over_baseline_mib"] = round(over, 1)
            result[f"{fmt}_gz"] = runs
    peer["long"]["peak_over_baseline_mib"] = round(
        peer["long"]["peak_rss_mib"] - peer["baseline"]["peak_rss_mib"], 1
    )
    result["peer_plain_line_loop_jsonl_gz"] = peer
    result["long_line_peak_over_baseline_mib"] = {
        **{f"thresher_{f}_gz": result[f"{f}_gz"]["long"]["peak_over_baseline_mib"] for f in FMTS},
        "plain_line_loop_jsonl_gz": peer["long"]["peak_over_baseline_mib"],
    }
    result["nested_row_peak_over_baseline_mib"] = result["jsonl_gz"]["nested"][
        "peak_over_baseline_mib"
    ]
    emit(result, args.out)


if __name__ == "__main__":
    main()
