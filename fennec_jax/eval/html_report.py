"""Self-contained HTML pages with matplotlib figures: the plumbing every report page shares
(evaluation reports, :mod:`fennec_jax.eval.reports`; a new task's ranking,
:mod:`fennec_jax.zoo.report`).

A page is one file that opens anywhere: each figure is an inline PNG (a ``data:`` URI), and
the page has no script and loads nothing else. Figures are drawn on a bare
:class:`matplotlib.figure.Figure` and rendered by the Agg backend, so pyplot's global state
(and whatever backend a notebook chose) is never touched. All text is HTML-escaped here;
callers pass plain text.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Sequence

__all__ = ["new_figure", "figure", "table", "paragraph", "page"]

_DPI = 100

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 72em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #eee; }
td.text, th.text { text-align: left; }
tr:nth-child(even) { background: #f6f6f6; }
figure { margin: 1em 0 1.5em; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
.note { background: #fff6d6; border-left: 4px solid #e0b000; padding: 0.4em 0.8em; }
"""


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **subplot_kw):
    """``(fig, axes[nrows, ncols])``: a bare Agg-rendered figure of ``width`` x ``height``
    inches and its axes (always a 2-D object array)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)


def figure(fig, caption: str, alt: str) -> str:
    """``<figure>``: ``fig`` as an inline PNG with its ``alt`` text and ``caption``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{paragraph(caption, tag=None)}</figcaption></figure>")


def table(columns: Sequence[str], rows: Iterable[Sequence], text_columns: Sequence[int] = (0,)) -> str:
    """``<table>`` of ``rows`` (values rendered with ``str``) under ``columns``; the columns
    at ``text_columns`` are left-aligned, the others (numbers) right-aligned."""

    def cells(values, tag):
        return "".join(f'<{tag}{" class=text" if i in text_columns else ""}>{html.escape(str(v))}</{tag}>'
                       for i, v in enumerate(values))

    body = "\n".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{cells(columns, "th")}</tr></thead>\n<tbody>\n{body}\n' \
           f"</tbody></table></div>"


def paragraph(text: str, tag: str | None = "p", css_class: str | None = None) -> str:
    """``text`` escaped, its Markdown ``**bold**`` and ```code``` rendered, inside ``<tag>``
    (None: bare)."""
    inner = html.escape(text)
    inner = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", inner)
    inner = re.sub(r"`(.+?)`", r"<code>\1</code>", inner)
    if tag is None:
        return inner
    return f'<{tag}{f" class={css_class}" if css_class else ""}>{inner}</{tag}>'


def page(title: str, body: Sequence[str]) -> str:
    """The whole page: ``title`` (plain text) as its title and first heading, then the
    ``body`` parts (HTML from this module's functions) in order."""
    parts = "\n".join(body)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
{parts}
</body></html>
"""
