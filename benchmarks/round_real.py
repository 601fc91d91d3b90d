"""One real ``thresher round`` on N demo records (default 10k) against the embedded Argilla server.

    python benchmarks/round_real.py [--size 10000] [--cache DIR] [--select 100] [--seed-labels 500]

Set-up (not timed): ingest the demo corpus, keep N records, copy an embedding cache (``--cache``:
a ``.cache/embeddings`` folder with the corpus's MiniLM vectors, so the timings are those of a
round with cached embeddings), start a server in a temporary THRESHER_HOME, push the
``--seed-labels`` most urgent records and let two simulated annotators label them.
Timed: round 1 (pull → ... → push of round 2) and, after the annotators label round 2, round 2,
each per step from the round manifest. Peer, same process and records: the same round with the
stand-in steps (oracle pull from the same labels, selection written to a file), i.e. the round
without Argilla. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--select", type=int, default=100)
    parser.add_argument("--seed-labels", type=int, default=500)
    parser.add_argument("--strategy", default="margin")
    parser.add_argument(
        "--cache",
        default="benchmarks/out/al/rotten_tomatoes/.cache/embeddings",
        help="embedding cache of the demo corpus, as benchmarks/active_learning.py leaves it "
        "(else embeddings are computed: slow)",
    )
    args = parser.parse_args()

    import pandas as pd

    from loop import demo_annotators
    from loop.round_wiring import build_runner
    from loop.rounds import RoundRunner
    from loop.steps import (
        eval_step,
        file_push_step,
        oracle_pull_step,
        predict_step,
        rebuild_step,
        select_step,
        train_step,
    )
    from review.push import PushOptions, push
    from review.server import (
        ServerOptions,
        ServerPaths,
        connection,
        free_port,
        server_down,
        server_up,
    )
    from thresher.config import load_config
    from thresher.project import Project

    work = Path(tempfile.mkdtemp(prefix="round-bench-"))
    proj = work / "proj"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "thresher", "curate", "ingest", "--demo", "-p", str(proj)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    records = pd.read_parquet(proj / "ingest" / "records.parquet")
    records = records.sample(n=min(args.size, len(records)), random_state=0)
    records.to_parquet(proj / "ingest" / "records.parquet", index=False)
    if args.cache and Path(args.cache).exists():
        shutil.copytree(args.cache, proj / ".cache" / "embeddings")
    project = Project.at(proj)
    config = load_config(proj).with_overrides(
        {
            "loop.learner": "fast",
            "loop.size": args.select,
            "loop.strategy": args.strategy,
            "review.dataset": "bench",
        }
    )
    shared = ServerPaths.default()
    paths = ServerPaths(work / "home", venv_dir=shared.venv)
    server_up(ServerOptions(port=free_port(), timeout_s=240), paths)

    def conn():
        return connection(paths)

    out: dict = {"records": int(len(records)), "select": args.select, "strategy": args.strategy}
    try:
        labels = tuple(sorted(records["label"].dropna().astype(str).unique()))
        t0 = time.perf_counter()
        first = push(
            project, conn(), PushOptions(dataset="bench", labels=labels, limit=args.seed_labels)
        )
        out["setup_push_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        demo_annotators.run(project, conn(), annotators=2, disagreement=0.1, paths=paths)
        out["setup_annotate_s"] = round(time.perf_counter() - t0, 2)
        out["seed_pushed"] = first.sent

        rounds = []
        for k in (1, 2):
            runner = build_runner(project, config, connect=conn)
            t0 = time.perf_counter()
            result = runner.run(new=k == 2)
            wall = time.perf_counter() - t0
            rounds.append(
                {
                    "round": result.round,
                    "wall_s": round(wall, 2),
                    "steps_s": {n: round(s, 2) for n, s in result.timings.items()},
                    "labeled": result.outputs("rebuild").get("labeled"),
                    "pool": result.outputs("rebuild").get("pool"),
                    "macro_f1": result.outputs("eval").get("macro_f1"),
                    "selected": result.outputs("select").get("by_reason"),
                    "sent": result.outputs("push").get("sent"),
                }
            )
            if k == 1:  # people label what round 1 pushed
                demo_annotators.run(
                    project, conn(), annotators=2, disagreement=0.1, round=2, paths=paths
                )
        out["rounds"] = rounds

        # peer: the same round without Argilla (oracle pull from the same labels, file push)
        peer = Project.at(work / "peer")
        (peer.root / "ingest").mkdir(parents=True)
        shutil.copy(proj / "ingest" / "records.parquet", peer.root / "ingest" / "records.parquet")
        os.symlink(proj / ".cache", peer.root / ".cache")
        ann = pd.read_parquet(proj / "rounds" / "1" / "pull" / "annotations.parquet")
        gold = dict(zip(ann["id"], ann["label"], strict=True))

        def records_fn(ctx):
            from loop.steps import load_project_records

            frame = load_project_records(ctx)
            frame["label"] = [gold.get(i) for i in frame["id"]]
            return frame

        from loop.learners import make_learner

        cache = proj / ".cache" / "embeddings"

        steps = {
            "pull": oracle_pull_step(gold),
            "rebuild": rebuild_step(records_fn),
            "train": train_step(lambda c, ctx: make_learner("fast", c, cache_dir=cache)),
            "eval": eval_step(),
            "predict": predict_step(),
            "select": select_step(args.strategy, args.select, rereview_size=10),
            "push": file_push_step(),
        }
        t0 = time.perf_counter()
        res = RoundRunner(peer, steps, options={"embedding_model": "default"}).run()
        out["peer_without_argilla"] = {
            "wall_s": round(time.perf_counter() - t0, 2),
            "steps_s": {n: round(s, 2) for n, s in res.timings.items()},
        }
        peer_s = out["peer_without_argilla"]["wall_s"]
        # round 1 pays the process's model load (a fresh `thresher round` does too); round 2
        # and the peer run warm, so round 2 / peer is the cost of going through Argilla
        out["ratio_round1_vs_peer"] = round(rounds[0]["wall_s"] / peer_s, 2)
        out["ratio_round2_vs_peer"] = round(rounds[1]["wall_s"] / peer_s, 2)
    finally:
        server_down(paths)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
