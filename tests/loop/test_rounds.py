"""The round state machine with fake steps: order, records, crash-and-resume, no-op reruns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loop.errors import RoundStateError
from loop.rounds import STEPS, RoundRunner, list_rounds, read_round, rounds_status
from thresher.project import Project

REPO = Path(__file__).resolve().parents[2]


class Recorder:
    """Fake steps that log each call, write one file, and can fail at a chosen step once."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.calls: list[tuple[int, str]] = []
        self.fail_at = fail_at

    def make(self, name: str):
        def step(ctx):
            self.calls.append((ctx.round, name))
            (ctx.work_dir / f"{name}.txt").write_text(f"{name} of round {ctx.round}")
            if name == self.fail_at:
                self.fail_at = None
                raise RuntimeError(f"boom in {name}")
            # each step sees the outputs of the steps before it
            assert list(ctx.outputs) == list(STEPS[: STEPS.index(name)])
            return {"step": name, "seen": len(ctx.outputs), "round": ctx.round}

        return step

    def steps(self):
        return {name: self.make(name) for name in STEPS}


def test_round_runs_every_step_in_order_and_records_it(tmp_path):
    project = Project.at(tmp_path)
    rec = Recorder()
    result = RoundRunner(project, rec.steps(), options={"strategy": "margin"}).run()
    assert result.round == 1 and result.ran == list(STEPS) and not result.noop
    assert rec.calls == [(1, s) for s in STEPS]
    manifest = read_round(project, 1)
    assert manifest["status"] == "done" and manifest["options"] == {"strategy": "margin"}
    for i, name in enumerate(STEPS):
        step = manifest["steps"][name]
        assert step["status"] == "done" and step["outputs"]["seen"] == i
        assert list(step["files"]) == [f"{name}.txt"]
        assert (tmp_path / "rounds" / "1" / name / f"{name}.txt").exists()
    assert not list((tmp_path / "rounds" / "1").glob(".*.tmp"))
    assert set(result.to_dict()["timings"]) == set(STEPS)


def test_finished_round_is_a_noop_and_next_round_only_when_asked(tmp_path):
    project = Project.at(tmp_path)
    rec = Recorder()
    runner = RoundRunner(project, rec.steps())
    runner.run()
    again = runner.run()
    assert again.noop and again.round == 1 and again.ran == [] and len(rec.calls) == len(STEPS)
    second = runner.run(new=True)
    assert second.round == 2 and second.ran == list(STEPS)
    assert second.manifest["steps"]["train"]["outputs"]["round"] == 2
    assert list_rounds(project) == [1, 2]
    assert runner.run(round=1).noop
    with pytest.raises(RoundStateError, match="next one is 3"):
        runner.run(round=5)


def test_previous_round_is_visible_to_steps(tmp_path):
    project = Project.at(tmp_path)
    seen = {}

    def train(ctx):
        seen[ctx.round] = (ctx.previous_outputs("train"), ctx.previous_step_dir("train"))
        (ctx.work_dir / "adapter.bin").write_bytes(b"x" * ctx.round)
        return {"adapter": str(ctx.round_dir / "train" / "adapter.bin")}

    steps = [("train", train)]
    RoundRunner(project, steps, order=["train"]).run()
    RoundRunner(project, steps, order=["train"]).run(new=True)
    assert seen[1] == (None, None)
    prev_outputs, prev_dir = seen[2]
    assert prev_outputs["adapter"].endswith("rounds/1/train/adapter.bin")
    assert (prev_dir / "adapter.bin").read_bytes() == b"x"


