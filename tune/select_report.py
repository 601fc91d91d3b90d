"""The selection page ``DIR/tune/selection/report.html``: one self-contained file (inline CSS, the
F1-vs-latency plot as an embedded PNG), no scripts, nothing fetched. Every value shown goes
through ``html.escape``.
"""

from __future__ import annotations

from typing import Any

from thresher.html_report import esc, page, png, pyplot, section, table

# Candidate and Selection (tune/select.py) are duck-typed here: select.py imports this module
Candidate = Selection = Any

EXTRA_CSS = """
tr.chosen td{background:#dafbe1;font-weight:600}
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


def fmt(value: Any, digits: int | None) -> str:
    """A table cell as plain text: – for missing, thousands separators for counts, fixed digits
    otherwise."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if digits is None:
        return str(value)
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
    plt = pyplot()
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
    return png(fig, alt="macro-F1 against latency")


def _candidates_table(selection: Selection) -> str:
    cells = [[esc(v) for v in cell_values(c)] for c in selection.candidates]
    classes = ["num" if digits is not None else "" for _, _, digits in COLUMNS]
    chosen = ["chosen" if c.run == selection.chosen else "" for c in selection.candidates]
    return table([h for h, _, _ in COLUMNS], cells, classes, chosen)


def _trials_table(selection: Selection) -> str:
    rows = []
    for c in selection.candidates:
        for t in c.trials:
            params = ", ".join(f"{k}={v:.3g}" for k, v in t.get("params", {}).items())
            rows.append(
                [
                    esc(c.base),
                    esc(t.get("number")),
                    esc(t.get("run")),
                    esc(params),
                    esc(t.get("state")),
                    esc(fmt(t.get("val_macro_f1"), 4)),
                    "✓" if t.get("chosen") else "",
                ]
            )
    if not rows:
        return ""
    headers = ["base", "trial", "run", "params", "state", "val macro-F1", "kept"]
    classes = ["", "", "", "", "", "num", ""]
    return section(
        "Hyperparameter search (picked by validation macro-F1)", table(headers, rows, classes)
    )


def render_selection(selection: Selection) -> str:
    """The whole page as one HTML string."""
    chosen = selection.chosen or "none"
    choice = (
        f"<p><b>{esc(chosen)}</b>: {esc(selection.reason)}</p>"
        f'<p class="muted">Rule: {esc(selection.rule)}. Quality on the fixed test split; '
        "latency and memory measured on this machine.</p>"
    )
    candidates = (
        _candidates_table(selection)
        + '<p class="muted">↑ higher is better, ↓ lower is better. Worst slice: lowest macro-F1 '
        "among slices of enough records. Peak MiB: memory that loading and scoring added.</p>"
    )
    body = (
        section("Choice", choice)
        + section("Candidates", candidates)
        + section("Macro-F1 against latency", _plot(selection))
        + _trials_table(selection)
    )
    subtitle = f"{selection.time} · {selection.device}"
    return page(
        "thresher tune select", f"Base-model selection: {chosen}", subtitle, body, EXTRA_CSS
    )
