"""The selection page ``DIR/tune/selection/report.html``: one self-contained file (inline CSS, the
F1-vs-latency plot as an embedded PNG), no scripts, nothing fetched. Every value shown goes
through ``html.escape``.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

# Candidate and Selection (tune/select.py) are duck-typed here: select.py imports this module
Candidate = Selection = Any

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
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.chosen td{background:#dafbe1;font-weight:600} .muted{color:#57606a;font-size:12px}
"""

# (header, Candidate field, digits; None = text)
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("base", "base", None),
    ("run", "run", None),
    ("macro-F1 ↑", "macro_f1", 4),
    ("95% CI", "ci", None),
    ("worst slice F1 ↑", "worst_slice_f1", 4),
    ("ECE ↓", "ece", 4),
    ("ms/rec b1 ↓", "latency_ms", 2),
    ("ms/rec b32 ↓", "latency_ms_b32", 2),
    ("rec/s ↑", "records_per_s", 1),
    ("peak MiB ↓", "peak_mem_mb", 1),
    ("trainable", "trainable_params", 0),
    ("total params", "total_params", 0),
    ("size MiB", "size_mb", 1),
)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, digits: int | None) -> str:
    """A table cell: – for missing, thousands separators for counts, fixed digits otherwise."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if digits is None:
        return esc(value)
    if digits == 0:
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def cell_values(c: Candidate) -> list[str]:
    """The row of ``c`` in ``COLUMNS`` order, as plain text."""
    row = []
    for _, name, digits in COLUMNS:
        if name == "ci":
            row.append(f"{c.ci_low:.3f}–{c.ci_high:.3f}")
        else:
            row.append(fmt(getattr(c, name), digits))
    return row


def table_lines(selection: Selection) -> list[str]:
    """The candidates table as fixed-width terminal lines (the chosen run marked ``*``)."""
    headers = ["", *(h for h, _, _ in COLUMNS)]
    rows = [
        ["*" if c.run == selection.chosen else "", *cell_values(c)] for c in selection.candidates
    ]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    text = [h if i < 3 else h.rjust(widths[i]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return [line(text), *(line(r) for r in rows)]


def _plot(selection: Selection) -> str:
    """Test macro-F1 (with its 95 % interval) against batch-1 latency, one point per base."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for c in selection.candidates:
        chosen = c.run == selection.chosen
        ax.errorbar(
            c.latency_ms,
            c.macro_f1,
            yerr=[[max(0.0, c.macro_f1 - c.ci_low)], [max(0.0, c.ci_high - c.macro_f1)]],
            fmt="*" if chosen else "o",
            markersize=14 if chosen else 7,
            capsize=4,
            color="tab:green" if chosen else "tab:blue",
        )
        ax.annotate(c.base, (c.latency_ms, c.macro_f1), xytext=(6, 6), textcoords="offset points")
    ax.set_xlabel("latency per record at batch 1 (ms, lower is better)")
    ax.set_ylabel("test macro-F1 (higher is better)")
    ax.set_title("quality vs latency (95% bootstrap interval)")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="macro-F1 against latency" src="data:image/png;base64,{data}">'


def _candidates_table(selection: Selection) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h, _, _ in COLUMNS)
    body = []
    for c in selection.candidates:
        cells = "".join(
            f'<td class="num">{v}</td>' if digits is not None else f"<td>{esc(v)}</td>"
            for v, (_, _, digits) in zip(cell_values(c), COLUMNS, strict=True)
        )
        cls = ' class="chosen"' if c.run == selection.chosen else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _trials_table(selection: Selection) -> str:
    rows = []
    for c in selection.candidates:
        for t in c.trials:
            params = ", ".join(f"{k}={v:.3g}" for k, v in t.get("params", {}).items())
            value = t.get("val_macro_f1")
            kept = "✓" if t.get("chosen") else ""
            rows.append(
                f"<tr><td>{esc(c.base)}</td><td>{esc(t.get('number'))}</td>"
                f"<td>{esc(t.get('run'))}</td><td>{esc(params)}</td><td>{esc(t.get('state'))}</td>"
                f'<td class="num">{fmt(value, 4)}</td><td>{kept}</td></tr>'
            )
    if not rows:
        return ""
    head = "".join(
        f"<th>{h}</th>" for h in ("base", "trial", "run", "params", "state", "val macro-F1", "kept")
    )
    return (
        "<section><h2>Hyperparameter search (picked by validation macro-F1)</h2>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def render_selection(selection: Selection) -> str:
    """The whole page as one HTML string."""
    chosen = selection.chosen or "none"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>thresher tune select</title><style>{CSS}</style></head><body>"
        f"<header><h1>Base-model selection: {esc(chosen)}</h1>"
        f"<p>{esc(selection.time)} · {esc(selection.device)}</p></header><main>"
        f"<section><h2>Choice</h2><p><b>{esc(chosen)}</b>: {esc(selection.reason)}</p>"
        f'<p class="muted">Rule: {esc(selection.rule)}. Quality on the fixed test split; '
        "latency and memory measured on this machine.</p></section>"
        f"<section><h2>Candidates</h2>{_candidates_table(selection)}"
        '<p class="muted">↑ higher is better, ↓ lower is better. Worst slice: lowest macro-F1 '
        "among slices of enough records. Peak MiB: memory that loading and scoring added.</p>"
        f"</section><section><h2>Macro-F1 against latency</h2>{_plot(selection)}</section>"
        f"{_trials_table(selection)}</main></body></html>"
    )
