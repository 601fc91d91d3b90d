"""SIMULATED production traffic for the demo: send texts to a running ``thresher serve``.

Demo tooling, not part of the product loop: it stands in for the application that calls the
model in production. It sends demo-corpus reviews the project has not ingested, with a share of
text from another domain (2016 US debate statements, ``thresher.assets.debate_statements``)
mixed in, as requests of 1 to 8 texts from several concurrent clients, so that ``thresher
monitor`` has a shifted window to find and ``thresher round --from-traffic`` production records
to send back to annotators.

    python -m loop.demo_traffic -p DIR --url http://127.0.0.1:8000 --n 400 --shift 0.25
"""

from __future__ import annotations

import argparse
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def traffic_texts(project: Path, n: int, shift: float, seed: int = 0) -> list[str]:
    """``n`` texts in random order: reviews the project does not hold, and ``shift`` of them
    debate statements."""
    import pandas as pd

    from thresher.assets import debate_statements, write_demo_corpus
    from thresher.project import Project

    _, records = Project.at(project).latest_records(["score", "dedup", "ingest"])
    known = set(pd.read_parquet(records, columns=["text"])["text"])
    corpus = pd.read_csv(write_demo_corpus(project / "demo" / "rotten_tomatoes.csv"))
    reviews = [t for t in corpus["text"].astype(str) if t not in known]
    rng = random.Random(seed)
    n_shift = round(n * shift)
    texts = rng.sample(reviews, n - n_shift) + rng.sample(debate_statements(), n_shift)
    rng.shuffle(texts)
    return texts


def send(url: str, texts: list[str], clients: int, seed: int = 0) -> dict[str, float]:
    """POST ``texts`` to ``url``/v1/predict in requests of 1-8 texts from ``clients`` threads;
    records/s and how many texts were answered."""
    import httpx

    rng = random.Random(seed)
    requests, i = [], 0
    while i < len(texts):
        size = rng.randint(1, 8)
        requests.append(texts[i : i + size])
        i += size

    def post(chunk: list[str]) -> int:
        response = httpx.post(f"{url}/v1/predict", json={"texts": chunk}, timeout=120)
        response.raise_for_status()
        return len(response.json()["predictions"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answered = sum(pool.map(post, requests))
    seconds = time.perf_counter() - t0
    return {
        "requests": len(requests),
        "answered": answered,
        "seconds": round(seconds, 2),
        "records_per_s": round(answered / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--project", type=Path, required=True)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--n", type=int, default=400, help="texts to send")
    parser.add_argument("--shift", type=float, default=0.25, help="share of debate statements")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    texts = traffic_texts(args.project, args.n, args.shift, args.seed)
    figures = send(args.url.rstrip("/"), texts, args.clients, args.seed)
    print(
        f"   SIMULATED traffic: {figures['answered']} texts ({args.shift:.0%} debate statements) "
        f"in {figures['requests']} requests from {args.clients} clients, "
        f"{figures['records_per_s']} texts/s"
    )


if __name__ == "__main__":
    main()
