"""The LoRA learner (tune's classifier behind the loop's Learner protocol): a few CPU steps on
the planted set, probabilities in the round's class order, save/load through the train step's
files. Skipped where the ``tune`` package is not installed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tune.train")

pytestmark = pytest.mark.slow


def test_lora_learner_fit_predict_save_load(tmp_path, make_planted):
    from loop.lora import LoraLearner
    from loop.steps import load_learner, save_learner
    from tune.options import TuneOptions

    texts, labels = make_planted(96, seed=5)
    classes = ["tech", "sport", "food", "other"]  # not tune's order; "other" never seen
    opts = TuneOptions(max_steps=6, batch_size=16, save_steps=1000, eval_batch_size=64)
    learner = LoraLearner(classes, opts).fit(texts, labels)
    probs = learner.predict_proba(texts[:10])
    assert probs.shape == (10, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert np.all(probs[:, 3] == 0.0)  # an unseen class gets no mass
    folder = tmp_path / "train"
    folder.mkdir()
    save_learner(learner, folder)
    again = load_learner(folder)
    assert isinstance(again, LoraLearner) and again.classes == tuple(classes)
    np.testing.assert_allclose(again.predict_proba(texts[:10]), probs, atol=1e-5)
