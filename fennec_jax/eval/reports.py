"""One report writer for every evaluation: ``report.json``, ``report.md`` and a
self-contained ``report.html`` with figures.

A report is the dict :func:`fennec_jax.eval.protocol.evaluate` returns (``benchmark``,
``protocol`` (with ``se``: what the standard errors are over), ``settings``, ``metrics``,
``results[method][setting]`` with ``mean``, ``se``, ``per_task`` and, where seeds vary,
``per_task_se``, ``seconds``, and optionally ``predictions``), plus any extra keys a program
adds.

* :func:`to_markdown`: the protocol line, the mean table (every mean with its standard
  error), a per-task table of the first metric, the metrics' definitions, then notes.
* :func:`to_html`: the same tables and text, and figures (inline PNGs, see
  :mod:`fennec_jax.eval.html_report`): each method's mean of the headline metrics (weighted
  tau, normalised top-1 and final regret where reported) against the setting (k probes, n
  training models) with ± one standard error bars; the first metric per task (bars, ± one
  standard error over seeds where seeds vary); and, when the report keeps a method's
  predictions, predicted against true scores per task.

A report over a single task has no spread over tasks: both say so, instead of a standard
error (unless the standard error is over seeds).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from fennec_jax.core import atomic_io
from fennec_jax.eval import html_report

__all__ = ["to_markdown", "to_html", "write_report"]

_LABELS = {
    "weighted_tau": "weighted tau",
    "kendall": "Kendall tau-b",
    "spearman": "Spearman",
    "pearson": "Pearson",
    "top1_regret": "top-1 regret",
    "top1_regret_normalized": "top-1 regret / range",
    "final_regret": "final regret",
    "final_regret_normalized": "final regret / range",
    "weighted_tau_k0": "weighted tau at k = 0",
    "coverage": "interval coverage",
    "interval_width": "interval width",
}
_DEFINITIONS = {
    "weighted_tau": "weighted Kendall tau between true and predicted scores (hyperbolic weights: the top "
                    "models count most); 1 = the true order",
    "kendall": "Kendall tau-b between true and predicted scores",
    "spearman": "Spearman rank correlation",
    "pearson": "Pearson correlation",
    "top1_regret": "best true score minus the true score of the top predicted model, in the task's units",
    "top1_regret_normalized": "top-1 regret as a fraction of the task's range of true scores over the ranked "
                              "models (0 = the best was picked, 1 = the worst), so every task weighs alike",
    "final_regret": "regret of the user's final pick, the best of the measured probes and the top predicted "
                    "other model, in the task's units",
    "final_regret_normalized": "final regret as a fraction of the task's range over its evaluated models",
    "weighted_tau_k0": "weighted tau of the prediction made without probes, over the same models",
    "coverage": "share of the ranked models whose true score lies in their predicted interval (the protocol's "
                "level, calibrated on held-out history tasks of each fold, never the target)",
    "interval_width": "mean width of those intervals, in the task's units",
}
# Headline metrics of the figures, in this order; other reported metrics fill up to two.
_HEADLINE = ("weighted_tau", "top1_regret_normalized", "final_regret_normalized")
_SETTING = {"leave-one-task-out": ("k", "k (probe models revealed)"),
            "architectures-out": ("n", "n (training architectures)")}
_SCORED = {"leave-one-task-out": "each evaluated model other than the probes",
           "architectures-out": "each held-out model with a true score"}
_MARKERS = "osD^v<>ph*"
_PANEL_TASKS = 12  # scatter panels
_PANEL_SETTINGS = 4  # per-task bar panels


def _label(key: str) -> str:
    return _LABELS.get(key, key)


def _cell(mean: float, se: float | None) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.3f}" if se is None or not math.isfinite(se) else f"{mean:.3f} ± {se:.3f}"


def _setting(report: dict) -> tuple[str, str]:
    """(column name, axis label) of the setting axis."""
    return _SETTING.get(report["protocol"].get("kind", ""), ("setting", "setting"))


def _tasks(report: dict) -> list[str]:
    """Every task with a result, in the order they first appear."""
    tasks = {}
    for by_setting in report["results"].values():
        for entry in by_setting.values():
            tasks.update(dict.fromkeys(entry["per_task"]))
    return list(tasks)


def _no_spread(report: dict) -> bool:
    """One task and no standard error anywhere (none over seeds either)."""
    return len(_tasks(report)) == 1 and not any(
        math.isfinite(v) for by in report["results"].values() for e in by.values() for v in e["se"].values()
        if v is not None)


def _intro(report: dict) -> list[str]:
    """Paragraphs above the tables: protocol, standard-error convention, one-task note."""
    protocol = report["protocol"]
    described = "; ".join(f"{k} = {v}" for k, v in protocol.items() if k not in ("kind", "targets", "folds", "se"))
    tasks = len(_tasks(report))
    lines = [f"Benchmark {report['benchmark']}, {tasks} task(s); {described}."]
    if "se" in protocol:
        lines.append(f"Standard errors (±, error bars): {protocol['se']}; each is the sample standard deviation "
                     f"(ddof = 1) over the square root of the count.")
    if _no_spread(report):
        lines.append("One task only: no spread over tasks, so no standard error.")
    return lines


def _glossary(report: dict) -> str:
    return "Metrics: " + "; ".join(f"{_label(k)}: {_DEFINITIONS[k]}" for k in report["metrics"]
                                  if k in _DEFINITIONS) + "."


def _mean_table(report: dict) -> tuple[list[str], list[list[str]]]:
    keys = report["metrics"]
    columns = ["method", _setting(report)[0], *(_label(k) for k in keys), "seconds"]
    rows = [[name, value, *(_cell(entry["mean"][k], entry["se"].get(k)) for k in keys),
             f"{report['seconds'].get(name, float('nan')):.1f}"]
            for name, by_setting in report["results"].items() for value, entry in by_setting.items()]
    return columns, rows


def _per_task_table(report: dict) -> tuple[list[str], list[list[str]]]:
    first, tasks = report["metrics"][0], _tasks(report)
    columns = ["method", _setting(report)[0], *tasks]
    rows = [[name, value, *(f"{entry['per_task'][t][first]:.3f}" if t in entry["per_task"] else "n/a"
                            for t in tasks)]
            for name, by_setting in report["results"].items() for value, entry in by_setting.items()]
    return columns, rows


def to_markdown(report: dict, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """The report as Markdown: protocol and standard-error lines, mean table (mean ±
    standard error), per-task table of the first metric, metric definitions, then ``notes``
    (one paragraph each)."""
    lines = [f"# {title or report['benchmark']}: {report['protocol'].get('kind', '')}", ""]
    for paragraph in _intro(report):
        lines += [paragraph, ""]

    def markdown_table(columns, rows):
        return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
                *("| " + " | ".join(row) + " |" for row in rows)]

    lines += markdown_table(*_mean_table(report))
    lines += ["", f"## Per task ({_label(report['metrics'][0])})", "", *markdown_table(*_per_task_table(report))]
    lines += ["", _glossary(report), ""] + [f"{note}\n" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- figures


def _headline(report: dict) -> list[str]:
    keys = report["metrics"]
    chosen = [k for k in _HEADLINE if k in keys]
    return chosen + [k for k in keys if k not in chosen][: max(0, 2 - len(chosen))]


def _series(report: dict, name: str) -> list[tuple[str, list[float], list[str]]] | None:
    """``(suffix, x, settings)`` per line of ``name``: settings are "X" or "X suffix" (X a
    number; suffix a probe policy); the X = 0 setting without a suffix (no probe to
    choose) starts every line. None when a setting's X is not a number."""
    parsed = []
    for setting in report["results"][name]:
        head, _, suffix = setting.partition(" ")
        try:
            parsed.append((float(head), suffix, setting))
        except ValueError:
            return None
    suffixes = list(dict.fromkeys(s for _, s, _ in parsed))
    lines = []
    for suffix in suffixes:
        points = sorted((x, setting) for x, s, setting in parsed if s == suffix or (x == 0 and not s))
        lines.append((suffix, [x for x, _ in points], [setting for _, setting in points]))
    return lines


