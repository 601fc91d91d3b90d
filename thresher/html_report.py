"""Building blocks of thresher's HTML pages (curate's report, tune select's page, the monitor's).

Each page is one self-contained file: inline CSS, plots as embedded PNG, no scripts, nothing
fetched (a Content-Security-Policy says so to the browser). Every value shown goes through
``esc``: a record holding ``<script>`` shows as text and runs nothing. matplotlib is imported
only when a page draws a plot.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;
  color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#c9d1d9;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:16px 32px 48px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;
  margin:16px 0}
h2{font-size:18px;margin:0 0 10px} h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #eaeef2;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#57606a;font-size:12px}
img{max-width:100%;height:auto} .row{display:flex;flex-wrap:wrap;gap:16px}
.row>div{flex:1 1 420px}
"""

CONTENT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(value: Any) -> str:
    """``value`` as HTML text (None as empty), quotes escaped too."""
    return html.escape("" if value is None else str(value), quote=True)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png(fig, alt: str = "plot") -> str:
    """An ``<img>`` holding ``fig`` as an embedded PNG; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    pyplot().close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    classes: Sequence[str] = (),
    row_classes: Sequence[str] = (),
) -> str:
    """A table: ``headers`` are escaped here, cells are HTML already (escape them before).
    ``classes[i]`` is the class of column ``i``'s cells, ``row_classes[j]`` that of row ``j``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for j, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            cls = classes[i] if i < len(classes) else ""
            cells.append(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>")
        row_cls = row_classes[j] if j < len(row_classes) else ""
        tag = f'<tr class="{row_cls}">' if row_cls else "<tr>"
        body.append(tag + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(title: str, body: str, sid: str = "") -> str:
    """A boxed section with an escaped ``<h2>`` title; ``body`` is HTML."""
    anchor = f' id="{esc(sid)}"' if sid else ""
    return f"<section{anchor}><h2>{esc(title)}</h2>{body}</section>"


def page(title: str, heading: str, subtitle: str, body: str, extra_css: str = "") -> str:
    """The whole document: ``title``, ``heading`` and ``subtitle`` are escaped here, ``body``
    (the sections) is HTML."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_POLICY}">'
        f"<title>{esc(title)}</title><style>{CSS}{extra_css}</style></head><body>"
        f"<header><h1>{esc(heading)}</h1><p>{esc(subtitle)}</p></header>"
        f"<main>{body}</main></body></html>\n"
    )
