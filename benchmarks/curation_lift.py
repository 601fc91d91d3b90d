"""Curation lift: the same LoRA recipe trained on the raw set vs the curated set, with planted
label noise, scored on a clean test split.

Per seed (the subsample, the flips and the training seed all follow it):
1. Ingest a stratified subsample of the demo corpus; the project's split is made on clean labels.
2. Flip ``--flip`` of the train+val labels (the test split stays clean) and re-ingest (same ids):
   ``--noise symmetric`` (default) draws them from both classes, ``--noise oneway`` only from
   ``rotten`` records, relabelled ``fresh`` (class-conditional noise).
3. Label issues: ``--detector score`` (default) runs the real score stage (``curate.score.score``
   with default ``ScoreOptions``: emb+svm ensemble, 2x5 shuffled folds) on the noisy project;
   ``--detector inline`` is the earlier weak stand-in (cleanlab on 5-fold logistic regression over
   MiniLM embeddings). Either writes ``DIR/score/records.parquet``, which ``tune/data.py`` reads.
4. One run per variant, identical recipe (``--epochs``/``--steps``, early stopping on val
   macro-F1), all scored on the same clean test records:
   - ``raw``: ``--data raw``;
   - ``POLICY[@P][+val]``: ``--data curated`` with ``label_issues: POLICY`` (exclude, downweight,
     relabel, keep), ``issue_min_prob: P`` and ``curate_val: true`` with ``+val``;
   - ``oracle-POLICY[+val]``: the same with the detector replaced by the truth (exactly the
     flipped rows flagged, their true label as ``predicted_label``): the ceiling of cleaning.
     ``oracle-relabel`` trains on the clean labels.
   - ``reviewK-POLICY``: the product's review loop, simulated: annotators settle the K most
     suspicious flagged train/val records (lowest ``label_quality``) with their true labels
     (``DIR/review/annotations.parquet``); the other flags follow POLICY.
5. Per variant: test macro-F1, lift over raw with a paired bootstrap 95 % CI (per seed, and
   pooled over seeds: test rows resampled within each seed, the mean lift recomputed), the
   detector's precision/recall on the rows the policy acted on, train seconds.

    python benchmarks/curation_lift.py [--size 2000] [--flip 0.2] [--noise symmetric|oneway]
        [--seeds 0 1 2]
        [--epochs 3 | --steps 88] [--variants raw oracle-exclude exclude relabel@0.8 ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402
from tune_cpu import demo_project  # noqa: E402

OTHER = {"fresh": "rotten", "rotten": "fresh"}
ONEWAY_SOURCE = "rotten"  # --noise oneway: rotten records mislabelled fresh


def flip_train_labels(project: Path, rate: float, seed: int, noise: str = "symmetric") -> set[str]:
    """Re-ingest the project's input with ``rate`` of train/val labels flipped; returns the ids.
    ``symmetric``: the flipped records are drawn from both classes alike; ``oneway``
    (class-conditional noise, e.g. an annotator who leans positive): all of them are ``rotten``
    records labelled ``fresh`` (``rate`` of all train/val records, about twice that share of the
    rotten ones)."""
    import numpy as np
    import pandas as pd

    from curate.ingest import IngestOptions, ingest
    from thresher.project import Project
    from tune.data import build_dataset
    from tune.options import DataOptions

    proj = Project.at(project)
    build_dataset(proj, DataOptions(seed=seed))  # makes the split on clean labels
    split = pd.read_parquet(project / "tune" / "split.parquet")
    records = pd.read_parquet(proj.records_path("ingest"))
    trainval = set(split["id"][split["split"].isin(["train", "val"])])
    rng = np.random.default_rng(seed)
    candidates = records[records["id"].isin(trainval)]
    n_flip = round(rate * len(candidates))
    if noise == "oneway":
        candidates = candidates[candidates["label"] == ONEWAY_SOURCE]
    flipped = candidates.sample(n=n_flip, random_state=int(rng.integers(1 << 31)))
    records.loc[flipped.index, "label"] = records.loc[flipped.index, "label"].map(OTHER)
    src = project.parent / "noisy.csv"
    records[["text", "label"]].to_csv(src, index=False)
    ingest([src], proj, IngestOptions(labels=("fresh", "rotten")), force=True)
    return set(flipped["id"])


def score_inline(project: Path) -> str:
    """DIR/score/records.parquet with label_issue from cleanlab on 5-fold out-of-sample
    logistic-regression probabilities over MiniLM embeddings."""
    import numpy as np
    import pandas as pd
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from thresher.embeddings import embed_texts
    from thresher.project import Project

    proj = Project.at(project)
    records = pd.read_parquet(proj.records_path("ingest"))
    known = records["label"].notna().to_numpy()
    classes = sorted(records["label"][known].unique())
    y = records["label"][known].map({c: i for i, c in enumerate(classes)}).to_numpy()
    x = embed_texts(records["text"].tolist(), cache_dir=project / ".cache" / "embeddings")
    model = LogisticRegression(max_iter=2000, C=4.0)
    probs = np.zeros((len(records), len(classes)))
    probs[known] = cross_val_predict(model, x[known], y, cv=5, method="predict_proba")
    probs[~known] = model.fit(x[known], y).predict_proba(x[~known])
    records["label_issue"] = False
    records.loc[known, "label_issue"] = find_label_issues(
        y, probs[known], filter_by="prune_by_noise_rate"
    )
    records["label_quality"] = np.nan
    records.loc[known, "label_quality"] = probs[known][np.arange(len(y)), y]
    pred = probs.argmax(axis=1)
    records["predicted_label"] = [classes[i] for i in pred]
    records["predicted_prob"] = probs[np.arange(len(records)), pred]
    proj.stage_dir("score").mkdir(parents=True, exist_ok=True)
    records.to_parquet(proj.records_path("score"), index=False)
    return "inline cleanlab (MiniLM embeddings + logreg, 5-fold out-of-sample probs)"


def hidden_test_labels(project: Path, run):
    """Run ``run()`` with the test split's labels hidden from the ingest records (so the label
    issue detector never learns from test labels), then put them back into ingest and score."""
    import pandas as pd

    from thresher.project import Project

    proj = Project.at(project)
    split = pd.read_parquet(project / "tune" / "split.parquet")
    test = set(split["id"][split["split"] == "test"])
    path = proj.records_path("ingest")
    records = pd.read_parquet(path)
    hidden = records.assign(label=records["label"].where(~records["id"].isin(test), None))
    hidden.to_parquet(path, index=False)
    try:
        result = run()
    finally:
        records.to_parquet(path, index=False)
    scored = pd.read_parquet(proj.records_path("score"))
    gold = dict(zip(records["id"], records["label"], strict=True))
    scored["label"] = scored["id"].map(gold)
    scored.to_parquet(proj.records_path("score"), index=False)
    return result


def score_stage(project: Path, seed: int) -> str:
    """DIR/score/records.parquet from the real score stage (default options), test labels hidden."""
    from curate.score import ScoreOptions, score
    from thresher.project import Project

    opts = ScoreOptions(seed=seed)
    res = hidden_test_labels(project, lambda: score(Project.at(project), opts, force=True))
    return (
        f"score stage (curate.score, learners {'+'.join(res.learners)}, "
        f"{opts.repeats}x{res.folds} folds, default options)"
    )


def parse_variant(name: str) -> dict:
    """``raw`` | ``[oracle-|reviewK-]POLICY[@MIN_PROB][+val][~PRIOR]`` → mode, policy, min prob,
    oracle, review budget, val, class prior (``~uniform``: the score stage's ``class_prior``)."""
    if name == "raw":
        return {
            "mode": "raw",
            "policy": "keep",
            "min_prob": 0.0,
            "oracle": False,
            "review": 0,
            "val": False,
            "prior": "observed",
        }
    name, _, prior = name.partition("~")
    rest, val = (name[:-4], True) if name.endswith("+val") else (name, False)
    oracle = rest.startswith("oracle-")
    rest = rest.removeprefix("oracle-")
    review = 0
    if rest.startswith("review"):
        budget, _, rest = rest.partition("-")
        review = int(budget.removeprefix("review"))
    policy, _, prob = rest.partition("@")
    return {
        "mode": "curated",
        "policy": policy,
        "min_prob": float(prob or 0.0),
        "oracle": oracle,
        "review": review,
        "val": val,
        "prior": prior or "observed",
    }


def with_class_prior(detected, hidden: set[str], prior: str):
    """The score records as ``curate score --class-prior PRIOR`` writes them: the same
    out-of-sample probabilities (``pred_probs``), re-weighted to ``prior`` and scored again by
    the stage's last step (``curate.noise.noise_result``), the hidden test labels unseen."""
    import numpy as np

    from curate import noise

    frame = detected.copy()
    seen = [
        None if rid in hidden or not isinstance(label, str) else label
        for rid, label in zip(frame["id"], frame["label"], strict=True)
    ]
    y, classes = noise.encode_labels(seen, sorted(OTHER))
    res = noise.noise_result(
        y, np.stack(frame["pred_probs"].to_numpy()), classes, ranking="normalized_margin",
        filter_by="low_quality", folds=5, learners=("score",), class_prior=prior,
    )  # fmt: skip
    frame["label_issue"] = res.label_issue
    frame["label_quality"] = res.label_quality
    frame["predicted_label"] = res.predicted_label
    frame["predicted_prob"] = res.predicted_prob
    frame["pred_probs"] = list(res.pred_probs)
    return frame


def simulate_review(project: Path, detected, flipped: set[str], trainval: set[str], budget: int):
    """``DIR/review/annotations.parquet`` as if annotators had settled the ``budget`` most
    suspicious flagged train/val records (lowest label_quality) with their true labels."""
    import pandas as pd

    flags = detected[detected["label_issue"].astype(bool) & detected["id"].isin(trainval)]
    top = flags.sort_values(["label_quality", "id"]).head(budget)
    true = top["label"].where(~top["id"].isin(flipped), top["label"].map(OTHER))
    (project / "review").mkdir(exist_ok=True)
    pd.DataFrame({"id": top["id"], "label": true}).to_parquet(
        project / "review" / "annotations.parquet", index=False
    )
    return set(top["id"])


def oracle_frame(detected, flipped: set[str]):
    """The score records with the truth as detector: flipped rows flagged, true label predicted."""
    frame = detected.copy()
    is_flip = frame["id"].isin(flipped)
    frame["label_issue"] = is_flip
    frame["predicted_label"] = frame["label"].where(~is_flip, frame["label"].map(OTHER))
    frame["predicted_prob"] = 1.0
    return frame


def acted_on(detected, spec: dict, trainval: set[str], reviewed: set[str]) -> set[str]:
    """Train/val ids the curation changed (reviewed, excluded, down-weighted or relabelled)."""
    flags = detected[
        detected["label_issue"].astype(bool)
        & detected["id"].isin(trainval)
        & ~detected["id"].isin(reviewed)
    ]
    if spec["min_prob"] > 0:
        flags = flags[flags["predicted_prob"] >= spec["min_prob"]]
    if spec["policy"] == "relabel":
        flags = flags[flags["predicted_label"] != flags["label"]]
    return (set(flags["id"]) if spec["policy"] != "keep" else set()) | reviewed


def pooled_ci(per_seed: list[tuple], n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95 % CI (points) of the mean over seeds of macro-F1(a) - macro-F1(b): test rows resampled
    within each seed. ``per_seed``: (gold, pred_a, pred_b, n_classes) per seed."""
    import numpy as np

    from thresher.metrics import macro_f1

    rng = np.random.default_rng(seed)
    means = np.zeros(n_boot)
    for gold, a, b, k in per_seed:
        n = len(gold)
        for i in range(n_boot):
            idx = rng.integers(0, n, n)
            means[i] += macro_f1(gold[idx], a[idx], k) - macro_f1(gold[idx], b[idx], k)
    means /= len(per_seed)
    return [round(100 * float(np.quantile(means, q)), 2) for q in (0.025, 0.975)]


def test_preds(run: Path):
    import numpy as np
    import pandas as pd

    frame = pd.read_parquet(run / "predictions.parquet")
    test = frame[frame["split"] == "test"].sort_values("id").reset_index(drop=True)
    labels = json.loads((run / "label_map.json").read_text())["labels"]
    index = {label: i for i, label in enumerate(labels)}
    return (
        test["id"].tolist(),
        test["gold"].map(index).to_numpy(),
        np.asarray(test["predicted"].map(index).to_numpy()),
        len(labels),
    )


def cache_file(args, seed: int, name: str) -> Path | None:
    """Where ``--cache`` keeps one (seed, variant) result of this exact setup (None: no cache)."""
    if args.cache is None:
        return None
    key = (
        f"n{args.size}_f{args.flip}{'' if args.noise == 'symmetric' else '_' + args.noise}"
        f"_{args.detector}h_e{args.epochs}_s{args.steps}_p{args.patience}"
        f"_v{args.eval_steps}_lr{args.lr}_w{args.issue_weight}"
    )
    return args.cache / key / f"seed{seed}_{name}.json"


def run_seed(args, seed: int, workdir: Path) -> dict:
    import numpy as np
    import pandas as pd

    from thresher.metrics import macro_f1
    from tune import TuneOptions, train
    from tune.evaluate import bootstrap_diff
    from tune.options import DataOptions

    head_file = cache_file(args, seed, "detector")
    files = [cache_file(args, seed, name) for name in args.variants]
    if head_file is not None and all(f.exists() for f in [head_file, *files]):
        out = json.loads(head_file.read_text())
        out["variants"], out["_preds"] = {}, {}
        for name, f in zip(args.variants, files, strict=True):
            blob = json.loads(f.read_text())
            out["variants"][name] = blob["entry"]
            out["_preds"][name] = (
                blob["ids"],
                np.array(blob["gold"]),
                np.array(blob["pred"]),
                blob["k"],
            )
        return out
    project = demo_project(workdir, args.size, seed)
    flipped = flip_train_labels(project, args.flip, seed, args.noise)
    t0 = time.perf_counter()
    if args.detector == "score":
        scorer = score_stage(project, seed)
    else:
        scorer = hidden_test_labels(project, lambda: score_inline(project))
    score_seconds = round(time.perf_counter() - t0, 1)
    score_path = project / "score" / "records.parquet"
    detected = pd.read_parquet(score_path)
    split = pd.read_parquet(project / "tune" / "split.parquet")
    trainval = set(split["id"][split["split"].isin(["train", "val"])])
    test_ids = set(split["id"][split["split"] == "test"])
    flagged = set(detected["id"][detected["label_issue"]]) & trainval
    out = {
        "seed": seed,
        "flipped": len(flipped),
        "flagged_train_val": len(flagged),
        "detector_precision": round(len(flagged & flipped) / max(1, len(flagged)), 4),
        "detector_recall": round(len(flagged & flipped) / max(1, len(flipped)), 4),
        "score_seconds": score_seconds,
        "label_issue_scorer": scorer,
        "variants": {},
    }
    if head_file is not None:
        head_file.parent.mkdir(parents=True, exist_ok=True)
        head_file.write_text(json.dumps(out))
    oracle = oracle_frame(detected, flipped)
    preds = {}
    for name in args.variants:
        spec = parse_variant(name)
        cached = cache_file(args, seed, name)
        if cached is not None and cached.exists():
            blob = json.loads(cached.read_text())
            out["variants"][name] = blob["entry"]
            preds[name] = (blob["ids"], np.array(blob["gold"]), np.array(blob["pred"]), blob["k"])
            continue
        frame = oracle if spec["oracle"] else detected
        if spec["prior"] != "observed":
            frame = with_class_prior(frame, test_ids, spec["prior"])
        frame.to_parquet(score_path, index=False)
        reviewed = set()
        if spec["review"]:
            reviewed = simulate_review(project, frame, flipped, trainval, spec["review"])
        t0 = time.perf_counter()
        run = train(
            project,
            TuneOptions(
                run=name.replace("@", "_at_").replace("+", "_"),
                epochs=args.epochs,
                max_steps=args.steps,
                batch_size=16,
                max_length=64,
                lr=args.lr,
                patience=args.patience,
                eval_steps=args.eval_steps,
                seed=seed,
                data=DataOptions(
                    mode=spec["mode"],
                    seed=seed,
                    label_issues=spec["policy"],
                    issue_weight=args.issue_weight,
                    issue_min_prob=spec["min_prob"],
                    curate_val=spec["val"],
                ),
            ),
        )
        seconds = round(time.perf_counter() - t0, 1)
        (project / "review" / "annotations.parquet").unlink(missing_ok=True)
        metrics = json.loads((run / "metrics.json").read_text())
        ids, gold, pred, k = test_preds(run)
        preds[name] = (ids, gold, pred, k)
        changed = acted_on(frame, spec, trainval, reviewed) if spec["mode"] != "raw" else set()
        entry = {
            "test_macro_f1": round(macro_f1(gold, pred, k), 4),
            "best_val_macro_f1": metrics["train"].get("best_val_macro_f1"),
            "best_step": metrics["train"].get("best_step"),
            "steps": metrics["train"]["steps"],
            "train_seconds": seconds,
            "acted_on_train_val": len(changed),
            "acted_precision": round(len(changed & flipped) / max(1, len(changed)), 4),
            "acted_recall": round(len(changed & flipped) / max(1, len(flipped)), 4),
            "counts": metrics["data"],
        }
        if name != "raw" and "raw" in preds:
            r_ids, r_gold, r_pred, _ = preds["raw"]
            assert r_ids == ids, "raw and curated runs must be scored on the same test records"
            boot = bootstrap_diff(gold, pred, r_pred, k, n_boot=1000, seed=seed)
            entry["lift_points"] = round(100 * boot["diff"], 2)
            entry["lift_ci95_points"] = [
                round(100 * boot["ci_low"], 2),
                round(100 * boot["ci_high"], 2),
            ]
        out["variants"][name] = entry
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            blob = {
                "entry": entry,
                "ids": ids,
                "gold": gold.tolist(),
                "pred": pred.tolist(),
                "k": k,
            }
            cached.write_text(json.dumps(blob))
        logging.warning(
            "seed %d %s: %s",
            seed,
            name,
            {k: entry.get(k) for k in ("test_macro_f1", "lift_points", "train_seconds")},
        )
    detected.to_parquet(score_path, index=False)
    out["test_n"] = len(preds[args.variants[0]][0])
    out["_preds"] = preds
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2000, help="rows of the demo corpus (0 = all)")
    parser.add_argument("--flip", type=float, default=0.2)
    parser.add_argument(
        "--noise",
        choices=["symmetric", "oneway"],
        default="symmetric",
        help="symmetric flips, or oneway: only rotten records flipped to fresh (class-conditional)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument(
        "--steps", type=int, default=0, help="same optimizer steps for all (0: --epochs each)"
    )
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--eval-steps", type=int, default=0, help="0: validate once per epoch")
    parser.add_argument("--detector", choices=["score", "inline"], default="score")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["raw", "oracle-exclude", "oracle-relabel", "exclude", "downweight", "relabel"],
        help="raw | [oracle-]exclude|downweight|relabel|keep[@MIN_PROB][+val]",
    )
    parser.add_argument("--issue-weight", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--cache", type=Path, default=None, help="keep/reuse each (seed, variant) result here"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.variants[0] != "raw":
        args.variants = ["raw", *[v for v in args.variants if v != "raw"]]

    import numpy as np

    per_seed = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            per_seed.append(run_seed(args, seed, Path(tmp)))
            shutil.rmtree(tmp, ignore_errors=True)

    summary = {}
    for name in args.variants:
        f1 = [s["variants"][name]["test_macro_f1"] for s in per_seed]
        row = {
            "test_macro_f1_mean": round(float(np.mean(f1)), 4),
            "test_macro_f1_per_seed": f1,
            "train_seconds_mean": round(
                float(np.mean([s["variants"][name]["train_seconds"] for s in per_seed])), 1
            ),
        }
        if name != "raw":
            lifts = [s["variants"][name]["lift_points"] for s in per_seed]
            row.update(
                lift_points_mean=round(float(np.mean(lifts)), 2),
                lift_points_sd=round(float(np.std(lifts, ddof=1)), 2) if len(lifts) > 1 else None,
                lift_points_per_seed=lifts,
                lift_ci95_points_per_seed=[
                    s["variants"][name]["lift_ci95_points"] for s in per_seed
                ],
                lift_ci95_points_pooled=pooled_ci(
                    [
                        (
                            s["_preds"][name][1],
                            s["_preds"][name][2],
                            s["_preds"]["raw"][2],
                            s["_preds"][name][3],
                        )
                        for s in per_seed
                    ]
                ),
                acted_precision_mean=round(
                    float(np.mean([s["variants"][name]["acted_precision"] for s in per_seed])), 4
                ),
                acted_recall_mean=round(
                    float(np.mean([s["variants"][name]["acted_recall"] for s in per_seed])), 4
                ),
            )
        summary[name] = row
    for s in per_seed:
        s.pop("_preds")
    out = {
        "benchmark": "curation_lift",
        "corpus": f"demo (Rotten Tomatoes), {args.size or 'all'} rows",
        "flip_rate_train_val": args.flip,
        "noise": args.noise,
        "seeds": args.seeds,
        "detector": args.detector,
        "recipe": {
            "epochs": None if args.steps else args.epochs,
            "steps": args.steps or None,
            "patience": args.patience,
            "eval_steps": args.eval_steps,
            "lr": args.lr,
            "batch_size": 16,
            "max_length": 64,
        },
        "target_points": 3.0,
        "summary": summary,
        "per_seed": per_seed,
    }
    emit(out, args.out)


if __name__ == "__main__":
    main()