def _error(entry_se: dict, key: str) -> float:
    value = entry_se.get(key)
    return value if value is not None and math.isfinite(value) else 0.0


def _legend(fig, axes) -> None:
    """One legend for the figure, above its panels (none covers a line or a bar)."""
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 3), fontsize=8)


def _means_figure(report: dict) -> str:
    keys = _headline(report)
    names = list(report["results"])
    column, axis = _setting(report)
    fig, axes = html_report.new_figure(4.6 * len(keys), 3.6, ncols=len(keys))
    numeric = all(_series(report, name) is not None for name in names)
    if numeric:  # the setting values, and a small shift per method so that equal means stay apart
        ticks = sorted({x for name in names for _, xs, _ in _series(report, name) for x in xs})
        dodge = 0.012 * ((ticks[-1] - ticks[0]) or 1)
    for ax, key in zip(axes[0], keys):
        for i, name in enumerate(names):
            by_setting = report["results"][name]
            if numeric:
                for suffix, x, settings in _series(report, name):
                    ax.errorbar(np.asarray(x) + (i - (len(names) - 1) / 2) * dodge,
                                [by_setting[s]["mean"][key] for s in settings],
                                yerr=[_error(by_setting[s]["se"], key) for s in settings],
                                marker=_MARKERS[i % len(_MARKERS)], capsize=3, linestyle="--" if suffix else "-",
                                label=f"{name} ({suffix})" if suffix else name)
            else:
                settings = list(by_setting)
                offsets = np.arange(len(settings)) + (i - (len(names) - 1) / 2) * 0.8 / len(names)
                ax.bar(offsets, [by_setting[s]["mean"][key] for s in settings], width=0.8 / len(names),
                       yerr=[_error(by_setting[s]["se"], key) for s in settings], capsize=3, label=name)
                ax.set_xticks(np.arange(len(settings)), settings)
        if numeric:
            ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.set_xlabel(axis)
        ax.set_ylabel(_label(key))
        ax.set_title(_label(key), fontsize=10)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    tasks = len(_tasks(report))
    seeds = report["protocol"].get("seeds")
    bars = ("no error bars: one task only, no spread over tasks" if _no_spread(report)
            else f"error bars: ± one {report['protocol'].get('se', 'standard error')}")
    caption = (f"Mean over {tasks} task(s) of {report['benchmark']} ({report['protocol'].get('kind', '')}"
               f"{f', {seeds} seeds' if seeds else ''}) per method against {column}; {bars}"
               + ("; methods' points are shifted sideways a little so that equal means stay visible. "
                  if numeric and len(names) > 1 else ". ")
               + "; ".join(f"{_label(k)}: {_DEFINITIONS.get(k, k)}" for k in keys) + ".")
    return html_report.figure(fig, caption, alt=f"{', '.join(_label(k) for k in keys)} against {column} per method")


