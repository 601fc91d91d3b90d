"""Training round trips with tiny random models on CPU: train → eval → predict → export, resume
after an interrupted run, the SFT path, a 2-process DDP run, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from thresher.cli import main
from thresher.errors import ConfigError, ThresherError
from tune import TuneOptions, evaluate_run, export_run, predict_proba, train
from tune.train import Interrupted, length_grouped_batches

FAST = {"batch_size": 8, "lr": 5e-3, "eval_batch_size": 32, "max_length": 32}


def _losses(run_dir: Path) -> list[float]:
    return [h["loss"] for h in json.loads((run_dir / "history.json").read_text())["loss"]]


def test_length_grouped_batches_cover_everything_once():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10] * 7
    batches = length_grouped_batches(lengths, 4, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(70))
    assert batches == length_grouped_batches(lengths, 4, seed=1)  # seeded
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    plain = length_grouped_batches(lengths, 4, seed=1, group_by_length=False)
    plain_spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain])
    assert spread < plain_spread / 2  # less padding


@pytest.mark.slow
def test_classify_round_trip(project, tiny_bert, tmp_path):
    opts = TuneOptions(base=tiny_bert, run="r1", max_steps=24, eval_steps=8, **FAST)
    run = train(project, opts)
    for name in (
        "adapter",
        "label_map.json",
        "config.json",
        "metrics.json",
        "loss_curve.png",
        "predictions.parquet",
        "errors.parquet",
        "manifest.json",
    ):
        assert (run / name).exists(), name
    assert (run / "adapter" / "adapter_config.json").exists()
    assert (run / "adapter" / "tokenizer_config.json").exists()
    losses = _losses(run)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it learns
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 24 and metrics["train"]["tokens_per_s"] > 0
    assert set(metrics["test"]) >= {"accuracy", "macro_f1", "per_class_f1", "ece", "slices"}
    errors = pd.read_parquet(run / "errors.parquet")
    assert list(errors.columns[:6]) == ["id", "text", "gold", "predicted", "prob", "slice"]

    # rerun with the same data and options: a no-op
    mtime = (run / "manifest.json").stat().st_mtime
    assert train(project, opts) == run and (run / "manifest.json").stat().st_mtime == mtime

    probs = predict_proba(run, ["great superb film", "awful dull mess"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    preds = pd.read_parquet(run / "predictions.parquet")
    test = preds[preds["split"] == "test"]
    again = predict_proba(run, test["text"].tolist())
    assert np.allclose(again, np.stack(test["probs"].to_numpy()), atol=1e-4)

    result = CliRunner().invoke(
        main, ["tune", "eval", "-p", str(project), "--json", "--n-boot", "50"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert {"macro_f1", "accuracy", "baseline", "comparison"} <= set(summary)
    assert set(summary["baseline"]) == {"majority", "tfidf_logreg"}
    assert summary["baseline"]["tfidf_logreg"]["macro_f1"] > 0.9  # the words decide the label
    table = CliRunner().invoke(main, ["tune", "eval", "-p", str(project), "--n-boot", "20"])
    assert table.exit_code == 0 and "tfidf_logreg" in table.output and "95% CI" in table.output

    # export: the merged model loads with plain transformers and predicts the same
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = export_run(run, tmp_path / "merged", merged=True)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    import torch

    with torch.no_grad():
        logits = model(**tok(["great superb film"], return_tensors="pt")).logits
    assert np.allclose(torch.softmax(logits, -1).numpy(), probs[:1], atol=1e-4)
    assert model.config.id2label[0] == "neg"
    adapter = export_run(run, tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").exists()

    runner = CliRunner()
    scored = tmp_path / "scored.csv"
    result = runner.invoke(
        main, ["tune", "predict", "-p", str(project), "--run", "r1", "--out", str(scored), "--json"]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(scored)
    assert len(table) == 160 and {"id", "predicted", "prob", "p_neg", "p_pos"} <= set(table.columns)
    result = runner.invoke(main, ["tune", "export", "-p", str(project), str(tmp_path / "cli-out")])
    assert result.exit_code == 0 and (tmp_path / "cli-out" / "adapter_config.json").exists()


@pytest.mark.slow
def test_resume_after_interrupt_matches_uninterrupted(project, tiny_bert):
    common = dict(base=tiny_bert, max_steps=10, eval_steps=5, save_steps=3, **FAST)
    full = train(project, TuneOptions(run="full", **common))
    with pytest.raises(Interrupted):
        train(project, TuneOptions(run="cut", **common), stop_after=7)  # last checkpoint: step 6
    assert (project / "tune" / ".work" / "cut" / "checkpoint.pt").exists()
    resumed = train(project, TuneOptions(run="cut"), resume=True)
    assert np.allclose(_losses(resumed), _losses(full), atol=1e-5)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert b["test"]["macro_f1"] == pytest.approx(a["test"]["macro_f1"])
    assert b["test"]["ece"] == pytest.approx(a["test"]["ece"], abs=1e-5)
    assert not (project / "tune" / ".work" / "cut").exists()
    same = evaluate_run(resumed, against=str(full), n_boot=50)
    assert same["comparison"]["diff"] == 0 and same["comparison"]["n_shared"] == same["n"]


@pytest.mark.slow
def test_sft_round_trip(project, tiny_llama):
    opts = TuneOptions(base=tiny_llama, task="sft", run="sft", max_steps=12, eval_steps=6, **FAST)
    run = train(project, opts)
    losses = _losses(run)
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    probs = predict_proba(run, ["great superb film", "awful dull"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    result = evaluate_run(run, n_boot=20)
    assert 0 <= result["macro_f1"] <= 1


@pytest.mark.slow
def test_decoder_classification_head(project, tiny_llama):
    run = train(project, TuneOptions(base=tiny_llama, run="dec", max_steps=4, **FAST))
    assert predict_proba(run, ["great film"]).shape == (1, 2)


def _torchrun(project: Path, base: str, name: str, port: int, *extra: str, **env_extra) -> None:
    """The same CLI command under torchrun: 2 CPU processes, gloo."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd(), **env_extra}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-port", str(port), "-m", "thresher", "tune", "train", "-p", str(project),
        "--base", base, "--name", name, "--batch-size", "8", "--max-length", "32", "--json",
        *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too, not only torchrun
        raise
    assert proc.returncode == 0, stderr[-3000:]


