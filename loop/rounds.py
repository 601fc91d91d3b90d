"""The resumable round state machine behind ``thresher round``.

A round k lives in ``DIR/rounds/<k>/``. Its ``manifest.json`` lists the steps in order
(by default pull → rebuild → train → eval → predict → select → push), each with its status
(``running`` / ``done`` / ``failed``), outputs (a JSON object the step returned), files and
timing. A step writes its files into a temp folder that is renamed to ``DIR/rounds/<k>/<step>/``
only when the step returns, and the manifest is rewritten atomically after every step, so:

- a crash (or a kill) at any point leaves every finished step intact, and rerunning continues at
  the first step not ``done`` (the interrupted step starts over from a clean folder);
- rerunning a finished round is a no-op; the next round starts only when asked (``new=True``)
  or when ``probe`` (e.g. the count of submitted annotations) has changed since the last round
  started.

Steps are injected callables ``step(ctx) -> dict | None`` (see ``StepContext``), so review's
pull/push and tune's train/eval/predict plug in without this module knowing them. Only one run
may hold a project's rounds at a time (an ``flock`` on ``DIR/rounds/.lock``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loop.errors import RoundStateError
from thresher.project import Project, atomic_write_json, file_sha256

log = logging.getLogger(__name__)

STEPS = ("pull", "rebuild", "train", "eval", "predict", "select", "push")
ROUNDS = "rounds"
MANIFEST = "manifest.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class StepContext:
    """What a step sees. Write files under ``work_dir``; return JSON-able outputs."""

    project: Project
    round: int
    step: str
    round_dir: Path
    work_dir: Path
    options: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    previous: dict[str, Any] | None

    def step_dir(self, step: str) -> Path:
        """Folder holding the files of an earlier step of this round."""
        return self.round_dir / step

    def previous_step_dir(self, step: str) -> Path | None:
        """Folder of ``step`` in the previous round (e.g. the last adapter for a warm start)."""
        if self.previous is None:
            return None
        return round_dir(self.project, self.previous["round"]) / step

    def previous_outputs(self, step: str) -> dict[str, Any] | None:
        if self.previous is None:
            return None
        return self.previous.get("steps", {}).get(step, {}).get("outputs")


Step = Callable[[StepContext], Mapping[str, Any] | None]


@dataclass
class RoundResult:
    """What one ``run`` did (``to_dict`` is the ``--json`` summary of ``thresher round``)."""

    round: int
    status: str
    ran: list[str]
    skipped: list[str]
    noop: bool
    manifest: dict[str, Any] = field(repr=False)

    @property
    def timings(self) -> dict[str, float]:
        return {
            name: step.get("seconds", 0.0) for name, step in self.manifest.get("steps", {}).items()
        }

    def outputs(self, step: str) -> dict[str, Any]:
        return self.manifest.get("steps", {}).get(step, {}).get("outputs") or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "status": self.status,
            "ran": self.ran,
            "skipped": self.skipped,
            "noop": self.noop,
            "timings": self.timings,
            "outputs": {name: self.outputs(name) for name in self.manifest.get("order", [])},
            "path": str(self.manifest.get("path", "")),
        }


def rounds_dir(project: Project) -> Path:
    return project.root / ROUNDS


def round_dir(project: Project, k: int) -> Path:
    return rounds_dir(project) / str(k)


def read_round(project: Project, k: int) -> dict[str, Any] | None:
    """The manifest of round ``k``, or None when it has not started."""
    path = round_dir(project, k) / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def list_rounds(project: Project) -> list[int]:
    """Round numbers that have a manifest, ascending."""
    base = rounds_dir(project)
    if not base.exists():
        return []
    return sorted(
        int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / MANIFEST).exists()
    )


def label_cost(project: Project, upto: int) -> dict[str, Any] | None:
    """What the rounds' labels bought: training labels and test macro-F1 per evaluated round
    up to ``upto``, and labels added per macro-F1 point from the first to the last (that price
    None while F1 has not risen); None until two rounds are evaluated."""
    from loop.simulate import labels_per_point

    labels, f1s = [], []
    for k in (k for k in list_rounds(project) if k <= upto):
        steps = (read_round(project, k) or {}).get("steps", {})
        f1 = (steps.get("eval", {}).get("outputs") or {}).get("macro_f1")
        train = (steps.get("rebuild", {}).get("outputs") or {}).get("train")
        if f1 is not None and train is not None:
            labels.append(int(train))
            f1s.append(float(f1))
    if len(labels) < 2:
        return None
    return {
        "rounds": len(labels),
        "labels": labels,
        "macro_f1": f1s,
        "labels_per_f1_point": labels_per_point(labels, f1s),
    }


@contextmanager
def rounds_lock(project: Project) -> Iterator[None]:
    """The lock every ``thresher round`` takes (``DIR/rounds/.lock``): one round at a time."""
    base = rounds_dir(project)
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise RoundStateError(
                f"another `thresher round` is running on {project.root}; wait for it to finish"
            ) from err
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RoundRunner:
    """Runs (or resumes) one round of injected steps, recording each in the round manifest.

    ``steps``: a mapping (run in ``order``) or a sequence of ``(name, step)`` pairs.
    ``options``: JSON-able settings recorded in the manifest (strategy, size, learner, ...);
    a resumed round keeps the options it started with.
    ``probe``: optional cheap look at the inputs (e.g. ``{"submitted": 120}``); when a finished
    round's recorded probe differs from the current one, ``run()`` starts the next round."""

    def __init__(
        self,
        project: Project,
        steps: Mapping[str, Step] | Sequence[tuple[str, Step]],
        *,
        options: Mapping[str, Any] | None = None,
        order: Sequence[str] = STEPS,
        probe: Callable[[Project], Mapping[str, Any]] | None = None,
    ) -> None:
        if isinstance(steps, Mapping):
            missing = [name for name in order if name not in steps]
            extra = [name for name in steps if name not in order]
            if missing or extra:
                raise RoundStateError(
                    f"round steps must be exactly {list(order)}; missing {missing}, extra {extra}"
                )
            pairs = [(name, steps[name]) for name in order]
        else:
            pairs = list(steps)
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names) or not names:
            raise RoundStateError(f"step names must be unique and non-empty: {names}")
        self.project = project
        self.steps = pairs
        self.order = names
        _check_json(dict(options or {}), "round options")
        self.options = _normalized(options or {})
        self.probe = probe

    def pick_round(self, *, new: bool = False) -> int:
        """Which round ``run(None)`` works on: the latest unfinished one, else the latest (a
        no-op) unless ``new`` or the probe changed, then the next one."""
        done = list_rounds(self.project)
        if not done:
            return 1
        last = done[-1]
        manifest = read_round(self.project, last) or {}
        if manifest.get("status") != "done":
            return last
        if new:
            return last + 1
        if self.probe is not None:
            if _normalized(self.probe(self.project)) != manifest.get("probe"):
                return last + 1
        return last

    def run(self, round: int | None = None, *, new: bool = False) -> RoundResult:
        """Run round ``round`` (default: ``pick_round``) from its first unfinished step."""
        with rounds_lock(self.project):
            k = self.pick_round(new=new) if round is None else int(round)
            existing = list_rounds(self.project)
            if k < 1 or (existing and k > existing[-1] + 1) or (not existing and k != 1):
                raise RoundStateError(
                    f"cannot run round {k} in {rounds_dir(self.project)}: rounds so far "
                    f"{existing or 'none'}; the next one is {existing[-1] + 1 if existing else 1}"
                )
            if k > 1 and k - 1 in existing:
                prev = read_round(self.project, k - 1) or {}
                if prev.get("status") != "done":
                    raise RoundStateError(
                        f"round {k - 1} is not finished; rerun it first (`thresher round -p "
                        f"{self.project.root}`)"
                    )
            return self._run(k)

    def _run(self, k: int) -> RoundResult:
        rdir = round_dir(self.project, k)
        manifest = read_round(self.project, k)
        if manifest is None:
            rdir.mkdir(parents=True, exist_ok=True)
            manifest = {
                "round": k,
                "status": "running",
                "order": self.order,
                "options": self.options,
                "probe": _normalized(self.probe(self.project)) if self.probe is not None else None,
                "steps": {},
                "started_at": _now(),
                "path": str(rdir),
            }
            self._write(rdir, manifest)
        elif manifest.get("order") != self.order:
            raise RoundStateError(
                f"{rdir / MANIFEST} was started with steps {manifest.get('order')}, "
                f"not {self.order}; finish it with the same steps or remove the folder"
            )
        elif manifest.get("options") != self.options:
            log.warning(
                "round %d resumes with the options it started with (%s), not %s",
                k,
                manifest.get("options"),
                self.options,
            )
        if manifest.get("status") == "done":
            log.info("round %d is already finished (%s)", k, rdir)
            return RoundResult(k, "done", [], list(self.order), True, manifest)

        previous = read_round(self.project, k - 1) if k > 1 else None
        ran, skipped = [], []
        for name, step in self.steps:
            record = manifest["steps"].get(name, {})
            if record.get("status") == "done":
                skipped.append(name)
                continue
            self._run_step(k, rdir, manifest, name, step, previous)
            ran.append(name)
        manifest["status"] = "done"
        manifest["finished_at"] = _now()
        self._write(rdir, manifest)
        return RoundResult(k, "done", ran, skipped, False, manifest)

    def _run_step(
        self,
        k: int,
        rdir: Path,
        manifest: dict[str, Any],
        name: str,
        step: Step,
        previous: dict[str, Any] | None,
    ) -> None:
        work = rdir / f".{name}.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        attempts = manifest["steps"].get(name, {}).get("attempts", 0) + 1
        manifest["steps"][name] = {"status": "running", "started_at": _now(), "attempts": attempts}
        self._write(rdir, manifest)
        ctx = StepContext(
            project=self.project,
            round=k,
            step=name,
            round_dir=rdir,
            work_dir=work,
            options=dict(manifest.get("options") or {}),
            outputs={
                n: manifest["steps"][n].get("outputs") or {}
                for n in self.order
                if manifest["steps"].get(n, {}).get("status") == "done"
            },
            previous=previous,
        )
        log.info("round %d: %s", k, name)
        t0 = time.perf_counter()
        try:
            outputs = dict(step(ctx) or {})
            _check_json(outputs, f"outputs of step {name!r}")
        except BaseException as err:
            manifest["steps"][name].update(
                status="failed", error=f"{type(err).__name__}: {err}"[:500], failed_at=_now()
            )
            self._write(rdir, manifest)
            shutil.rmtree(work, ignore_errors=True)
            raise
        seconds = round(time.perf_counter() - t0, 4)
        files = {
            str(p.relative_to(work)): file_sha256(p) for p in sorted(work.rglob("*")) if p.is_file()
        }
        final = rdir / name
        if final.exists():
            shutil.rmtree(final)
        if files:
            os.replace(work, final)
        else:
            shutil.rmtree(work)
        manifest["steps"][name] = {
            "status": "done",
            "outputs": outputs,
            "files": files,
            "seconds": seconds,
            "attempts": attempts,
            "finished_at": _now(),
        }
        self._write(rdir, manifest)

    @staticmethod
    def _write(rdir: Path, manifest: dict[str, Any]) -> None:
        atomic_write_json(rdir / MANIFEST, manifest)


def _check_json(obj: Any, what: str) -> None:
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise RoundStateError(f"{what} must be JSON-serializable: {err}") from err


def _normalized(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists), so comparisons are stable."""
    return json.loads(json.dumps(dict(obj), sort_keys=True))


def rounds_status(project: Project) -> list[dict[str, Any]]:
    """One line per round: number, status, steps done, and the first step not done."""
    out = []
    for k in list_rounds(project):
        m = read_round(project, k) or {}
        steps = m.get("steps", {})
        done = [n for n in m.get("order", []) if steps.get(n, {}).get("status") == "done"]
        pending = [n for n in m.get("order", []) if n not in done]
        out.append(
            {
                "round": k,
                "status": m.get("status"),
                "done": done,
                "next": pending[0] if pending else None,
            }
        )
    return out
