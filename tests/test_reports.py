"""What an evaluation report shows: every mean with its standard error, normalised regret, a
label for every metric, a single task said as such, and figures in a self-contained page."""

import base64
import dataclasses
import io
import json
import re

import numpy as np
import pytest
from matplotlib import image

from fennec_jax.benchmarks.bundled import load_benchmark
from fennec_jax.eval import html_report, protocol, reports
from fennec_jax.methods.baselines import KnnTask, Popularity


def _evaluate(targets: int) -> dict:
    bench = load_benchmark("parc_controlled")
    bench = dataclasses.replace(bench, targets=bench.targets[:targets])
    return protocol.evaluate(bench, {"popularity": Popularity(), "knn<task>": KnnTask()},
                             protocol.TasksOut(probes=(0, 2), seeds=2), keep_predictions="knn<task>")


@pytest.fixture(scope="module")
def report():
    return _evaluate(3)


def _figures(page: str) -> list[np.ndarray]:
    """Every inline PNG of ``page``, decoded: ``pixels[H, W, C]``."""
    return [image.imread(io.BytesIO(base64.b64decode(data)), format="png")
            for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_every_metric_has_a_label_and_a_definition():
    for key in protocol.METRIC_KEYS + ("kendall", "spearman"):
        assert key in reports._LABELS and key in reports._DEFINITIONS


def test_markdown_means_carry_standard_errors_and_normalised_regret(report):
    markdown = reports.to_markdown(report)
    header, _, *rows = [line for line in markdown.split("## Per task")[0].splitlines() if line.startswith("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "top-1 regret / range" in columns and "final regret / range" in columns
    assert not set(protocol.METRIC_KEYS) & set(columns)  # labels, never raw keys
    assert len(rows) == 2 * 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][2:-1]
        assert len(cells) == len(protocol.METRIC_KEYS) and all(" ± " in c for c in cells), row
    assert "standard error over tasks of the per-task means over seeds" in markdown
    assert "One task only" not in markdown


def test_html_page_has_the_figures_tables_and_conventions(report):
    page = reports.to_html(report, notes=["A **note**."])
    figures = _figures(page)
    assert len(figures) == 3 == page.count("<figcaption>")  # means against k, per-task bars, scatter
    for pixels in figures:
        assert pixels.shape[0] > 200 and pixels.shape[1] > 300 and pixels.std() > 0.05  # not blank
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page, re.S)
    assert "parc_controlled" in captions[0] and "2 seeds" in captions[0] and "against k" in captions[0]
    assert "± one standard error over tasks" in captions[0]
    assert "standard error over seeds" in captions[1]
    assert "knn&lt;task&gt;" in captions[2] and "k = 0 and 2" in captions[2]
    assert "knn&lt;task&gt;" in page and "knn<task>" not in page  # escaped
    assert "<strong>note</strong>" in page and "<script" not in page
    assert page.count("<table>") == 2 and page.count(" ± ") >= len(protocol.METRIC_KEYS) * 4


def test_one_task_says_so_instead_of_a_standard_error():
    one = _evaluate(1)
    markdown, page = reports.to_markdown(one), reports.to_html(one)
    note = "One task only: no spread over tasks, so no standard error."
    assert note in markdown and note in page
    assert " ± " not in markdown.split("## Per task")[0].split(note)[1]
    assert "no error bars: one task only" in page
    assert len(_figures(page)) == 3


def test_settings_that_are_not_numbers_plot_as_bars():
    entry = {"mean": {"kendall": 0.4, "weighted_tau": 0.5}, "se": {"kendall": 0.1, "weighted_tau": float("nan")},
             "per_task": {"a": {"kendall": 0.3, "weighted_tau": 0.4}, "b": {"kendall": 0.5, "weighted_tau": 0.6}}}
    models_out = {"benchmark": "toy", "protocol": {"kind": "leave_family_out", "se": "standard error over tasks"},
                  "settings": ["all"], "metrics": ["kendall", "weighted_tau"], "results": {"m": {"all": entry}},
                  "seconds": {"m": 1.0}}
    page = reports.to_html(models_out)
    assert len(_figures(page)) == 2 and "against setting" in page and "no seeds to vary" in page
    assert "0.400 ± 0.100" in page and "| 0.500 |" in reports.to_markdown(models_out)


def test_write_report_writes_json_markdown_and_html(report, tmp_path):
    markdown = reports.write_report(str(tmp_path / "out"), report, title="Small")
    assert (tmp_path / "out" / "report.md").read_text() == markdown and markdown.startswith("# Small:")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["predictions"]["method"] == "knn<task>"
    assert (tmp_path / "out" / "report.html").read_text() == reports.to_html(report, "Small")
    with pytest.raises(KeyError):  # nothing is written when rendering fails
        reports.write_report(str(tmp_path / "broken"), {**report, "metrics": ["no_such_metric"]})
    assert not (tmp_path / "broken").exists()


def test_html_report_escapes_and_renders_markdown_emphasis():
    assert html_report.paragraph("a <b> & **c** `d`") == "<p>a &lt;b&gt; &amp; <strong>c</strong> <code>d</code></p>"
    table = html_report.table(["name", "x"], [["<m>", 1.5]])
    assert "<td class=text>&lt;m&gt;</td><td>1.5</td>" in table
    page = html_report.page("T <1>", ["<p>body</p>"])
    assert page.startswith("<!DOCTYPE html>") and "<title>T &lt;1&gt;</title>" in page and "<p>body</p>" in page


def test_probe_policies_plot_as_lines_that_share_k0():
    results = {"f": dict.fromkeys(["0", "2", "2 suggest:dopt", "5", "5 suggest:dopt"], {})}
    assert reports._series({"results": results}, "f") == [
        ("", [0, 2, 5], ["0", "2", "5"]), ("suggest:dopt", [0, 2, 5], ["0", "2 suggest:dopt", "5 suggest:dopt"])]
    assert reports._series({"results": {"f": {"all": {}}}}, "f") is None
