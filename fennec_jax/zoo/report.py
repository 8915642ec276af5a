"""What ``rank`` writes for a new task: ``ranking.csv``, ``report.md`` and a self-contained
``report.html`` (the table and a plot of the predicted scores with their intervals, measured
scores marked; the page is built by :mod:`fennec_jax.eval.html_report`: the plot is an inline
PNG, so the page opens anywhere without other files).
"""

from __future__ import annotations

import os

import numpy as np

from fennec_jax.core import atomic_io
from fennec_jax.eval import html_report
from fennec_jax.zoo.zoo import TaskRanking

__all__ = ["ranking_markdown", "ranking_figure", "ranking_html", "write_ranking"]

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


def _shown(ranking: TaskRanking, top_k: int | None) -> tuple[list[str], list[list[str]]]:
    """``(columns, cells)`` of the reports' table: the CSV's, less ``evidence`` (the same on
    every row; the reports say it once, above the table)."""
    keep = [i for i, c in enumerate(ranking.columns) if c != "evidence"]
    return [ranking.columns[i] for i in keep], [[_cell(row[i]) for i in keep] for row in ranking.rows(top_k)]


def ranking_markdown(ranking: TaskRanking, zoo_name: str, top_k: int | None = None) -> str:
    """The ranking as Markdown: what it rests on, then the table of the best ``top_k``."""
    columns, cells = _shown(ranking, top_k)
    lines = [f"# Ranking for {ranking.task}", "", *_intro(ranking, zoo_name), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def ranking_figure(ranking: TaskRanking, count: int = _PLOTTED) -> str:
    """HTML ``<figure>``: the best ``count`` models' predicted scores with their intervals
    (bars), and measured scores (filled diamonds) where known; best at the top."""
    table = ranking.table
    order = table.order()[:count]
    y = np.arange(order.size)[::-1]
    fig, axes = html_report.new_figure(8, 0.28 * order.size + 1.4)
    ax = axes[0, 0]
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
    interval = (f"bars: {ranking.level:.0%} intervals, calibrated on the zoo's held-out history tasks"
                if table.low is not None else "the method gives no interval")
    caption = (f"Predicted score (dot) of the best {order.size} of the {len(table.models)} models for "
               f"{ranking.task}, in the records' units, best at the top; {interval}; red diamonds: measured "
               f"scores given as probes (a measured model is ranked by its measurement). Evidence: "
               f"{ranking.evidence}.")
    return html_report.figure(fig, caption, alt="predicted scores with intervals, best first")


def ranking_html(ranking: TaskRanking, zoo_name: str, top_k: int | None = None) -> str:
    """A self-contained HTML page: what the ranking rests on, the plot, the table."""
    body = [html_report.paragraph(p) for p in _intro(ranking, zoo_name)]
    body += [ranking_figure(ranking), html_report.table(*_shown(ranking, top_k), text_columns=(1,))]
    return html_report.page(f"Ranking for {ranking.task}", body)


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