def test_crash_then_rerun_continues_from_the_failed_step(tmp_path):
    project = Project.at(tmp_path)
    rec = Recorder(fail_at="predict")
    runner = RoundRunner(project, rec.steps())
    with pytest.raises(RuntimeError, match="boom in predict"):
        runner.run()
    manifest = read_round(project, 1)
    assert manifest["status"] == "running"
    assert manifest["steps"]["predict"]["status"] == "failed"
    assert "boom" in manifest["steps"]["predict"]["error"]
    assert not (tmp_path / "rounds" / "1" / "predict").exists()
    assert rounds_status(project)[0]["next"] == "predict"
    rec.calls.clear()
    result = runner.run()
    assert result.round == 1
    assert result.skipped == ["pull", "rebuild", "train", "eval"]
    assert result.ran == ["predict", "select", "push"]
    assert rec.calls == [(1, "predict"), (1, "select"), (1, "push")]
    assert result.manifest["steps"]["predict"]["attempts"] == 2
    assert runner.run().noop


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from loop.rounds import STEPS, RoundRunner
    from thresher.project import Project

    root, kill_at, log = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    def make(name):
        def step(ctx):
            with open(log, "a") as fh:
                fh.write(name + "\\n")
            (ctx.work_dir / "part.txt").write_text("half")
            if name == kill_at:
                os._exit(137)  # a kill: no exception handler, no cleanup
            return {"ok": name}
        return step

    RoundRunner(Project.at(root), {n: make(n) for n in STEPS}).run()
    """
)


@pytest.mark.parametrize("kill_at", ["pull", "train", "push"])
def test_resume_after_a_kill_inside_a_step(tmp_path, kill_at):
    log = tmp_path / "calls.log"
    project_dir = tmp_path / "proj"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", KILL_SCRIPT, str(project_dir), kill_at, str(log)]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 137, first.stderr
    manifest = json.loads((project_dir / "rounds" / "1" / "manifest.json").read_text())
    assert manifest["steps"][kill_at]["status"] == "running"  # the kill left it mid-step
    assert (project_dir / "rounds" / "1" / f".{kill_at}.tmp").exists()

    second = subprocess.run(
        [*args[:4], "none", str(log)], env=env, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 0, second.stderr
    calls = log.read_text().split()
    at = STEPS.index(kill_at)
    assert calls == list(STEPS[: at + 1]) + list(STEPS[at:])  # finished steps ran once
    manifest = read_round(Project.at(project_dir), 1)
    assert manifest["status"] == "done"
    assert manifest["steps"][kill_at]["attempts"] == 2
    assert not list((project_dir / "rounds" / "1").glob(".*.tmp"))


def test_probe_change_starts_the_next_round(tmp_path):
    project = Project.at(tmp_path)
    state = {"submitted": 0}
    rec = Recorder()
    runner = RoundRunner(project, rec.steps(), probe=lambda p: dict(state))
    assert runner.run().round == 1
    assert runner.run().noop  # nothing new annotated
    state["submitted"] = 50
    assert runner.run().round == 2
    assert read_round(project, 2)["probe"] == {"submitted": 50}


def test_misuse_gives_named_errors(tmp_path):
    project = Project.at(tmp_path)
    with pytest.raises(RoundStateError, match="missing"):
        RoundRunner(project, {"pull": lambda ctx: None})
    with pytest.raises(RoundStateError, match="JSON"):
        RoundRunner(Project.at(tmp_path / "other"), [("a", lambda ctx: {"x": object()})]).run()
    rec = Recorder(fail_at="train")
    with pytest.raises(RuntimeError):
        RoundRunner(project, rec.steps()).run(round=1)
    other = [(name, rec.make(name)) for name in ("pull", "train")]
    with pytest.raises(RoundStateError, match="started with steps"):
        RoundRunner(project, other).run()


def test_a_second_runner_is_refused_while_one_holds_the_lock(tmp_path):
    project = Project.at(tmp_path)
    errors = []

    def pull(ctx):
        try:
            RoundRunner(project, [("pull", lambda c: None)], order=["pull"]).run()
        except RoundStateError as err:
            errors.append(str(err))

    RoundRunner(project, [("pull", pull)], order=["pull"]).run()
    assert errors and "another `thresher round` is running" in errors[0]


def test_label_cost_reads_what_the_evaluated_rounds_bought(tmp_path):
    import json

    from loop.round_cli import _cost_lines
    from loop.rounds import MANIFEST, label_cost, round_dir
    from thresher.project import Project

    project = Project.at(tmp_path / "proj")

    def write(k, train, f1):
        folder = round_dir(project, k)
        folder.mkdir(parents=True)
        steps = {"rebuild": {"outputs": {"train": train}}, "eval": {"outputs": {"macro_f1": f1}}}
        (folder / MANIFEST).write_text(json.dumps({"steps": steps}))

    write(1, 50, 0.60)
    assert label_cost(project, 1) is None  # one evaluated round: no price yet
    write(2, 100, 0.65)
    write(3, 150, 0.70)
    cost = label_cost(project, 3)
    assert cost["labels"] == [50, 100, 150] and cost["labels_per_f1_point"] == 10.0
    assert label_cost(project, 2)["labels_per_f1_point"] == 10.0  # later rounds not counted
    assert "10 labels per macro-F1 point over 3 rounds (50 → 150" in _cost_lines(cost)[0]
    write(4, 200, None)  # a cold-start round has no eval
    assert label_cost(project, 4)["rounds"] == 3
