"""SetFit-style few-shot pre-labelling: contrastive fine-tuning of the sentence encoder.

Recipe (after Tunstall et al., 2022, "Efficient Few-Shot Learning Without Prompts"):

1. pairs of reviewed records, half from the same class (target cosine 1) and half from two
   different classes (target 0), drawn at random with a seed (``contrastive_pairs``);
2. a few optimizer steps of the packaged encoder (a fresh copy, float32; the token embedding
   table frozen) on the mean squared error between the pair's cosine similarity and its target
   (``tune_encoder``);
3. every record embedded with the tuned encoder, and a head fitted on the reviewed records'
   vectors (``head(vectors, y, seed)``: ``prelabel`` passes its few-shot model, class-balanced
   logistic regression).

The tuned encoder lives in memory for the run only (it is not cached or saved), and its vectors
never enter the project's embedding cache: they belong to this fit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from thresher.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetFitOptions:
    """``steps``: optimizer steps of ``batch`` pairs each (the cost grows linearly with both);
    ``lr``: AdamW learning rate; ``max_length``: tokens per text kept for tuning and embedding."""

    steps: int = 20
    batch: int = 16
    lr: float = 2e-5
    max_length: int = 128
    seed: int = 0


def contrastive_pairs(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) int array of pairs ``(i, j, same)`` over the records' class ids ``y``: every other
    pair is a positive one (``i != j`` from one class, ``same = 1``), the rest negatives (two
    classes, ``same = 0``). Needs 2 records in some class and at least 2 classes."""
    y = np.asarray(y)
    classes = np.unique(y)
    members = {int(c): np.flatnonzero(y == c) for c in classes}
    positive = [c for c, idx in members.items() if len(idx) >= 2]
    if len(classes) < 2 or not positive:
        raise InputError("contrastive pairs need 2 classes and 2 records in one class")
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3), dtype=np.int64)
    for k in range(n):
        if k % 2 == 0:
            i, j = rng.choice(members[int(rng.choice(positive))], 2, replace=False)
            out[k] = (i, j, 1)
        else:
            a, b = rng.choice(classes, 2, replace=False)
            out[k] = (rng.choice(members[int(a)]), rng.choice(members[int(b)]), 0)
    return out


def tune_encoder(texts: Sequence[str], y: np.ndarray, model: str, opts: SetFitOptions):
    """A fresh ``SentenceTransformer`` for ``model`` (float32, CPU unless CUDA is there) after
    ``opts.steps`` steps of cosine-similarity loss on ``contrastive_pairs`` of the records."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from sentence_transformers import SentenceTransformer

    from thresher.assets import resolve_model
    from thresher.embeddings import check_module_types

    ref = resolve_model(model, "embedding")
    if ref.is_local:
        from pathlib import Path

        check_module_types(Path(ref.path))
    torch.manual_seed(opts.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = SentenceTransformer(ref.path, device=device)
    encoder.max_seq_length = opts.max_length
    # The token embedding table is half of MiniLM's weights and a few steps barely move it:
    # frozen, the optimizer step costs half as much on a CPU.
    for name, param in encoder.named_parameters():
        if "word_embeddings" in name:
            param.requires_grad_(False)
    pairs = contrastive_pairs(y, opts.steps * opts.batch, opts.seed)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=opts.lr)
    encoder.train()

    def forward(batch: list[str]) -> torch.Tensor:
        features = prepare(batch)  # tokenizer output plus, in v6, non-tensor entries
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        return encoder(features)["sentence_embedding"]

    prepare = getattr(encoder, "preprocess", None) or encoder.tokenize  # renamed in v6
    losses = []
    for step in range(opts.steps):
        part = pairs[step * opts.batch : (step + 1) * opts.batch]
        a = forward([texts[i] for i in part[:, 0]])
        b = forward([texts[i] for i in part[:, 1]])
        target = torch.as_tensor(part[:, 2], dtype=a.dtype, device=device)
        loss = F.mse_loss(F.cosine_similarity(a, b), target)
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses.append(float(loss.detach()))
    encoder.eval()
    if losses:
        log.info("setfit: %d steps, loss %.4f → %.4f", opts.steps, losses[0], losses[-1])
    return encoder


def encode(encoder, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 vectors of ``texts`` under ``encoder``."""
    if not texts:
        return np.zeros((0, 1), dtype="float32")
    vectors = encoder.encode(
        list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
    ).astype("float32")
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)


def setfit_probs(
    texts: Sequence[str],
    reviewed: Sequence[int],
    y: np.ndarray,
    n_classes: int,
    *,
    head: Callable,
    model: str = "default",
    opts: SetFitOptions | None = None,
    predict: Sequence[int] | None = None,
) -> np.ndarray:
    """(len(predict), n_classes) probabilities of the records at ``predict`` (default: all of
    ``texts``) from a SetFit fit on the records at ``reviewed`` with class ids ``y``;
    ``head(vectors, y, seed)`` returns a fitted scikit-learn classifier."""
    opts = opts or SetFitOptions()
    train_texts = [texts[i] for i in reviewed]
    encoder = tune_encoder(train_texts, np.asarray(y), model, opts)
    head = head(encode(encoder, train_texts), np.asarray(y), opts.seed)
    targets = list(range(len(texts))) if predict is None else list(predict)
    probs = np.zeros((len(targets), n_classes))
    probs[:, head.classes_] = head.predict_proba(encode(encoder, [texts[i] for i in targets]))
    return probs


def cross_validated_setfit(
    texts: Sequence[str],
    y: np.ndarray,
    n_classes: int,
    folds: int,
    *,
    head: Callable,
    model: str = "default",
    opts: SetFitOptions | None = None,
) -> np.ndarray:
    """(n, n_classes) out-of-fold SetFit probabilities of the reviewed records ``texts``: each
    is predicted by an encoder and head tuned without its label (``folds`` fits, capped by the
    smallest class)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    k = max(2, min(folds, int(np.bincount(y).min())))
    probs = np.zeros((len(y), n_classes))
    seed = (opts or SetFitOptions()).seed
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(texts, y):
        probs[test] = setfit_probs(
            texts, train, y[train], n_classes, head=head, model=model, opts=opts, predict=test
        )
    return probs


def setfit_prelabels(
    texts: Sequence[str],
    reviewed: Sequence[int],
    gold: Sequence[str],
    labels: Sequence[str],
    opts,
    *,
    head: Callable,
    folds: int = 3,
) -> tuple[np.ndarray, dict]:
    """(probabilities of every record, agreement with the reviewed labels) for ``prelabel``'s
    ``setfit`` method; ``opts`` is its ``PrelabelOptions``. The agreement is cross-validated
    over the reviewed records (``folds`` more fine-tunes); the probabilities come from one fit
    on all of them."""
    from review.agreement import label_agreement

    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[g] for g in gold])
    sf = SetFitOptions(steps=opts.setfit_steps, seed=opts.seed)
    model = opts.embedding_model
    oof = cross_validated_setfit(
        [texts[i] for i in reviewed], y, len(labels), folds, head=head, model=model, opts=sf
    )
    agreement = label_agreement(gold, [labels[j] for j in oof.argmax(axis=1)], labels)
    probs = setfit_probs(texts, reviewed, y, len(labels), head=head, model=model, opts=sf)
    return probs, {**agreement, "how": "cross-validated"}
