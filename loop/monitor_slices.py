"""Per bias slice: does the traffic mention a group as often as the scored data did?

The slices are the groups the score stage reported (``DIR/score/bias.json`` → ``groups``); the
reference mention rate is the share of ``DIR/score/records.parquet`` rows whose ``bias_groups``
name the group. Traffic texts are matched against the same lexicon the score stage used (the
shipped identity-term list, extended or replaced by ``score.bias_lexicon`` as its manifest
records) with the same rules: case-insensitive, on runs of word characters and hyphens, a
trailing ``*`` matching any ending, phrases with any whitespace between words.

Every slice gets a two-sided two-proportion test (``loop.drift.mention_shift``); ``shifted``
uses a Bonferroni threshold inside the slice family. Reported only: the drift decision does not
use these.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loop.drift import bonferroni, mention_shift
from thresher.project import Project

_WORD_RUN = re.compile(r"[\w-]+")
LEXICON_FILE = "identity_terms.yaml"


def read_lexicon(project: Project) -> dict[str, list[str]]:
    """The lexicon the score stage matched with: group name → lowercase terms."""
    manifest = project.read_manifest("score") or {}
    config = manifest.get("config", {})
    lexicon: dict[str, list[str]] = {}
    if not config.get("bias_lexicon_replace") or not config.get("bias_lexicon"):
        lexicon.update(_yaml_lexicon(_shipped_lexicon_path()))
    if config.get("bias_lexicon"):
        path = Path(config["bias_lexicon"])
        if not path.is_absolute() and not path.exists():
            path = project.root / path
        if path.exists():
            lexicon.update(_yaml_lexicon(path))
    return lexicon


def _shipped_lexicon_path() -> Path:
    # The score stage's data file, read as data (curate's code is not imported).
    spec = importlib.util.find_spec("curate")
    if spec is None or not spec.submodule_search_locations:
        return Path("/nonexistent") / LEXICON_FILE
    return Path(next(iter(spec.submodule_search_locations))) / "data" / LEXICON_FILE


def _yaml_lexicon(path: Path) -> dict[str, list[str]]:
    import yaml

    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out: dict[str, list[str]] = {}
    for group, terms in data.items():
        terms = [terms] if isinstance(terms, str) else list(terms or [])
        out[str(group)] = [str(t).strip().lower() for t in terms if str(t).strip()]
    return out


def _pattern(term: str) -> re.Pattern:
    wildcard = term.endswith("*")
    core = re.escape(term.rstrip("*")).replace(r"\ ", r"\s+")
    tail = r"[\w-]*" if wildcard else ""
    return re.compile(r"(?<![\w-])" + core + tail + r"(?![\w-])", re.IGNORECASE)


def mentions(texts: Sequence[str], terms: Sequence[str]) -> list[bool]:
    """Whether each text mentions any of ``terms`` (the score stage's matching rules)."""
    words = {t for t in terms if _WORD_RUN.fullmatch(t) and not t.endswith("*")}
    wild = [t for t in terms if t.endswith("*") and _WORD_RUN.fullmatch(t[:-1])]
    prefixes = tuple(t[:-1] for t in wild)
    phrases = [_pattern(t) for t in terms if t not in words and t not in wild]
    out = []
    for text in texts:
        tokens = set(_WORD_RUN.findall(text.lower()))
        hit = bool(tokens & words) or any(tok.startswith(prefixes) for tok in tokens if prefixes)
        out.append(hit or any(rx.search(text) for rx in phrases))
    return out


def slice_shifts(
    project: Project, traffic_texts: Sequence[str], alpha: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """Mention-rate shift per bias slice; ([] and a note) when the score stage has not run."""
    bias_path = project.stage_dir("score") / "bias.json"
    records_path = project.records_path("score")
    if not bias_path.exists() or not records_path.exists():
        return [], [f"no bias slices: {bias_path} not found (run `thresher curate score`)"]
    if not traffic_texts:
        return [], ["no bias slices: the traffic was logged without text"]
    groups = sorted({g["name"] for g in json.loads(bias_path.read_text()).get("groups", [])})
    reference = _reference_groups(records_path)
    lexicon = read_lexicon(project)
    rows = []
    for group in groups:
        if group not in lexicon:
            continue
        ref_hits = sum(group in g for g in reference)
        cur_hits = sum(mentions(traffic_texts, lexicon[group]))
        test = mention_shift(ref_hits, len(reference), cur_hits, len(traffic_texts), group)
        rows.append(test)
    threshold, flags = bonferroni([t.p_value for t in rows], alpha)
    return [_slice_row(t, flag, threshold) for t, flag in zip(rows, flags, strict=True)], []


def _reference_groups(records_path: Path) -> list[set[str]]:
    import pyarrow.parquet as pq

    column = pq.read_table(records_path, columns=["bias_groups"]).column("bias_groups")
    return [set(g or ()) for g in column.to_pylist()]


def _slice_row(test, shifted: bool, threshold: float) -> dict[str, Any]:
    details: Mapping[str, Any] = test.details
    return {
        "slice": test.name,
        "statistic": test.statistic,
        "p_value": test.p_value,
        "threshold": threshold,
        "shifted": shifted,
        "reference_rate": details["reference_rate"],
        "traffic_rate": details["traffic_rate"],
        "n_reference": test.n_reference,
        "n_traffic": test.n_traffic,
    }
