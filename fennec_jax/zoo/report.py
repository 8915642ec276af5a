"""What ``rank`` writes for a new task: ``ranking.csv``, ``report.md`` and a self-contained
``report.html`` (the table and a plot of the predicted scores with their intervals, measured
scores marked; the plot is an inline PNG, so the page opens anywhere without other files).
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np

from fennec_jax.core import atomic_io
from fennec_jax.zoo.zoo import TaskRanking

__all__ = ["ranking_markdown", "ranking_html", "ranking_plot_png", "write_ranking"]

_PLOTTED = 30  # models in the plot


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _intro(ranking: TaskRanking, zoo_name: str) -> list[str]:
    table = ranking.table
    observed = int(table.observed.sum())
    return [f"Task **{ranking.task}**, zoo {zoo_name}: {len(table.models)} models ranked from {ranking.evidence}.",
            f"Scores are in the units of the zoo's records; intervals cover {ranking.level:.0%} of held-out "
            f"history results (calibrated on the zoo's own tasks). {observed} model(s) have a measured result "
            f"for this task (`observed`), ranked by it."]


def ranking_markdown(ranking: TaskRanking, zoo_name: str, top_k: int | None = None) -> str:
    """The ranking as Markdown: what it rests on, then the table of the best ``top_k``."""
    rows = ranking.rows(top_k)
    lines = [f"# Ranking for {ranking.task}", "", *_intro(ranking, zoo_name), "",
             "| " + " | ".join(ranking.columns) + " |", "|" + "---|" * len(ranking.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def ranking_plot_png(ranking: TaskRanking, count: int = _PLOTTED) -> bytes:
    """PNG bytes: the best ``count`` models' predicted scores with their intervals (bars), and
    measured scores (filled diamonds) where known; best at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = ranking.table
    order = table.order()[:count]
    y = np.arange(order.size)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.28 * order.size + 1.4), dpi=100)
    if table.low is not None:
        ax.errorbar(table.predicted[order], y, xerr=[table.predicted[order] - table.low[order],
                                                     table.high[order] - table.predicted[order]],
                    fmt="o", color="#1f77b4", ecolor="#9ecae1", capsize=2, label=f"predicted ({ranking.level:.0%} interval)")
    else:
        ax.plot(table.predicted[order], y, "o", color="#1f77b4", label="predicted")
    seen = table.observed[order]
    if seen.any():
        ax.plot(table.measured[order][seen], y[seen], "D", color="#d62728", label="measured")
    ax.set_yticks(y, [table.models[i] for i in order], fontsize=8)
    ax.set_xlabel("score (records' units)")
    ax.set_title(f"{ranking.task}: top {order.size} of {len(table.models)}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def ranking_html(ranking: TaskRanking, zoo_name: str, top_k: int | None = None) -> str:
    """A self-contained HTML page: what the ranking rests on, the plot, the table."""
    image = base64.b64encode(ranking_plot_png(ranking)).decode()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ranking.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                     for row in ranking.rows(top_k))
    intro = "".join(f"<p>{html.escape(p).replace('**', '')}</p>" for p in _intro(ranking, zoo_name))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Ranking for {html.escape(ranking.task)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
tr:nth-child(even) {{ background: #f6f6f6; }}
img {{ max-width: 100%; }}
</style></head>
<body>
<h1>Ranking for {html.escape(ranking.task)}</h1>
{intro}
<img alt="predicted scores with intervals, best first" src="data:image/png;base64,{image}">
<table><thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""


def write_ranking(out: str, ranking: TaskRanking, zoo_name: str, top_k: int | None = None) -> list[str]:
    """Writes ``OUT/ranking.csv`` (every model, or the best ``top_k``), ``report.md`` and
    ``report.html``, each atomically; returns their paths. Everything is rendered before the
    first file is written, so a failure leaves ``OUT`` as it was."""
    rendered = {"report.md": ranking_markdown(ranking, zoo_name, top_k),
                "report.html": ranking_html(ranking, zoo_name, top_k)}
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, "ranking.csv")]
    atomic_io.write_csv(paths[0], ranking.columns, ranking.rows(top_k))
    for name, text in rendered.items():
        paths.append(os.path.join(out, name))
        atomic_io.write_text(paths[-1], text)
    return paths
