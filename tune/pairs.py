"""SFT on free instruction/response pairs (``--task sft --response-col COLUMN``).

The record's text is the instruction (filled into ``prompt_template``) and the response column
(a top-level column, or a key of the ``metadata`` JSON that ingest keeps for extra input columns) is
the answer. There are no classes, so:
- the split is the project's usual fixed, seeded, cluster-aware split (unstratified);
- curated = dedup representatives with a response (label-noise scores do not apply);
- quality = the answer's negative log-likelihood per token on val/test (``loss``, lower is
  better) and its ``perplexity``; early stopping watches the validation loss;
- ``errors.parquet`` lists the val/test pairs the model finds least likely (per-token loss above
  the 80th percentile): what to send back for review;
- ``tune eval`` compares with the base model without the adapter (``--against baseline``) or
  another pairs run, with a paired bootstrap CI of the loss difference.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from thresher.errors import ThresherError
from thresher.project import Project
from thresher.split import ensure_split
from tune.data import (
    EmptyDataError,
    TuneData,
    cluster_info,
    load_records,
    one_per_cluster,
    representatives,
    slices_of,
)
from tune.options import DataOptions
from tune.runtime import default_device, read_run_config

log = logging.getLogger(__name__)

ERROR_QUANTILE = 0.8  # errors.parquet: pairs whose per-token loss is above this quantile


def response_values(frame, column: str):
    """The response per record: ``frame[column]``, or ``metadata[column]`` (None when missing)."""
    import pandas as pd

    if column in frame.columns:
        values = frame[column]
    elif "metadata" in frame.columns:

        def pick(meta: Any) -> Any:
            if not isinstance(meta, str) or not meta:
                return None
            try:
                return json.loads(meta).get(column)
            except (ValueError, AttributeError):
                return None

        values = frame["metadata"].map(pick)
    else:
        values = pd.Series([None] * len(frame), index=frame.index)
    text = values.map(lambda v: None if v is None or str(v).strip() == "" else str(v))
    return text.where(values.notna(), None)


def build_pairs_dataset(project: Project, opts: DataOptions) -> TuneData:
    """Train/val/test frames (``id, text, label=response, weight, slice``) of instruction/response
    pairs; ``labels`` is empty and ``pairs`` is set."""
    import pandas as pd

    column = str(opts.response_column)
    if opts.mode not in ("raw", "curated"):
        raise ThresherError(f"unknown data mode {opts.mode!r}; use raw or curated")
    stage, frame = load_records(project, opts.mode, require_label=False)  # pairs need no label
    frame = cluster_info(project, frame).copy()
    frame["id"] = frame["id"].astype(str)
    response = response_values(frame, column)
    if response.notna().sum() == 0:
        raise EmptyDataError(
            f"no record in {project.root} has a {column!r} response (column or metadata key); "
            f"ingest a file with a {column} column, or fix --response-col"
        )
    has_pair = response.map(lambda v: None if v is None else "pair")
    split = ensure_split(project, frame, has_pair, opts.split_spec())
    frame = frame.merge(split[["id", "split", "group"]], on="id", how="left")
    response = response.set_axis(frame.index)  # a left merge on unique ids keeps the row order
    counts: dict[str, int] = {"records": len(frame), "no_response": int(response.isna().sum())}
    base = pd.DataFrame(
        {
            "id": frame["id"],
            "text": frame["text"].astype(str),
            "label": response,
            "weight": 1.0,
            "slice": slices_of(frame),
        }
    )
    is_rep = representatives(frame)
    parts = {}
    for name in ("val", "test"):
        rows = frame["split"].eq(name) & response.notna()
        parts[name] = one_per_cluster(base[rows], is_rep[rows], frame["group"][rows])
    rows = frame["split"].eq("train") & response.notna()
    if opts.mode == "curated":
        counts["dropped_duplicates"] = int((rows & ~is_rep).sum())
        rows &= is_rep
    counts["held_out_duplicates"] = int(frame["split"].eq("held").sum())
    train = base[rows]
    counts.update(train=len(train), val=len(parts["val"]), test=len(parts["test"]))
    if len(train) == 0:
        raise EmptyDataError(
            f"no training pairs in {project.root} ({opts.mode} set; counts {counts}); "
            "ingest more pairs or lower val/test fractions"
        )
    return TuneData(
        train=train.reset_index(drop=True),
        val=parts["val"].reset_index(drop=True),
        test=parts["test"].reset_index(drop=True),
        labels=[],
        counts=counts,
        source_stage=stage,
        pairs=True,
    )


# ---- scoring ----------------------------------------------------------------------------------


def answer_nll(
    model,
    tokenizer,
    texts,
    responses,
    *,
    template: str,
    max_length: int,
    batch_size: int,
    device,
    amp_dtype=None,
):
    """(sum of the answer tokens' negative log-likelihood, answer token count) per pair."""
    import numpy as np
    import torch

    from tune.modeling import answer_logprob, autocast, collate, encode_sft, order_by_length

    n = len(texts)
    nll, tokens = np.zeros(n, dtype="float64"), np.zeros(n, dtype="int64")
    if n == 0:
        return nll, tokens
    enc = encode_sft(tokenizer, texts, responses, [1.0] * n, template, max_length)
    order = order_by_length([len(x) for x in enc.input_ids])
    model.eval()
    with torch.no_grad(), autocast(device, amp_dtype):
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            x, m, y = collate(
                [enc.input_ids[i] for i in idx],
                [enc.labels[i] for i in idx],
                tokenizer.pad_token_id,
                "sft",
            )
            logits = model(
                input_ids=x.to(device), attention_mask=m.to(device), use_cache=False
            ).logits
            logp, count = answer_logprob(logits, y.to(device))
            nll[idx] = (-logp).double().cpu().numpy()
            tokens[idx] = count.cpu().numpy()
    return nll, tokens


def pairs_metrics(nll, tokens) -> dict[str, Any]:
    """Token-weighted mean answer loss (nats/token, lower = better) and perplexity."""
    total = int(tokens.sum())
    if total == 0:
        return {"n": int(len(nll)), "loss": None, "perplexity": None}
    loss = float(nll.sum() / total)
    return {"n": int(len(nll)), "tokens": total, "loss": loss, "perplexity": math.exp(loss)}


def pairs_error_table(frame, nll, tokens, quantile: float = ERROR_QUANTILE):
    """Pairs whose per-token loss is above ``quantile`` of this table, least likely first."""
    import numpy as np
    import pandas as pd

    per_token = nll / np.maximum(tokens, 1)
    cut = float(np.quantile(per_token, quantile)) if len(per_token) else 0.0
    keep = per_token > cut
    out = pd.DataFrame(
        {
            "id": frame["id"].to_numpy()[keep],
            "text": frame["text"].to_numpy()[keep],
            "gold": frame["label"].to_numpy()[keep],
            "loss": per_token[keep],
            "slice": [",".join(s) for s, k in zip(frame["slice"], keep, strict=True) if k],
        }
    )
    if "split" in frame.columns:
        out["split"] = frame["split"].to_numpy()[keep]
    return out.sort_values("loss", ascending=False).reset_index(drop=True)


def bootstrap_loss_diff(nll_a, nll_b, tokens, n_boot: int = 1000, seed: int = 0):
    """Paired bootstrap over pairs of (loss a - loss b), token-weighted; negative = a better."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(tokens)

    def diff(idx):
        t = tokens[idx].sum()
        return float((nll_a[idx].sum() - nll_b[idx].sum()) / max(t, 1))

    point = diff(np.arange(n))
    boots = [diff(rng.integers(0, n, n)) for _ in range(n_boot)] if n else [0.0]
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"diff": point, "ci_low": float(low), "ci_high": float(high), "n_boot": n_boot}


def evaluate_pairs_run(run_dir: Path, against: str = "baseline", n_boot: int = 1000, seed: int = 0):
    """Test loss/perplexity of a pairs run vs the base model without the adapter, or another
    pairs run (on the test pairs both scored)."""
    import pandas as pd

    from thresher.project import atomic_write_json

    frame = pd.read_parquet(run_dir / "predictions.parquet")
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    if len(test) == 0:
        raise ThresherError(f"{run_dir}: the test split is empty; add pairs and retrain")
    nll, tokens = test["nll"].to_numpy(), test["tokens"].to_numpy()
    result: dict[str, Any] = {"run": run_dir.name, **pairs_metrics(nll, tokens)}
    if against == "baseline":
        other_nll, name = _base_model_nll(run_dir, test), "base model (no adapter)"
        result["baseline"] = pairs_metrics(other_nll, tokens)
        cmp = bootstrap_loss_diff(nll, other_nll, tokens, n_boot, seed)
    else:
        other_dir = Path(against) if Path(against).exists() else run_dir.parent / against
        other = pd.read_parquet(other_dir / "predictions.parquet")
        if "nll" not in other.columns:
            raise ThresherError(f"{other_dir} is not a pairs run; compare pairs runs together")
        joined = test.merge(other[other["split"] == "test"], on="id", suffixes=("", "_o"))
        if joined.empty:
            raise ThresherError(f"{run_dir} and {other_dir} share no test pairs")
        tokens = joined["tokens"].to_numpy()
        nll, other_nll = joined["nll"].to_numpy(), joined["nll_o"].to_numpy()
        name = other_dir.name
        result["other_run"] = pairs_metrics(other_nll, tokens)
        cmp = bootstrap_loss_diff(nll, other_nll, tokens, n_boot, seed)
        cmp["n_shared"] = int(len(joined))
    result["comparison"] = {"against": name, "metric": "loss (nats/token, lower = better)", **cmp}
    atomic_write_json(run_dir / "eval.json", result)
    return result


def _base_model_nll(run_dir: Path, test):
    """Answer NLL of the test pairs under the run's base model, without the adapter."""
    from thresher.assets import ModelRef
    from tune.modeling import load_base, load_tokenizer

    config = read_run_config(run_dir)
    ref = ModelRef(**config["base"])
    options = config["options"]
    device = default_device()
    tok = load_tokenizer(ref)
    # The base the adapter was trained on (4-bit for a QLoRA run), so the comparison is fair.
    model = load_base(ref, "sft", [], tok, qlora=options.get("qlora", False), device=device)
    model = model.to(device)
    nll, _ = answer_nll(
        model,
        tok,
        list(test["text"]),
        list(test["gold"]),
        template=options["prompt_template"],
        max_length=options["max_length"],
        batch_size=options["eval_batch_size"],
        device=device,
    )
    return nll