def _panel_settings(settings: list[str]) -> list[str]:
    if len(settings) <= _PANEL_SETTINGS:
        return settings
    return [settings[i] for i in np.linspace(0, len(settings) - 1, _PANEL_SETTINGS).round().astype(int)]


def _per_task_figure(report: dict) -> str:
    key, tasks, names = report["metrics"][0], _tasks(report), list(report["results"])
    column = _setting(report)[0]
    shown = _panel_settings(list(report["results"][names[0]]))
    height = 0.9 + len(tasks) * (0.13 * len(names) + 0.12)
    fig, axes = html_report.new_figure(min(3.4 * len(shown) + 1.2, 14), max(height, 2.5), ncols=len(shown), sharey=True)
    width = 0.8 / len(names)
    y = np.arange(len(tasks))[::-1]
    seeded = False
    for ax, setting in zip(axes[0], shown):
        for i, name in enumerate(names):
            entry = report["results"][name].get(setting, {"per_task": {}})
            values = [entry["per_task"].get(t, {}).get(key, np.nan) for t in tasks]
            errors = [_error(entry.get("per_task_se", {}).get(t, {}), key) for t in tasks]
            seeded |= any(errors)
            ax.barh(y + (len(names) - 1 - 2 * i) * width / 2, values, height=width, xerr=errors, capsize=2,
                    label=name)
        ax.set_title(f"{column} = {setting}", fontsize=10)
        ax.set_xlabel(_label(key))
        ax.axvline(0, color="#555", linewidth=0.8)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(y, tasks, fontsize=8)
    _legend(fig, axes)
    omitted = "" if len(shown) == len(report["results"][names[0]]) else \
        f" ({len(shown)} of the {len(report['results'][names[0]])} settings shown; the tables have all)"
    bars = "error bars: ± one standard error over seeds" if seeded else "no error bars (no seeds to vary)"
    caption = (f"{_label(key)} per task of {report['benchmark']}, per method, at each {column}{omitted}; "
               f"{bars}.")
    return html_report.figure(fig, caption, alt=f"{_label(key)} per task and method")