@pytest.mark.slow
def test_ddp_two_processes_gloo(project, tiny_bert):
    """2 CPU processes (DDP replicas), one run folder."""
    _torchrun(project, tiny_bert, "ddp", 29533, "--max-steps", "6")
    metrics = json.loads((project / "tune" / "ddp" / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 6


@pytest.mark.slow
def test_fsdp_two_processes_gloo_saves_the_gathered_adapter(project, tiny_llama):
    """2 CPU processes with sharded weights (FSDP2): each rank checkpoints its shard, every rank
    evaluates, and the saved adapter (gathered shards) reproduces the run's own predictions in
    one ordinary process."""
    _torchrun(
        project, tiny_llama, "fsdp", 29534,
        "--strategy", "fsdp", "--max-steps", "6", "--lr", "0.005",
        THRESHER_TUNE__SAVE_STEPS="3",  # per-rank shard checkpoints at steps 3 and 6
    )  # fmt: skip
    run = project / "tune" / "fsdp"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["steps"] == 6
    assert json.loads((run / "config.json").read_text())["options"]["strategy"] == "fsdp"
    preds = pd.read_parquet(run / "predictions.parquet")
    test = preds[preds["split"] == "test"]
    again = predict_proba(run, test["text"].tolist())
    assert np.allclose(again, np.stack(test["probs"].to_numpy()), atol=1e-4)


@pytest.mark.slow
def test_fsdp_resume_after_interrupt_matches_uninterrupted(project, tiny_llama):
    """Each rank reloads its own weight and optimizer shards and the run ends as if uncut."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    script = Path(__file__).parents[1] / "helpers" / "fsdp_resume.py"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-port", "29535", str(script), str(project), tiny_llama,
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    full, cut = project / "tune" / "full", project / "tune" / "cut"
    assert len(_losses(full)) == 8
    assert np.allclose(_losses(cut), _losses(full), atol=1e-5)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    assert b["test"]["macro_f1"] == pytest.approx(a["test"]["macro_f1"])


def test_unknown_base_is_a_one_line_error(project):
    with pytest.raises(ConfigError, match="cannot load"):
        train(project, TuneOptions(base="no-such-org/no-such-model-xyz", max_steps=1))
    result = CliRunner().invoke(
        main, ["tune", "train", "-p", str(project), "--base", "/nonexistent/model/dir"]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and result.output.count("\n") == 1


def test_train_without_records_says_what_to_run(tmp_path):
    result = CliRunner().invoke(main, ["tune", "train", "-p", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "thresher curate ingest" in result.output


def test_fast_sft_loss_matches_full_logits(tiny_llama):
    """Logits only at answer positions give the same loss (and gradients) as full logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.modeling import add_lora, encode_sft, fast_sft_ok, forward_loss, make_batch

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_llama), "sft", 4, 8, 0.0)
    enc = encode_sft(
        tok,
        ["a great film", "dull and long"],
        ["pos", "neg"],
        [1.0, 0.5],
        "Text: {text}\nLabel:",
        32,
    )
    batch = make_batch(enc.input_ids, enc.labels, enc.weights, tok.pad_token_id, "sft")
    assert fast_sft_ok(model)
    fast = forward_loss(model, batch, "sft", fast_sft=True)
    full = forward_loss(model, batch, "sft", fast_sft=False)
    assert torch.allclose(fast, full, atol=1e-5)
    fast.backward()
    g_fast = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    full.backward()
    g_full = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_fast, g_full, strict=True))


