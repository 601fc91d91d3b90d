"""The HTML report: one self-contained file (inline CSS, plots as embedded PNG), opens offline.

Every piece of record text goes through ``html.escape``: a record holding ``<script>`` shows as
text and runs nothing. The page has no scripts and fetches nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from thresher.html_report import esc, page, png, pyplot, section, table

log = logging.getLogger(__name__)

TEXT_CUT = 280
EXTRA_CSS = """
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:22px} .card span{font-size:12px;color:#57606a}
td.text{max-width:560px;white-space:pre-wrap;word-break:break-word}
.sig{color:#cf222e;font-weight:600}
"""


@dataclass
class ReportData:
    """What the report shows; built by the score stage (or from its folder by ``build``)."""

    records: Any  # pandas DataFrame with the score columns
    bias: Mapping[str, Any]
    stage_counts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    coords: np.ndarray | None = None  # (n, 2) embedding map, rows aligned with ``records``
    title: str = "thresher report"
    project: str = ""
    top_issues: int = 50
    scoring: Mapping[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # steps not run, one line each with why


def _cut(text: str, limit: int = TEXT_CUT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return esc(value)


# --------------------------------------------------------------------------------------------
# Sections


def _summary(data: ReportData) -> str:
    df = data.records
    cards = []
    for stage, counts in data.stage_counts.items():
        for key, value in counts.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                cards.append((f"{stage}: {key}", value))
    labeled = int(df["label"].notna().sum())
    cards += [
        ("records scored", len(df)),
        ("labeled", labeled),
        ("label issues", int(df["label_issue"].fillna(False).astype(bool).sum())),
        ("near-OOD", int(df["near_ood"].fillna(False).astype(bool).sum())),
        ("with identity terms", int(df["bias_groups"].map(lambda g: len(g) > 0).sum())),
    ]
    html_cards = "".join(
        f'<div class="card"><b>{_fmt(v)}</b><span>{esc(k)}</span></div>' for k, v in cards
    )
    scoring = ""
    if data.scoring:
        scoring = (
            '<p class="muted">'
            + esc(", ".join(f"{k}: {v}" for k, v in data.scoring.items()))
            + "</p>"
        )
    skipped = "".join(f'<p class="muted"><b>Skipped</b>: {esc(line)}</p>' for line in data.skipped)
    body = f'<div class="cards">{html_cards}</div>{scoring}{skipped}'
    return section("Counts", body, sid="summary")


def _labels(data: ReportData) -> str:
    plt = pyplot()
    df = data.records
    counts = df["label"].fillna("(unlabeled)").value_counts()
    issues = df[df["label_issue"].fillna(False).astype(bool)]["label"].value_counts()
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(counts) + 1.2))
    ax.barh(counts.index.astype(str), counts.to_numpy(), color="#0969da", label="records")
    ax.barh(
        counts.index.astype(str),
        [issues.get(k, 0) for k in counts.index],
        color="#cf222e",
        label="label issues",
    )
    ax.invert_yaxis()
    ax.set_xlabel("records")
    ax.legend(loc="lower right")
    rows = [
        [esc(k), _fmt(int(v)), _fmt(v / len(df)), _fmt(int(issues.get(k, 0)))]
        for k, v in counts.items()
    ]
    counts_table = table(
        ["label", "records", "share", "label issues"], rows, ["", "num", "num", "num"]
    )
    body = f'<div class="row"><div>{png(fig)}</div><div>{counts_table}</div></div>'
    return section("Label distribution", body, sid="labels")


def _quality_hist(data: ReportData) -> str:
    plt = pyplot()
    df = data.records
    q = df["label_quality"].to_numpy(dtype=float)
    issue = df["label_issue"].fillna(False).astype(bool).to_numpy()
    ok = ~np.isnan(q)
    fig, ax = plt.subplots(figsize=(7, 3))
    bins = np.linspace(0, 1, 41)
    ax.hist(q[ok & ~issue], bins=bins, color="#0969da", alpha=0.85, label="not flagged")
    ax.hist(q[ok & issue], bins=bins, color="#cf222e", alpha=0.85, label="label issue")
    ax.set_xlabel("label_quality (low = likely mislabeled)")
    ax.set_ylabel("records")
    ax.legend()
    note = '<p class="muted">Out-of-sample cleanlab normalized-margin scores.</p>'
    return section("Label quality", png(fig) + note, sid="label-quality")


def _top_issues(data: ReportData) -> str:
    df = data.records
    flagged = df[df["label_issue"].fillna(False).astype(bool)].sort_values("label_quality")
    rows = [
        [
            esc(r.id),
            esc(_cut(str(r.text))),
            esc(r.label),
            esc(r.predicted_label),
            _fmt(float(r.predicted_prob)),
            _fmt(float(r.label_quality)),
        ]
        for r in flagged.head(data.top_issues).itertuples()
    ]
    body = (
        f"<p>{len(flagged)} records flagged; the {min(len(flagged), data.top_issues)} with the "
        "lowest label quality:</p>"
    )
    body += table(
        ["id", "text", "label", "suggested", "p(suggested)", "label_quality"],
        rows,
        ["", "text", "", "", "num", "num"],
    )
    return section("Top suspected label errors", body, sid="issues")


def _duplicates(data: ReportData) -> str:
    df = data.records
    if "dup_cluster" not in df.columns or "label_conflict" not in df.columns:
        return section(
            "Duplicate clusters with conflicting labels",
            '<p class="muted">No dedup output: run <code>thresher curate dedup</code>.</p>',
            sid="duplicates",
        )
    conflicted = df[df["label_conflict"].fillna(False).astype(bool) & df["dup_cluster"].notna()]
    rows = []
    for cluster, members in list(conflicted.groupby("dup_cluster"))[:30]:
        labels = ", ".join(f"{k}×{v}" for k, v in members["label"].value_counts().items())
        rows.append(
            [
                esc(int(cluster)),
                _fmt(len(members)),
                esc(labels),
                esc(_cut(str(members["text"].iloc[0]), 200)),
            ]
        )
    n_clusters = int(df["dup_cluster"].dropna().nunique())
    body = (
        f"<p>{n_clusters} duplicate clusters; {conflicted['dup_cluster'].nunique()} with "
        "members that disagree on the label.</p>"
    )
    body += table(["cluster", "members", "labels", "text"], rows, ["num", "num", "", "text"])
    return section("Duplicate clusters with conflicting labels", body, sid="duplicates")


def _bias(data: ReportData) -> str:
    plt = pyplot()
    bias = data.bias
    groups = list(bias.get("groups", []))
    body = ""
    top = [g for g in groups if g["lift"] > 1][:12]
    if top:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(top) + 1.2))
        names = [f"{g['name']} → {g['label']}" for g in top]
        colors = ["#cf222e" if g["significant"] else "#8c959f" for g in top]
        ax.barh(names, [g["lift"] for g in top], color=colors)
        ax.axvline(1.0, color="#24292f", lw=1)
        ax.invert_yaxis()
        ax.set_xlabel("lift = P(label | group) / P(label)  (red: significant after BH)")
        body += png(fig)
    rows = [
        [
            esc(g["name"]),
            esc(g["label"]),
            _fmt(g["count"]),
            _fmt(g["slice_size"]),
            _fmt(g["rate_in_slice"]),
            _fmt(g["rate_in_rest"]),
            _fmt(g["lift"]),
            _fmt(g["q_value"]),
            '<span class="sig">yes</span>' if g["significant"] else "no",
        ]
        for g in groups[:25]
    ]
    body += "<h3>Group ↔ label associations</h3>" + table(
        [
            "group",
            "label",
            "count",
            "group size",
            "rate in group",
            "rate elsewhere",
            "lift",
            "q (BH)",
            "significant",
        ],
        rows,
        ["", "", "num", "num", "num", "num", "num", "num", ""],
    )
    slices = list(bias.get("slices", []))
    srows = [
        [
            esc(s["slice"]),
            _fmt(s["size"]),
            _fmt(s["share"]),
            esc(", ".join(f"{k} {_fmt(v, 2)}" for k, v in (s.get("label_rates") or {}).items())),
            _fmt(s.get("noise_rate")),
            _fmt(s.get("mean_label_quality")),
        ]
        for s in slices[:40]
    ]
    body += "<h3>Slices: size, label rates, label-noise rate</h3>" + table(
        ["slice", "size", "share", "label rates", "noise rate", "mean label quality"],
        srows,
        ["", "num", "num", "", "num", "num"],
    )
    terms = list(bias.get("data_driven_terms", []))
    if terms:
        by_label: dict[str, list[str]] = {}
        for t in terms:
            by_label.setdefault(t["label"], []).append(f"{t['term']} ({t['z']:.1f})")
        trows = [[esc(k), esc(", ".join(v))] for k, v in by_label.items()]
        body += "<h3>Terms that predict each label (log-odds, Dirichlet prior; z)</h3>" + table(
            ["label", "terms"], trows, ["", "text"]
        )
    return section("Bias: identity groups and labels", body, sid="bias")


def _embedding_map(data: ReportData) -> str:
    if data.coords is None or len(data.coords) == 0:
        return section(
            "Embedding map", '<p class="muted">No embeddings (fast mode).</p>', sid="map"
        )
    plt = pyplot()
    df = data.records
    xy = np.asarray(data.coords)
    labels = df["label"].fillna("(unlabeled)").astype(str).to_numpy()
    issue = df["label_issue"].fillna(False).astype(bool).to_numpy()
    fig, ax = plt.subplots(figsize=(8, 6))
    for i, lab in enumerate(sorted(set(labels))):
        m = labels == lab
        ax.scatter(xy[m, 0], xy[m, 1], s=5, alpha=0.5, color=plt.cm.tab10(i % 10), label=lab)
    ax.scatter(
        xy[issue, 0], xy[issue, 1], s=14, marker="x", color="#000", lw=0.7, label="label issue"
    )
    ax.legend(markerscale=2, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    note = '<p class="muted">2-D projection of the sentence embeddings; × marks label issues.</p>'
    return section("Embedding map", png(fig) + note, sid="map")


def render_report(data: ReportData) -> str:
    """The whole report as one HTML string (no scripts, no external resources)."""
    sections = [
        _summary(data),
        _labels(data),
        _quality_hist(data),
        _top_issues(data),
        _duplicates(data),
        _bias(data),
        _embedding_map(data),
    ]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    subtitle = f"{data.project} · {when}"
    return page(data.title, data.title, subtitle, "".join(sections), EXTRA_CSS)


def stage_counts(project) -> dict[str, dict[str, Any]]:
    """Row counts from each stage's manifest (ingest, dedup, score) that exists."""
    out: dict[str, dict[str, Any]] = {}
    for stage in ("ingest", "dedup", "score"):
        manifest = project.read_manifest(stage)
        if manifest:
            out[stage] = dict(manifest.get("counts", {}))
    return out


def build_report(project) -> str:
    """Re-render ``DIR/score/report.html`` from the score folder (no rescoring); returns it."""
    import pandas as pd

    from thresher.project import atomic_write_text

    path = project.require("score", "thresher curate score -p DIR")
    folder = path.parent
    records = pd.read_parquet(path)
    bias = json.loads((folder / "bias.json").read_text(encoding="utf-8"))
    coords = None
    map_path = folder / "map.parquet"
    if map_path.exists():
        coords = pd.read_parquet(map_path)[["x", "y"]].to_numpy()
    manifest = project.read_manifest("score") or {}
    scoring = manifest.get("scoring", {})
    html_text = render_report(
        ReportData(
            records=records,
            bias=bias,
            stage_counts=stage_counts(project),
            coords=coords,
            project=str(project.root),
            scoring=scoring,
            skipped=list(manifest.get("summary", {}).get("skipped", [])),
        )
    )
    out = folder / "report.html"
    atomic_write_text(out, html_text)
    return str(out)
