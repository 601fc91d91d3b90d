"""What the ``thresher`` command prints: its own lines, and third-party noise only with ``-v``.

At the default verbosity the libraries' chatter that a user cannot act on is hidden: the
transformers "LOAD REPORT" table for a new classifier head and its "Loading weights" bar,
bitsandbytes' kernel-hub lookups in offline mode, Hugging Face hub, datasets and Ray log lines and
progress bars, and Python warnings (FutureWarning, DeprecationWarning, UserWarning). thresher
itself reports through ``logging`` and never through ``warnings``, so every Python warning is a
library's. Library errors (level ERROR and above) always show. ``-v`` shows everything.

Only the standard library is imported here: the settings are environment defaults the libraries
read when they load (a variable the user set wins), a filter on the root log handlers, and warning
filters; a library already imported is switched directly.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

OWN_PACKAGES = frozenset({"thresher", "curate", "tune", "loop", "review", "root", "__main__"})

QUIET_MARK = "THRESHER_QUIET"

QUIET_ENV = {
    # transformers: the LOAD REPORT table and deprecation notes (its own handler, no propagation)
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    # also transformers' "Loading weights" bar, which reads the hub's switch
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    # Ray (curate --engine ray): its driver logger and Ray Data's logger have handlers of their own
    "RAY_LOGGER_LEVEL": "error",
    "RAY_DATA_LOG_LEVEL": "ERROR",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # plain tqdm bars of libraries (transformers' GGUF conversion); thresher's own bars pass
    # ``disable`` explicitly, which wins over this default
    "TQDM_DISABLE": "1",
    # read by worker processes thresher spawns (``configure_worker_output``)
    QUIET_MARK: "1",
}

QUIET_WARNINGS = (FutureWarning, DeprecationWarning, PendingDeprecationWarning, UserWarning)


class OwnLinesFilter(logging.Filter):
    """Passes thresher's own records and any record at ERROR or above; drops the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".")[0] in OWN_PACKAGES


def configure_output(verbose: int) -> None:
    """Set up logging for the command line: WARNING, INFO (``-v``) or DEBUG (``-vv``); at 0 the
    third-party noise described in this module's docstring is hidden as well."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 0:
        hide_library_noise()


def configure_worker_output() -> None:
    """For a process thresher spawns (``ProcessPoolExecutor(initializer=...)``): the parent's
    quiet setting comes through the environment; warning filters and log handlers do not."""
    if os.environ.get(QUIET_MARK) == "1":
        configure_output(0)


def hide_library_noise() -> None:
    """Hide third-party log lines below ERROR, progress bars and Python warnings (see the module
    docstring). Idempotent."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for handler in logging.getLogger().handlers:
        # the handler basicConfig installed, not a test harness's or an embedding app's own
        if type(handler) is logging.StreamHandler and not any(
            isinstance(f, OwnLinesFilter) for f in handler.filters
        ):
            handler.addFilter(OwnLinesFilter())
    for category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", category=category)
    _quiet_loaded_libraries()


def _quiet_loaded_libraries() -> None:
    """Libraries read the environment once, on import: switch the ones already loaded."""
    if "transformers" in sys.modules and os.environ["TRANSFORMERS_VERBOSITY"] == "error":
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