def test_compile_switch_and_block_discovery(tiny_llama):
    """``tune.compile`` accepts YAML booleans; blocks are found; auto is off on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from tune.modeling import compile_blocks, repeated_blocks
    from tune.options import switch

    assert [switch(v) for v in (False, True, "AUTO", "no", "on", "Graphs")] == [
        "off",
        "on",
        "auto",
        "off",
        "on",
        "graphs",
    ]
    with pytest.raises(ConfigError, match="tune.compile"):
        switch("sometimes")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    blocks = repeated_blocks(model)
    assert len(blocks) == 2 and blocks[0] is model.model.layers[0]
    assert compile_blocks(model, torch.device("cpu"), "auto") == 0
    assert compile_blocks(model, torch.device("cpu"), "off") == 0
    assert compile_blocks(model, torch.device("cpu"), "graphs") == 0  # compiles the step instead
    assert getattr(blocks[0], "_compiled_call_impl", None) is None


@pytest.mark.slow
def test_compile_failure_falls_back_to_eager(project, tiny_llama, monkeypatch, caplog):
    """A torch.compile error inside a step undoes the compilation and the run goes on eagerly."""
    import importlib

    from torch._dynamo.exc import BackendCompilerFailed

    from tune.modeling import repeated_blocks

    train_module = importlib.import_module("tune.train")

    def broken_compile(model, device, mode):
        def fail(*args, **kwargs):
            raise BackendCompilerFailed(fail, RuntimeError("no compiler here"), None)

        blocks = repeated_blocks(model)
        for block in blocks:
            block._compiled_call_impl = fail
        return len(blocks)

    monkeypatch.setattr(train_module, "compile_blocks", broken_compile)
    with caplog.at_level("WARNING", logger="tune.train"):
        run = train(
            project, TuneOptions(base=tiny_llama, run="c", max_steps=3, compile="on", **FAST)
        )
    assert "continuing uncompiled" in caplog.text
    assert len(_losses(run)) == 3 and all(np.isfinite(_losses(run)))


@pytest.mark.slow
def test_compiled_blocks_give_the_same_loss_and_gradients(tiny_llama):
    """torch.compile of the blocks changes speed, not the maths (CPU inductor here)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tune.modeling import add_lora, compile_blocks, encode_sft, forward_loss, make_batch

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_llama), "sft", 4, 8, 0.0)
    enc = encode_sft(
        tok, ["a great film", "dull"], ["pos", "neg"], [1.0, 1.0], "Text: {text}\nLabel:", 32
    )
    batch = make_batch(enc.input_ids, enc.labels, enc.weights, tok.pad_token_id, "sft")

    def loss_and_grads():
        model.zero_grad()
        loss = forward_loss(model, batch, "sft", fast_sft=True)
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    eager_loss, eager_grads = loss_and_grads()
    assert compile_blocks(model, torch.device("cpu"), "on") == 2
    compiled_loss, compiled_grads = loss_and_grads()
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    for a, b in zip(eager_grads, compiled_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def _peft_model(base: str, labels, r: int = 8):
    from tune.modeling import add_lora, load_base, load_tokenizer, resolve_base

    ref = resolve_base(base, "classify")
    model = load_base(ref, "classify", labels, load_tokenizer(ref))
    return add_lora(model, "classify", r, 16, 0.05)


@pytest.mark.slow
def test_warm_start_loads_the_previous_adapter_and_head(project, tiny_bert, tmp_path):
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from tune.modeling import init_from_adapter

    first = train(project, TuneOptions(base=tiny_bert, run="first", max_steps=8, **FAST))
    saved = load_file(str(first / "adapter" / "adapter_model.safetensors"))
    assert any("classifier" in k for k in saved) and any("lora_A" in k for k in saved)
    model = _peft_model(tiny_bert, ["neg", "pos"])
    before = get_peft_model_state_dict(model)
    assert any(not torch.equal(before[k], saved[k]) for k in saved)  # a fresh init differs
    init_from_adapter(model, first, {"neg": 0, "pos": 1})
    after = get_peft_model_state_dict(model)
    assert set(after) == set(saved)
    assert all(torch.equal(after[k], saved[k]) for k in saved)
    with pytest.raises(ConfigError, match="trained on labels") as err:
        init_from_adapter(_peft_model(tiny_bert, ["a", "b"]), first, {"a": 0, "b": 1})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="does not fit this model") as err:
        init_from_adapter(_peft_model(tiny_bert, ["neg", "pos"], r=4), first, None)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no adapter_model.safetensors"):
        init_from_adapter(model, tmp_path, None)

    # the CLI: a warm-started run from a run name; its fingerprint differs from a cold one
    args = ["tune", "train", "-p", str(project), "--base", tiny_bert, "--max-steps", "4"]
    args += ["--batch-size", "8", "--max-length", "32", "--json"]
    out = CliRunner().invoke(main, [*args, "--run", "warm", "--init-adapter", "first"])
    assert out.exit_code == 0, out.output
    config = json.loads((project / "tune" / "warm" / "config.json").read_text())
    assert config["options"]["init_adapter"] == str(first)
    out = CliRunner().invoke(main, [*args, "--run", "warm2", "--init-adapter", "nope"])
    assert out.exit_code == 1 and "no finished run 'nope'" in out.output


