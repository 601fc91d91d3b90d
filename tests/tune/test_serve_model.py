"""The served model: precision by hardware (forced both ways), the merged model predicting what
``predict_proba`` predicts without touching its cache, SFT runs trained on labels classifying,
and runs trained on instruction/response pairs generating what the unmerged model generates."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.labelled_project import make_project, synthetic_rows
from thresher import embeddings
from thresher.errors import ThresherError
from tune.options import DataOptions, TuneOptions
from tune.serve_model import ServedModel, choose_precision

FAST = {"batch_size": 8, "lr": 5e-3, "eval_batch_size": 32, "max_length": 32}
TEXTS = ["great superb film", "awful dull mess", "a wonderful charming story", "boring plot"]


@pytest.mark.parametrize(("has_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_the_cpu(monkeypatch, has_bf16, expected):
    import torch

    monkeypatch.setattr(embeddings, "cpu_has_bf16", lambda: has_bf16)
    assert choose_precision("auto", torch.device("cpu")) == expected
    assert choose_precision("fp32", torch.device("cpu")) == "fp32"
    assert choose_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ThresherError, match="--precision 'fp16'"):
        choose_precision("fp16", torch.device("cpu"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, tiny_llama):
    from tests.tune.test_pairs import pair_rows
    from tune import train

    root = tmp_path_factory.mktemp("serve-model")
    labelled = make_project(root / "labelled", synthetic_rows(120, seed=3))
    classify = train(labelled, TuneOptions(base=tiny_bert, run="c", max_steps=16, **FAST))
    sft = train(labelled, TuneOptions(base=tiny_llama, task="sft", run="s", max_steps=4, **FAST))
    pairs_project = make_project(root / "pairs", pair_rows(60))
    pairs = train(
        pairs_project,
        TuneOptions(
            base=tiny_llama,
            task="sft",
            run="p",
            max_steps=4,
            data=DataOptions(response_column="response"),
            **FAST,
        ),
    )
    return {"classify": classify, "sft": sft, "pairs": pairs}


@pytest.mark.slow
@pytest.mark.parametrize("run", ["classify", "sft"])
def test_merged_fp32_predicts_what_predict_proba_predicts(trained, run, monkeypatch):
    from tune.predict import predict_proba

    before = predict_proba(trained[run], TEXTS)  # cached in tune.predict
    served = ServedModel.load(trained[run], device="cpu", precision="fp32")
    labels, probs = served.predict(TEXTS)
    assert served.kind == "classify" and served.precision == "fp32"
    assert np.allclose(probs, before, atol=1e-3)
    assert labels == [served.labels[i] for i in before.argmax(1)]
    assert np.allclose(predict_proba(trained[run], TEXTS), before, atol=1e-6)  # cache untouched

    monkeypatch.setattr(embeddings, "cpu_has_bf16", lambda: True)
    fast = ServedModel.load(trained[run], device="cpu", precision="auto")
    fast_labels, fast_probs = fast.predict(TEXTS)
    assert fast.precision == "bf16" and fast_labels == labels
    assert np.allclose(fast_probs, probs, atol=0.05)
    monkeypatch.setattr(embeddings, "cpu_has_bf16", lambda: False)
    assert ServedModel.load(trained[run], device="cpu").precision == "fp32"


@pytest.mark.slow
def test_a_pairs_run_generates_what_the_unmerged_model_generates(trained):
    import torch

    from tune.predict import load_run, unload_run

    served = ServedModel.load(trained["pairs"], device="cpu", precision="fp32")
    assert served.kind == "generate" and served.labels == []
    with pytest.raises(ThresherError, match="generates text"):
        served.predict(["x"])
    prompts = ["question 1: say the word great", "say brilliant"]
    texts = served.generate(prompts, max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)

    unmerged = load_run(trained["pairs"], "cpu")
    tok = unmerged.tokenizer
    template = unmerged.options.prompt_template
    want = []
    for prompt in prompts:  # one at a time: no padding at all
        ids = tok(template.replace("{text}", prompt))["input_ids"][:-1]  # drop the trailing [SEP]
        with torch.no_grad():
            out = unmerged.model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        want.append(tok.decode(out[0, len(ids) :], skip_special_tokens=True).strip())
    unload_run(trained["pairs"])
    assert texts == want
