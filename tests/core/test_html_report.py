"""The shared HTML building blocks: escaping, one self-contained page, embedded plots."""

from __future__ import annotations

from thresher.html_report import CONTENT_POLICY, esc, page, png, pyplot, section, table


def test_headers_titles_and_escaped_cells_cannot_inject_markup():
    evil = "<script>alert(1)</script>"
    html = page(evil, evil, evil, section(evil, table([evil], [[esc(evil)]])), ".x{}")
    assert "<script>" not in html
    assert html.count("&lt;script&gt;") == 6  # title, h1, subtitle, h2, th, td
    assert CONTENT_POLICY in html and ".x{}" in html


def test_table_column_and_row_classes():
    html = table(["a", "b"], [["1", "2"], ["3", "4"]], ["", "num"], ["", "chosen"])
    assert '<tr><td>1</td><td class="num">2</td></tr>' in html
    assert '<tr class="chosen"><td>3</td><td class="num">4</td></tr>' in html


def test_png_embeds_the_figure_and_closes_it():
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    img = png(fig, alt="a line")
    assert img.startswith('<img alt="a line" src="data:image/png;base64,iVBOR')
    assert not plt.fignum_exists(fig.number)
