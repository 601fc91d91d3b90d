"""Run under torchrun with 2 processes (tests/tune/test_train.py): an FSDP run, the same
run interrupted after step 5 (last shard checkpoints at step 3), and its resumption."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tune import TuneOptions, train
from tune.checkpoint import read_checkpoint
from tune.train import Interrupted

project, base = sys.argv[1], sys.argv[2]
common = dict(
    base=base,
    max_steps=8,
    eval_steps=4,
    save_steps=3,
    strategy="fsdp",
    batch_size=8,
    lr=5e-3,
    eval_batch_size=32,
    max_length=32,
)
train(project, TuneOptions(run="full", **common))
try:
    train(project, TuneOptions(run="cut", **common), stop_after=5)
except Interrupted:
    pass
rank = os.environ["RANK"]
shard = Path(project, "tune", ".work", "cut", f"checkpoint-rank{rank}-of-2.pt")
step = read_checkpoint(shard)["meta"]["state"]["step"]  # read with weights_only=True
assert step == 3, step  # resumption starts from this shard
train(project, TuneOptions(run="cut"), resume=True)
