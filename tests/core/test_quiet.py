"""Quiet output: thresher's own lines by default, third-party noise only with -v."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings

import pytest

from thresher import quiet
from thresher.quiet import QUIET_ENV, OwnLinesFilter, hide_library_noise


def _record(name: str, level: int) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_own_lines_filter_keeps_thresher_and_errors_only():
    keep = OwnLinesFilter().filter
    for name in ("tune.modeling", "curate", "loop.round", "review.push", "thresher.cli", "root"):
        assert keep(_record(name, logging.WARNING))
        assert keep(_record(name, logging.INFO))
    for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub", "transformers"):
        assert not keep(_record(name, logging.WARNING))
        assert keep(_record(name, logging.ERROR))
    assert not keep(_record("tuner", logging.WARNING))  # a package, not a prefix


@pytest.fixture
def clean_env(monkeypatch):
    for key in QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(quiet, "_quiet_loaded_libraries", lambda: None)


def test_hide_library_noise_sets_defaults_but_a_users_setting_wins(clean_env, monkeypatch):
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    with warnings.catch_warnings():
        hide_library_noise()
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["RAY_DATA_LOG_LEVEL"] == "ERROR"


def test_hide_library_noise_filters_warnings_and_library_log_lines(clean_env):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hide_library_noise()
            hide_library_noise()  # idempotent: one filter on the handler
            warnings.warn("deprecated", FutureWarning, stacklevel=1)
            warnings.warn("odd input", UserWarning, stacklevel=1)
            warnings.warn("overflow", RuntimeWarning, stacklevel=1)
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("kernel hub lookup failed")
        logging.getLogger("tune.modeling").warning("QLoRA on the CPU")
        logging.getLogger("kernels").error("a real failure")
    finally:
        root.removeHandler(handler)
    assert [str(w.message) for w in caught] == ["overflow"]
    assert sum(isinstance(f, OwnLinesFilter) for f in handler.filters) == 1
    assert stream.getvalue().splitlines() == [
        "tune.modeling QLoRA on the CPU",
        "kernels a real failure",
    ]


@pytest.mark.slow
def test_tune_train_prints_only_its_own_lines_unless_verbose(tmp_path):
    """A fresh classifier head makes transformers print its LOAD REPORT table and a "Loading
    weights" bar; bitsandbytes (imported by peft) looks up its CPU kernel on the hub."""
    from tests.helpers.labelled_project import make_project, synthetic_rows

    project = make_project(tmp_path / "proj", synthetic_rows(40, seed=1))
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    env["HF_HUB_OFFLINE"] = "1"

    def train(*flags: str, run: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "thresher", *flags, "tune", "train", "-p", str(project)]
        cmd += ["--max-steps", "1", "--batch-size", "4", "--max-length", "16", "--run", run]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    default = train(run="a")
    assert default.returncode == 0, default.stderr
    assert "run a: 1 steps" in default.stdout
    assert default.stderr == ""

    verbose = train("-v", run="b")
    assert verbose.returncode == 0, verbose.stderr
    assert "LOAD REPORT" in verbose.stderr
    assert "INFO tune.train" in verbose.stderr


def _warn_and_log_in_worker() -> None:
    import logging as worker_logging
    import warnings as worker_warnings

    worker_warnings.warn("deprecated", FutureWarning, stacklevel=1)
    worker_logging.getLogger("kernels._internals.hf_hub").warning("offline: no trust check")
    worker_logging.getLogger("tune.select").warning("own line")


@pytest.mark.parametrize("quiet_parent", [True, False])
def test_spawned_workers_follow_the_parents_quiet_setting(clean_env, monkeypatch, quiet_parent):
    """tune select measures each candidate in a spawned process: the parent's quiet setting
    reaches it through the environment (warning filters and log handlers do not)."""
    from thresher.quiet import QUIET_MARK

    if quiet_parent:
        monkeypatch.setenv(QUIET_MARK, "1")
    else:
        monkeypatch.delenv(QUIET_MARK, raising=False)
    script = (
        "import concurrent.futures as f, multiprocessing as m, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from thresher.quiet import configure_worker_output\n"
        "from tests.core.test_quiet import _warn_and_log_in_worker\n"
        "if __name__ == '__main__':\n"
        "    with f.ProcessPoolExecutor(1, mp_context=m.get_context('spawn'),"
        " initializer=configure_worker_output) as pool:\n"
        "        pool.submit(_warn_and_log_in_worker).result()\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [sys.executable, "-c", script, root], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "own line" in done.stderr
    assert ("no trust check" in done.stderr) is not quiet_parent
    assert ("FutureWarning" in done.stderr) is not quiet_parent