def _scatter_figure(report: dict) -> str:
    kept = report["predictions"]
    by_setting = kept["by_setting"]
    settings = list(by_setting)
    shown = settings if len(settings) <= 2 else [settings[0], settings[-1]]
    tasks = list(by_setting[settings[0]])
    panels = tasks[:_PANEL_TASKS]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = html_report.new_figure(3.3 * ncols, 3.0 * nrows + 0.3, ncols=ncols, nrows=nrows)
    column = _setting(report)[0]
    for ax, task in zip(axes.flat, panels):
        for i, setting in enumerate(shown):
            points = by_setting[setting].get(task)
            if points:
                ax.plot(points["true"], points["pred"], _MARKERS[i], markersize=3.5, alpha=0.65,
                        label=f"{column} = {setting}")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("true score (task units)", fontsize=8)
        ax.set_ylabel("predicted score", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    axes[0, 0].legend(fontsize=7)
    more = f" (the first {len(panels)} of {len(tasks)} tasks)" if len(tasks) > len(panels) else ""
    scored = _SCORED.get(report["protocol"].get("kind"), "each model it predicted with a true score")
    caption = (f"{kept['method']} on {report['benchmark']}: predicted against true score of {scored}, "
               f"seed {kept['seed']}, at "
               f"{column} = {' and '.join(shown)}, one panel per task{more}. Predictions are in the method's own "
               f"scale: a ranking needs only their order.")
    return html_report.figure(fig, caption, alt=f"predicted against true scores of {kept['method']}")


def to_html(report: dict, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """The report as a self-contained HTML page: the text and tables of :func:`to_markdown`
    and the figures (module docstring)."""
    body = [html_report.paragraph(p, css_class="note" if p.startswith("One task") else None)
            for p in _intro(report)]
    body += ["<h2>Means</h2>", _means_figure(report), html_report.table(*_mean_table(report), text_columns=(0, 1))]
    body += [f"<h2>Per task ({_label(report['metrics'][0])})</h2>", _per_task_figure(report),
             html_report.table(*_per_task_table(report), text_columns=(0, 1))]
    if "predictions" in report:
        body += ["<h2>Predicted against true scores</h2>", _scatter_figure(report)]
    body += [html_report.paragraph(_glossary(report)), *(html_report.paragraph(note) for note in notes)]
    return html_report.page(f"{title or report['benchmark']}: {report['protocol'].get('kind', '')}", body)


def write_report(out: str, report: dict, *, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """Writes ``out/report.json``, ``out/report.md`` and ``out/report.html``, each atomically
    and all rendered before the first is written; returns the Markdown."""
    markdown = to_markdown(report, title, notes)
    page = to_html(report, title, notes)
    os.makedirs(out, exist_ok=True)
    atomic_io.write_json(os.path.join(out, "report.json"), report)
    atomic_io.write_text(os.path.join(out, "report.md"), markdown)
    atomic_io.write_text(os.path.join(out, "report.html"), page)
    return markdown