def test_planned_steps_floor_small_sets_and_leave_max_steps_alone():
    from tune.train import planned_steps

    assert planned_steps(TuneOptions(epochs=3.0), steps_per_epoch=10) == 150  # 30 → the floor
    assert planned_steps(TuneOptions(epochs=3.0), steps_per_epoch=100) == 300
    assert planned_steps(TuneOptions(epochs=3.0, min_steps=0), steps_per_epoch=10) == 30
    assert planned_steps(TuneOptions(max_steps=7), steps_per_epoch=10) == 7


def test_options_saved_before_the_step_floor_keep_their_run_length():
    saved = TuneOptions(epochs=2.0).to_dict()
    assert TuneOptions.from_dict(saved).min_steps == 150
    del saved["min_steps"]  # a run saved by an earlier version
    assert TuneOptions.from_dict(saved).min_steps == 0


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_run_names_leaving_the_tune_folder_are_refused_untouched(project, tmp_path):
    """`--run /some/folder` used to delete that folder, and `--run ../ingest` to replace the
    project's ingest stage; every hostile name is now one line, exit 1, before any write."""
    from tests.helpers.names import HOSTILE

    victim = tmp_path / "abs" / "folder"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("keep")
    (project / "tune" / "keep").mkdir(parents=True)
    (project / "tune" / "keep" / "config.json").write_text("{}")
    before, outside = _tree(project), _tree(victim)
    runner = CliRunner()
    for name in [*HOSTILE, "../ingest", "../../proj", str(victim)]:
        for extra in ([], ["--resume"]):
            out = runner.invoke(main, ["tune", "train", "-p", str(project), "--run", name, *extra])
            assert out.exit_code == 1, (name, out.output)
            assert len(out.output.strip().splitlines()) == 1 and "--run" in out.output, name
        with pytest.raises(ThresherError, match="is not a valid name"):
            train(project, TuneOptions(run=name))  # the library boundary
        for command in (["eval"], ["predict"], ["export", str(tmp_path / "out")]):
            out = runner.invoke(main, ["tune", *command, "-p", str(project), "--run", name])
            assert out.exit_code == 1, (command, name, out.output)
            assert len(out.output.strip().splitlines()) == 1, (command, name, out.output)
    assert _tree(project) == before and _tree(victim) == outside
    assert not (tmp_path / "out").exists()


