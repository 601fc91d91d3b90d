"""The LoRA learner (tune's classifier behind the loop's Learner protocol): a few CPU steps on
the planted set, probabilities in the round's class order, save/load through the train step's
files. Skipped where the ``tune`` package is not installed."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tune.train")

pytestmark = pytest.mark.slow


def _fit_save_load(tmp_path, make_planted):
    """Fit on the planted set, save as the train step does, load back; checks on the way."""
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
    return folder, opts, texts, labels, classes


def test_lora_learner_fit_predict_save_load(tmp_path, make_planted):
    folder, *_ = _fit_save_load(tmp_path, make_planted)
    assert (folder / "run" / "adapter").is_dir()


def test_lora_learner_warm_starts_from_the_previous_round(tmp_path, make_planted):
    import json

    from loop.lora import LoraLearner
    from loop.steps import save_learner

    folder, opts, texts, labels, classes = _fit_save_load(tmp_path, make_planted)
    warm = LoraLearner(classes, opts, warm_start=folder).fit(texts, labels)
    assert warm.started_from == folder / "run"
    config = json.loads((warm.run_dir / "config.json").read_text())
    assert config["options"]["init_adapter"] == str(folder / "run")
    out = tmp_path / "next"
    out.mkdir()
    save_learner(warm, out)
    assert json.loads((out / "lora.json").read_text())["warm_start_from"] == str(folder / "run")
    fewer = [t for t, lab in zip(texts, labels, strict=True) if lab != "food"]
    cold = LoraLearner(classes, opts, warm_start=folder).fit(
        fewer, [lab for lab in labels if lab != "food"]
    )  # a label set that differs from the previous round's: no warm start
    assert cold.started_from is None
