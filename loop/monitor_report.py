"""The monitor's ``report.html``: one self-contained page (inline CSS, plots as base64 PNG).

Sections: the decision, the per-test table and p-values, label distributions side by side,
confidence histograms, a 2-D PCA map of reference and traffic embeddings, the bias slices.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;
  color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#c9d1d9;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:16px 32px 48px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;margin:16px 0}
h2{font-size:18px;margin:0 0 10px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #eaeef2;padding:5px 8px;text-align:left}
th{background:#f6f8fa} .drift{color:#cf222e;font-weight:600} .ok{color:#1a7f37;font-weight:600}
img{max-width:100%;height:auto} .row{display:flex;flex-wrap:wrap;gap:16px}
.row>div{flex:1 1 420px} .muted{color:#57606a;font-size:12px}
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return _esc(value)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_esc(title)}</h2>{body}</section>"


def _decision(result: Mapping[str, Any]) -> str:
    if not result["decided"]:
        verdict = '<span class="muted">no decision</span>'
    elif result["drift"]:
        verdict = '<span class="drift">DRIFT</span>'
    else:
        verdict = '<span class="ok">no drift</span>'
    notes = "".join(f"<li>{_esc(n)}</li>" for n in result["notes"])
    return _section(
        "Decision",
        f"<p>{verdict}: {result['n']} texts served by run <b>{_esc(result['run'])}</b>; "
        f"a test flags drift when p &lt; {_num(result['threshold'])} "
        f"(alpha {_num(result['alpha'])} / {max(1, len(result['tests']))} tests, Bonferroni).</p>"
        + (f"<ul>{notes}</ul>" if notes else ""),
    )


def _tests(result: Mapping[str, Any]) -> str:
    if not result["tests"]:
        return ""
    rows = [
        [_esc(name), _num(t["statistic"]), _num(t["p_value"]),
         '<span class="drift">yes</span>' if t["drift"] else "no",
         _esc(", ".join(f"{k} {_num(v)}" for k, v in t["details"].items()
                        if not isinstance(v, list)))]
        for name, t in result["tests"].items()
    ]  # fmt: skip
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    names = list(result["tests"])
    # Evidence as -log10(p), capped for display: longer bar = stronger evidence of drift.
    evidence = [min(-np.log10(max(result["tests"][n]["p_value"], 1e-300)), 20.0) for n in names]
    ax.barh(names, evidence, color="#0969da")
    ax.axvline(-np.log10(result["threshold"]), color="#cf222e", ls="--", label="threshold")
    ax.set_xlabel("-log10 p-value (capped at 20; right of the line = drift)")
    ax.legend(loc="lower right")
    table = _table(["test", "statistic", "p-value", "drift", "details"], rows)
    return _section("Tests", table + _png(fig))


def _labels(result: Mapping[str, Any]) -> str:
    test = result["tests"].get("label_distribution")
    if not test:
        return ""
    d = test["details"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    x = np.arange(len(d["labels"]))
    ax.bar(x - 0.2, d["reference_share"], 0.4, label="reference (held-out)", color="#8c959f")
    ax.bar(x + 0.2, d["traffic_share"], 0.4, label="traffic", color="#0969da")
    ax.set_xticks(x, d["labels"], rotation=30, ha="right")
    ax.set_ylabel("share of predictions")
    ax.legend()
    return (
        f"<div>{_png(fig)}<p class='muted'>PSI {_num(d['psi'])} (above 0.2 is the usual "
        "alarm)</p></div>"
    )


def _confidence(plots: dict[str, Any]) -> str:
    ref, cur = plots.get("reference_conf"), plots.get("traffic_conf")
    if ref is None or cur is None or not len(ref) or not len(cur):
        return ""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(min(ref.min(), cur.min()), 1.0, 21)
    ax.hist(ref, bins=bins, density=True, alpha=0.55, label="reference", color="#8c959f")
    ax.hist(cur, bins=bins, density=True, alpha=0.55, label="traffic", color="#0969da")
    ax.set_xlabel("max probability")
    ax.legend()
    return f"<div>{_png(fig)}</div>"


def _embedding_map(plots: dict[str, Any]) -> str:
    ref, cur = plots.get("train_vectors"), plots.get("traffic_vectors")
    if ref is None or cur is None:
        return ""
    pooled = np.vstack([ref, cur]).astype(np.float64)
    centred = pooled - pooled.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(*xy[: len(ref)].T, s=6, alpha=0.35, label="reference (training)", color="#8c959f")
    ax.scatter(*xy[len(ref) :].T, s=8, alpha=0.7, label="traffic", color="#0969da")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend()
    return _section("Embeddings (PCA)", _png(fig))


def _slices(result: Mapping[str, Any]) -> str:
    if not result["slices"]:
        return ""
    rows = [
        [_esc(s["slice"]), _num(s["reference_rate"]), _num(s["traffic_rate"]),
         _num(s["statistic"]), _num(s["p_value"]),
         '<span class="drift">yes</span>' if s["shifted"] else "no"]
        for s in result["slices"]
    ]  # fmt: skip
    return _section(
        "Bias slices (mention rate; reported, not part of the decision)",
        _table(["slice", "reference rate", "traffic rate", "z", "p-value", "shifted"], rows)
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
        + (_section("Predictions", f"<div class='row'>{pair}</div>") if pair else "")
        + _embedding_map(plots)
        + _slices(result)
    )
    window = result["window"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>thresher monitor</title>"
        f"<style>{CSS}</style></head><body><header><h1>thresher monitor</h1><p>run "
        f"{_esc(result['run'])} · since {_esc(window.get('since') or 'the start')} · until "
        f"{_esc(window.get('until') or 'now')}</p></header><main>{body}</main></body></html>"
    )
