"""The HTML reports in a real browser: Debian's headless ``chromium`` loads ``report.html`` of a
small evaluation and of a ranking, and every figure must load, decode completely and show
something. Skips (saying why) where no ``chromium`` is installed."""

import dataclasses
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from fennec_jax.benchmarks.bundled import load_benchmark
from fennec_jax.eval import protocol, reports
from fennec_jax.methods.baselines import KnnTask, Popularity
from fennec_jax.ranking.table import RankingTable
from fennec_jax.zoo.report import write_ranking
from fennec_jax.zoo.zoo import TaskRanking

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH (Debian: apt-get install chromium; "
                                                         ".ci/run installs it when run as root)")

# Injected into a copy of the page: the first script records load and script errors, the second,
# at the load event, draws every <img> on a canvas and counts its transparent pixels (a PNG cut
# short decodes with transparent rows; the figures are opaque) and non-white ones (ink).
_BEFORE = """<script>window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(e.message || ("failed to load " + (e.target && e.target.tagName))); }, true);
console.error = function () { window.__errors.push("console: " + Array.from(arguments).join(" ")); };
</script>"""
_AFTER = """<script>window.addEventListener("load", function () {
  var figures = Array.from(document.images).map(function (img) {
    var out = {width: img.naturalWidth, height: img.naturalHeight, transparent: -1, ink: -1};
    try {
      var canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      var context = canvas.getContext("2d");
      context.drawImage(img, 0, 0);
      var data = context.getImageData(0, 0, canvas.width, canvas.height).data;
      out.transparent = 0; out.ink = 0;
      for (var i = 0; i < data.length; i += 4) {
        if (data[i + 3] < 255) out.transparent++;
        else if (data[i] < 250 || data[i + 1] < 250 || data[i + 2] < 250) out.ink++;
      }
    } catch (e) { window.__errors.push("figure: " + e.name); }
    return out;
  });
  document.body.setAttribute("data-probe", JSON.stringify({figures: figures, errors: window.__errors}));
});</script>"""


def _render(page: str, tmp_path) -> dict:
    """Loads ``page`` (with the probes injected) in headless Chromium; returns the probe."""
    assert "<script" not in page and not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + _BEFORE, 1).replace("</body>", _AFTER + "</body>", 1))
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<body[^>]*data-probe="([^"]*)"', result.stdout)
    assert found, f"the page did not finish loading in chromium (rc {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def _check(page: str, tmp_path, figures: int) -> None:
    probe = _render(page, tmp_path)
    assert probe["errors"] == []
    assert len(probe["figures"]) == figures == page.count("<img")
    for figure in probe["figures"]:
        assert figure["width"] > 100 and figure["height"] > 100, figure
        assert figure["transparent"] == 0 and figure["ink"] > 0.01 * figure["width"] * figure["height"], figure


def test_evaluation_report_loads_in_chromium(tmp_path):
    bench = load_benchmark("parc_controlled")
    bench = dataclasses.replace(bench, targets=bench.targets[:3])
    report = protocol.evaluate(bench, {"popularity": Popularity(), "knn_task": KnnTask()},
                               protocol.TasksOut(probes=(0, 3), seeds=2), keep_predictions="knn_task")
    reports.write_report(str(tmp_path), report)
    page = (tmp_path / "report.html").read_text()
    assert "± one standard error over tasks" in page and "top-1 regret / range" in page
    _check(page, tmp_path, figures=3)  # means against k, per-task bars, predicted against true


def test_ranking_report_loads_in_chromium(tmp_path):
    models = tuple(f"model<{i}>" for i in range(8))
    predicted = np.linspace(0.9, 0.6, 8)
    table = RankingTable(models, predicted, np.where(np.arange(8) == 2, 0.95, np.nan), predicted - 0.03,
                         predicted + 0.03)
    write_ranking(str(tmp_path), TaskRanking("flowers", table, "proxy + probes (1)", 0.8), "a_zoo")
    page = (tmp_path / "report.html").read_text()
    assert "model&lt;2&gt;" in page and "model<2>" not in page  # names escaped
    _check(page, tmp_path, figures=1)
