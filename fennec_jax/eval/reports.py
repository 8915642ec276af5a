"""One report writer for every evaluation: ``report.json`` and ``report.md`` (and, through
the ``figures`` hook, anything rendered from the same report).

A report is the dict :func:`fennec_jax.eval.protocol.evaluate` returns (``benchmark``,
``protocol``, ``settings``, ``metrics``, ``results[method][setting]`` with ``mean``, ``se``
and ``per_task``, ``seconds``), plus any extra keys a program adds. :func:`to_markdown`
renders the mean table (every mean with its standard error) and a per-task table of the
first metric; a report over a single task says so instead of a standard error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

from fennec_jax.core import atomic_io

__all__ = ["to_markdown", "write_report"]

_LABELS = {"weighted_tau": "weighted tau", "kendall": "Kendall", "spearman": "Spearman", "pearson": "Pearson",
           "top1_regret": "top-1 regret"}
_SETTING = {"leave-one-task-out": "k", "architectures-out": "n"}


def _cell(mean: float, se: float) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f}" if se is None or not math.isfinite(se) else f"{mean:.3f} ± {se:.3f}"


def to_markdown(report: dict, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """The report as Markdown: protocol line, mean table (mean ± standard error), per-task
    table of the first metric, then ``notes`` (one paragraph each)."""
    protocol = report["protocol"]
    kind = protocol.get("kind", "")
    setting = _SETTING.get(kind, "setting")
    keys = report["metrics"]
    described = "; ".join(f"{k} = {v}" for k, v in protocol.items() if k not in ("kind", "targets", "folds"))
    lines = [f"# {title or report['benchmark']}: {kind}", "", described + ".", ""]
    some_task = next((e for by in report["results"].values() for e in by.values()), {"per_task": {}})
    if len(some_task["per_task"]) == 1:
        lines += ["One task only: no spread over tasks, so no standard error.", ""]
    lines += ["| method | " + setting + " | " + " | ".join(_LABELS.get(k, k) for k in keys) + " | seconds |",
              "|---|---|" + "---|" * (len(keys) + 1)]
    for name, by_setting in report["results"].items():
        for value, entry in by_setting.items():
            cells = " | ".join(_cell(entry["mean"][k], entry["se"].get(k)) for k in keys)
            lines.append(f"| {name} | {value} | {cells} | {report['seconds'].get(name, float('nan')):.1f} |")
    first = keys[0]
    tasks = list(some_task["per_task"])
    lines += ["", f"## Per task ({_LABELS.get(first, first)})", "",
              "| method | " + setting + " | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for name, by_setting in report["results"].items():
        for value, entry in by_setting.items():
            cells = " | ".join(f"{entry['per_task'][t][first]:.3f}" if t in entry["per_task"] else "n/a" for t in tasks)
            lines.append(f"| {name} | {value} | {cells} |")
    lines += [""] + [f"{note}\n" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out: str, report: dict, *, title: str | None = None, notes: Sequence[str] = (),
                 figures: Callable[[str, dict], None] | None = None) -> str:
    """Writes ``out/report.json`` and ``out/report.md`` atomically (and calls ``figures(out,
    report)`` when given); returns the Markdown."""
    markdown = to_markdown(report, title, notes)
    atomic_io.write_json(os.path.join(out, "report.json"), report)
    atomic_io.write_text(os.path.join(out, "report.md"), markdown)
    if figures is not None:
        figures(out, report)
    return markdown
