"""The LoRA classifier of ``tune`` as a loop ``Learner`` (``thresher round --learner lora``).

``fit`` writes the round's training texts and labels as a small project of their own
(``<work>/data/ingest/records.parquet``) and runs ``tune.train.train`` on it (``data=raw``: the
round already chose the labels), so ``tune`` keeps its own split, early stopping and metrics;
``predict_proba`` calls ``tune.predict.predict_proba(run_dir, texts)`` and orders the columns by
``classes``. ``save``/``load`` copy the run folder, so the round's ``train/`` step folder holds
the adapter and the next round can read it.

Warm start (``loop.warm_start``, default off): round k's training begins from round k-1's
adapter and head (``tune``'s ``init_adapter``) and fits all labels so far; when the label set
changed between rounds (a class appeared), or there is no previous adapter, it starts from the
base model. ``lora.json`` records which adapter it started from (``warm_start_from``, or null).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from loop.errors import LearnerError

log = logging.getLogger(__name__)

RUN = "round"


def tune_available() -> bool:
    """True when the ``tune`` package (and torch) can be imported."""
    import importlib.util

    return importlib.util.find_spec("tune") is not None and (
        importlib.util.find_spec("tune.train") is not None
    )


class LoraLearner:
    """``tune``'s LoRA classifier behind the loop's ``Learner`` protocol.

    ``options``: a ``tune.options.TuneOptions`` (``tune.options.options_from_config``); the run
    name and data mode are set here. ``warm_start``: the previous round's train folder (see the
    module doc)."""

    def __init__(
        self, classes: Sequence[str], options: Any, *, warm_start: Path | None = None
    ) -> None:
        self.classes = tuple(str(c) for c in classes)
        self.options = options
        self.warm_start = Path(warm_start) if warm_start else None
        self.started_from: Path | None = None  # the adapter the last fit began from
        self.run_dir: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> LoraLearner:
        import pandas as pd

        from thresher.project import Project
        from tune.train import train

        if len(texts) != len(labels) or not len(texts):
            raise LearnerError(f"LoRA learner needs labelled texts, got {len(texts)}")
        self._tmp = tempfile.TemporaryDirectory(prefix="thresher-lora-")
        root = Path(self._tmp.name) / "data"
        (root / "ingest").mkdir(parents=True)
        ids = [f"t{i:07d}" for i in range(len(texts))]
        pd.DataFrame({"id": ids, "text": list(texts), "label": list(labels)}).to_parquet(
            root / "ingest" / "records.parquet", index=False
        )
        data = replace(self.options.data, mode="raw", label_issues="keep")
        self.started_from = self._warm_run(sorted({str(x) for x in labels}))
        init = str(self.started_from) if self.started_from else None
        opts = replace(self.options, run=RUN, data=data, init_adapter=init)
        self.run_dir = Path(train(Project(root), opts, force=True))
        return self

    def _warm_run(self, labels: list[str]) -> Path | None:
        """The previous round's run to start from, when it exists and has the same labels."""
        run = self.warm_start / "run" if self.warm_start else None
        if run is None or not (run / "label_map.json").is_file():
            return None
        theirs = json.loads((run / "label_map.json").read_text(encoding="utf-8"))["labels"]
        if [str(x) for x in theirs] != labels:
            log.info("LoRA learner: labels changed since %s; training from the base model", run)
            return None
        return run

    def _labels(self) -> list[str]:
        cfg = json.loads((self._run() / "config.json").read_text(encoding="utf-8"))
        return [str(x) for x in cfg["labels"]]

    def _run(self) -> Path:
        if self.run_dir is None:
            raise LearnerError("the LoRA learner is not trained; rerun the round's train step")
        return self.run_dir

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        from tune.predict import predict_proba

        if not len(texts):
            return np.zeros((0, len(self.classes)))
        probs = np.asarray(predict_proba(self._run(), list(texts)), dtype=np.float64)
        out = np.zeros((len(texts), len(self.classes)))
        index = {c: i for i, c in enumerate(self.classes)}
        for j, lab in enumerate(self._labels()):
            if lab in index:
                out[:, index[lab]] = probs[:, j]
        return out

    def save(self, folder: Path) -> None:
        dest = Path(folder) / "run"
        shutil.copytree(self._run(), dest, dirs_exist_ok=True)
        for ckpt in dest.glob("checkpoint*"):  # resume state is not needed once finished
            shutil.rmtree(ckpt, ignore_errors=True) if ckpt.is_dir() else ckpt.unlink()
        (Path(folder) / "lora.json").write_text(
            json.dumps(
                {
                    "classes": list(self.classes),
                    "warm_start_from": str(self.started_from) if self.started_from else None,
                }
            ),
            encoding="utf-8",
        )

    @classmethod
    def load(cls, folder: Path) -> LoraLearner:
        meta = json.loads((Path(folder) / "lora.json").read_text(encoding="utf-8"))
        learner = cls(meta["classes"], None)
        learner.run_dir = Path(folder) / "run"
        return learner
