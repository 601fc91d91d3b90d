"""The data split: one rule for every stage that holds records out.

A split is stratified by label, seeded, and made over *groups*: a record's duplicate cluster
(``dup_cluster``) or, for a unique record, the record itself, so a cluster never straddles splits
and a test record's near-copy is never trained on.

* ``stratified_split`` is the rule: group keys and their labels in, (rest, held-out) keys out.
* The project's split (``make_split`` / ``ensure_split``) applies it twice (test, then val out of
  the rest) to the labelled records and saves ``DIR/tune/split.parquet`` (``id, group, split``)
  on first use; later calls reuse it, so the test split stays fixed. Records first seen after the
  split go to ``train``, or to ``held`` when their cluster is already in val/test.
  ``tune`` trains and tests on it, ``tune crossfit`` and the score stage keep its test and held
  records out of every label-noise model (``held_out_ids``).
* ``thresher round`` holds out its test records with the same rule, over the records labelled at
  its first round, and keeps them in its round folders: in ``loop.labels: reviewed`` mode its
  labelled set is what annotators labelled, not the curated set the project split is made over.
* ``thresher simulate`` splits gold-labelled arrays by position with ``stratified_split``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thresher.project import Project, atomic_output, atomic_write_text

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
HELD_OUT = ("test", "held")


@dataclass(frozen=True)
class SplitSpec:
    """Fractions of the labelled groups held out for validation and test, and the seed."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0


def stratified_split(
    keys: Sequence[Any], labels: Sequence[Any], fraction: float, seed: int
) -> tuple[list[Any], list[Any]]:
    """(rest, held) with ``round(fraction * len(keys))`` keys held (at least one), stratified by
    ``labels`` when every label has two keys and there are enough held slots, else random."""
    from sklearn.model_selection import train_test_split

    if fraction <= 0 or len(keys) < 2:
        return list(keys), []
    n_held = max(1, round(fraction * len(keys)))
    counts = Counter(labels)
    stratify = list(labels) if min(counts.values()) >= 2 and n_held >= len(counts) else None
    rest, held = train_test_split(
        list(keys), test_size=n_held, random_state=seed, shuffle=True, stratify=stratify
    )
    return rest, held


def group_keys(frame):
    """Group key per record: ``c:<dup_cluster>``, or ``i:<id>`` when unique or undeduplicated."""
    import pandas as pd

    keys = "i:" + frame["id"].astype(str)
    if "dup_cluster" not in frame.columns:
        return keys
    cluster = frame["dup_cluster"].astype("object")
    present = cluster.notna()
    keys[present] = ["c:" + str(int(c)) for c in cluster[present]]
    return pd.Series(keys, index=frame.index)


def make_split(frame, labels, spec: SplitSpec):
    """A new split frame (``id, group, split``) over the records of ``frame`` whose ``labels``
    (aligned with ``frame``; None = unlabelled) are set; a group takes its most common label."""
    import pandas as pd

    frame = frame.assign(_group=group_keys(frame), _label=labels)
    labelled = frame[frame["_label"].notna()]
    by_group = labelled.groupby("_group")["_label"].agg(lambda s: s.value_counts().index[0])
    groups = sorted(by_group.index)
    rest, test = stratified_split(
        groups, [by_group[g] for g in groups], spec.test_fraction, spec.seed
    )
    val_fraction = spec.val_fraction / max(1e-9, 1 - spec.test_fraction)
    train, val = stratified_split(rest, [by_group[g] for g in rest], val_fraction, spec.seed + 1)
    where = {g: "train" for g in train} | {g: "val" for g in val} | {g: "test" for g in test}
    out = labelled[["id", "_group"]].rename(columns={"_group": "group"})
    out = out.assign(split=out["group"].map(where), id=out["id"].astype(str))
    return pd.DataFrame(out).sort_values("id").reset_index(drop=True)


def extend_split(split, frame, labels):
    """``split`` plus the labelled records of ``frame`` it does not know: ``train``, or ``held``
    when their group is already in val/test."""
    import pandas as pd

    frame = frame.assign(_group=group_keys(frame), _label=labels)
    new = frame[~frame["id"].astype(str).isin(set(split["id"])) & frame["_label"].notna()]
    if new.empty:
        return split
    group_split = split.drop_duplicates("group").set_index("group")["split"]
    side = new["_group"].map(group_split).map(lambda s: "held" if s in ("val", "test") else "train")
    extra = pd.DataFrame({"id": new["id"].astype(str), "group": new["_group"], "split": side})
    return pd.concat([split, extra], ignore_index=True)


def ensure_split(project: Project, frame, labels, spec: SplitSpec):
    """The project's split: made from ``frame``/``labels`` and saved on first use (with
    ``split.json``: the spec and counts), reused and extended afterwards."""
    import pandas as pd

    path = project.split_path
    if path.exists():
        return extend_split(pd.read_parquet(path), frame, labels)
    split = make_split(frame, labels, spec)
    with atomic_output(path) as tmp:
        split.to_parquet(tmp, index=False)
    counts = split["split"].value_counts().to_dict()
    summary = {
        "seed": spec.seed,
        "val_fraction": spec.val_fraction,
        "test_fraction": spec.test_fraction,
        "counts": counts,
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    log.info("made split %s: %s", path, counts)
    return split


def held_out_ids(project: Project) -> frozenset[str]:
    """Ids whose labels no label-noise model may learn from: the split's test records and the
    val/test clusters' later duplicates (``held``). Empty before the first split is made."""
    import pandas as pd

    path = project.split_path
    if not path.exists():
        return frozenset()
    split = pd.read_parquet(path, columns=["id", "split"])
    return frozenset(split["id"][split["split"].isin(HELD_OUT)].astype(str))
