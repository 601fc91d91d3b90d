"""The monitor's ``report.html``: one self-contained page (inline CSS, plots as base64 PNG).

Sections: the decision, the per-test table and p-values, label distributions side by side,
confidence histograms, a 2-D PCA map of reference and traffic embeddings, the bias slices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from thresher.html_report import esc, page, png, pyplot, section, table

EXTRA_CSS = """
.drift{color:#cf222e;font-weight:600} .ok{color:#1a7f37;font-weight:600}
"""


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return esc(value)


def _decision(result: Mapping[str, Any]) -> str:
    if not result["decided"]:
        verdict = '<span class="muted">no decision</span>'
    elif result["drift"]:
        verdict = '<span class="drift">DRIFT</span>'
    else:
        verdict = '<span class="ok">no drift</span>'
    notes = "".join(f"<li>{esc(n)}</li>" for n in result["notes"])
    return section(
        "Decision",
        f"<p>{verdict}: {result['n']} texts served by run <b>{esc(result['run'])}</b>; "
        f"a test flags drift when p &lt; {_num(result['threshold'])} "
        f"(alpha {_num(result['alpha'])} / {max(1, len(result['tests']))} tests, Bonferroni).</p>"
        + (f"<ul>{notes}</ul>" if notes else ""),
    )


def _tests(result: Mapping[str, Any]) -> str:
    if not result["tests"]:
        return ""
    rows = [
        [esc(name), _num(t["statistic"]), _num(t["p_value"]),
         '<span class="drift">yes</span>' if t["drift"] else "no",
         esc(", ".join(f"{k} {_num(v)}" for k, v in t["details"].items()
                        if not isinstance(v, list)))]
        for name, t in result["tests"].items()
    ]  # fmt: skip
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    names = list(result["tests"])
    # Evidence as -log10(p), capped for display: longer bar = stronger evidence of drift.
    evidence = [min(-np.log10(max(result["tests"][n]["p_value"], 1e-300)), 20.0) for n in names]
    ax.barh(names, evidence, color="#0969da")
    ax.axvline(-np.log10(result["threshold"]), color="#cf222e", ls="--", label="threshold")
    ax.set_xlabel("-log10 p-value (capped at 20; right of the line = drift)")
    ax.legend(loc="lower right")
    tests_table = table(["test", "statistic", "p-value", "drift", "details"], rows)
    return section("Tests", tests_table + png(fig))


def _labels(result: Mapping[str, Any]) -> str:
    test = result["tests"].get("label_distribution")
    if not test:
        return ""
    d = test["details"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(len(d["labels"]))
    ax.bar(x - 0.2, d["reference_share"], 0.4, label="reference (held-out)", color="#8c959f")
    ax.bar(x + 0.2, d["traffic_share"], 0.4, label="traffic", color="#0969da")
    ax.set_xticks(x, d["labels"], rotation=30, ha="right")
    ax.set_ylabel("share of predictions")
    ax.legend()
    return (
        f"<div>{png(fig)}<p class='muted'>PSI {_num(d['psi'])} (above 0.2 is the usual "
        "alarm)</p></div>"
    )


def _confidence(plots: dict[str, Any]) -> str:
    ref, cur = plots.get("reference_conf"), plots.get("traffic_conf")
    if ref is None or cur is None or not len(ref) or not len(cur):
        return ""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(min(ref.min(), cur.min()), 1.0, 21)
    ax.hist(ref, bins=bins, density=True, alpha=0.55, label="reference", color="#8c959f")
    ax.hist(cur, bins=bins, density=True, alpha=0.55, label="traffic", color="#0969da")
    ax.set_xlabel("max probability")
    ax.legend()
    return f"<div>{png(fig)}</div>"


def _embedding_map(plots: dict[str, Any]) -> str:
    ref, cur = plots.get("train_vectors"), plots.get("traffic_vectors")
    if ref is None or cur is None:
        return ""
    pooled = np.vstack([ref, cur]).astype(np.float64)
    centred = pooled - pooled.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(*xy[: len(ref)].T, s=6, alpha=0.35, label="reference (training)", color="#8c959f")
    ax.scatter(*xy[len(ref) :].T, s=8, alpha=0.7, label="traffic", color="#0969da")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend()
    return section("Embeddings (PCA)", png(fig))


def _slices(result: Mapping[str, Any]) -> str:
    if not result["slices"]:
        return ""
    rows = [
        [esc(s["slice"]), _num(s["reference_rate"]), _num(s["traffic_rate"]),
         _num(s["statistic"]), _num(s["p_value"]),
         '<span class="drift">yes</span>' if s["shifted"] else "no"]
        for s in result["slices"]
    ]  # fmt: skip
    return section(
        "Bias slices (mention rate; reported, not part of the decision)",
        table(["slice", "reference rate", "traffic rate", "z", "p-value", "shifted"], rows)
        + f"<p class='muted'>Bonferroni inside the family: shifted when p &lt; "
        f"{_num(result['slices'][0]['threshold'])}.</p>",
    )


def render_monitor_report(result: Mapping[str, Any], plots: dict[str, Any]) -> str:
    """The whole page as one string, from the monitor's summary (``MonitorResult.to_dict``) and
    the arrays behind the plots."""
    pair = _labels(result) + _confidence(plots)
    body = (
        _decision(result)
        + _tests(result)
        + (section("Predictions", f"<div class='row'>{pair}</div>") if pair else "")
        + _embedding_map(plots)
        + _slices(result)
    )
    window = result["window"]
    subtitle = (
        f"run {result['run']} · since {window.get('since') or 'the start'} · "
        f"until {window.get('until') or 'now'}"
    )
    return page("thresher monitor", "thresher monitor", subtitle, body, EXTRA_CSS)