class _Plant:
    """Unpickling this creates ``marker``: the side effect of a planted checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_checkpoint_is_refused_and_never_run(project, tiny_bert, tmp_path):
    """Resuming reads checkpoints with weights_only=True: a checkpoint that needs code to load
    (here one that creates a file) is a one-line error and its code does not run."""
    import torch

    marker = tmp_path / "pwned"
    work = project / "tune" / ".work" / "evil"
    work.mkdir(parents=True)
    opts = TuneOptions(run="evil", base=tiny_bert, max_steps=2, **FAST)
    (work / "options.json").write_text(json.dumps(opts.to_dict()))
    torch.save({"weights": {}, "rng": _Plant(str(marker))}, work / "checkpoint.pt")
    torch.load(work / "checkpoint.pt", weights_only=False)  # the plant is live ...
    assert marker.exists()
    marker.unlink()
    args = ["tune", "train", "-p", str(project), "--run", "evil", "--resume"]
    out = CliRunner().invoke(main, args)
    last = out.output.strip().splitlines()[-1]  # (above it: the model loader's progress bar)
    assert out.exit_code == 1 and last.startswith("Error: "), out.output
    assert "not a checkpoint thresher can load safely" in last and last.endswith("--resume")
    assert not marker.exists()  # ... and resuming did not run it


@pytest.mark.parametrize("gpu_bf16", [True, False])
def test_autocast_dtype_follows_the_gpus_bf16_support(monkeypatch, gpu_bf16):
    import torch

    from tune.runtime import amp_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype("auto", cuda) == (torch.bfloat16 if gpu_bf16 else torch.float16)
    assert amp_dtype("auto", cpu) is None
    assert amp_dtype("fp32", cuda) is None
    assert amp_dtype("bf16", cuda) == torch.bfloat16
    assert amp_dtype("fp16", cuda) == torch.float16
