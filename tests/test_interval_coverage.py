"""Calibrated intervals measured leave-one-task-out (``TasksOut(intervals=level)``): coverage near
the level where the errors are exchangeable, calibrated on the fold's history alone, and the
report without intervals unchanged."""

import dataclasses
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fennec_jax.benchmarks.bundled import as_benchmark
from fennec_jax.core.records import records_from_matrix
from fennec_jax.eval import protocol as evaluation
from fennec_jax.eval import reports
from fennec_jax.methods.baselines import Popularity

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _benchmark(num_tasks=16, num_models=40, seed=0, proxy=False):
    """Tasks drawn alike: ``scores[T, M] = mean_t + 0.05 (quality_m + 0.7 noise)``, so a held-out
    history task's errors and the target's are exchangeable. With ``proxy``, each task's mean
    moves with the first coordinate of its ``proxy[2]`` (sd 0.1, twice the models' spread)."""
    rng = np.random.default_rng(seed)
    centre, quality = rng.normal(size=num_tasks), rng.normal(size=num_models)
    mean = 0.7 + (0.1 * centre if proxy else np.zeros(num_tasks))
    scores = mean[:, None] + 0.05 * (quality[None] + 0.7 * rng.normal(size=(num_tasks, num_models)))
    records = records_from_matrix([f"m{i}" for i in range(num_models)], [f"t{i}" for i in range(num_tasks)], scores)
    if proxy:
        records = dataclasses.replace(records, task_side={"proxy": np.stack([centre, rng.normal(size=num_tasks)], 1)})
    return as_benchmark(records, "synthetic")


def _run(bench, level, **split):
    return evaluation.evaluate(bench, {"pop": Popularity()},
                               evaluation.TasksOut(probes=(0, 3), seeds=3, intervals=level, **split))


@pytest.mark.parametrize("level", [0.5, 0.8])
def test_coverage_is_near_the_level_where_errors_are_exchangeable(level):
    # 16 targets x 40 models x 3 seeds; a wrong quantile (e.g. (1 + level) / 2) misses by >= 0.1.
    report = _run(_benchmark(), level)
    assert report["metrics"] == [*evaluation.METRIC_KEYS, *evaluation.INTERVAL_KEYS]
    for k in ("0", "3"):
        entry = report["results"]["pop"][k]
        assert entry["mean"]["coverage"] == pytest.approx(level, abs=0.05)
        assert entry["mean"]["interval_width"] > 0 and np.isfinite(entry["se"]["coverage"])
        assert all(0 <= v["coverage"] <= 1 for v in entry["per_task"].values())


def test_a_task_proxy_moves_the_intervals_to_the_task():
    bench = _benchmark(proxy=True)
    blind = dataclasses.replace(bench, records=dataclasses.replace(bench.records, task_side={}))
    with_proxy, without = (_run(b, 0.8)["results"]["pop"]["0"]["mean"] for b in (bench, blind))
    assert with_proxy["coverage"] == pytest.approx(0.8, abs=0.08)
    assert with_proxy["interval_width"] < 0.7 * without["interval_width"]  # task means known from the proxy


def test_the_target_never_reaches_the_calibration(monkeypatch):
    bench = _benchmark(num_tasks=6, num_models=10)
    fits, calibrated = [], []

    class Recorder(Popularity):
        def fit(self, history, seed=0):
            fits.append(history.tasks)
            return super().fit(history, seed)

    def recording_fit_calibration(records, *args, **kwargs):
        calibrated.append(records.tasks)
        return fit_calibration(records, *args, **kwargs)

    fit_calibration = evaluation.fit_calibration
    monkeypatch.setattr(evaluation, "fit_calibration", recording_fit_calibration)
    evaluation.evaluate(bench, {"rec": Recorder()}, evaluation.TasksOut(probes=(0, 2), seeds=2, intervals=0.8,
                                                                       calibration_tasks=3))
    targets = bench.targets
    assert calibrated == [tuple(t for t in targets if t != target) for target in targets]
    assert len(fits) == len(targets) * (1 + 3)  # the fold's fit, then one per held-out history task
    for i, target in enumerate(targets):
        assert all(target not in tasks for tasks in fits[4 * i: 4 * (i + 1)])


def test_without_intervals_the_report_is_unchanged():
    bench = _benchmark(num_tasks=6, num_models=10)
    plain, measured = (evaluation.evaluate(bench, {"pop": Popularity()}, evaluation.TasksOut(probes=(0, 2), seeds=2,
                                                                                             intervals=level))
                       for level in (None, 0.8))
    assert plain["metrics"] == list(evaluation.METRIC_KEYS) and "intervals" not in plain["protocol"]
    assert "intervals" in measured["protocol"]
    for k in ("0", "2"):
        for task, values in plain["results"]["pop"][k]["per_task"].items():
            with_intervals = measured["results"]["pop"][k]["per_task"][task]
            assert values == {key: with_intervals[key] for key in evaluation.METRIC_KEYS}
    assert "interval coverage" in reports.to_markdown(measured) and "coverage" not in reports.to_markdown(plain)


@pytest.mark.parametrize("split", [dict(intervals=1.0), dict(intervals=0.0), dict(intervals=0.8, calibration_tasks=0)])
def test_bad_interval_settings_are_refused(split):
    with pytest.raises(ValueError, match="intervals: expected a two-sided level|calibration_tasks: expected"):
        evaluation.TasksOut(**split)


def test_a_bad_intervals_flag_is_one_error_line():
    done = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--benchmark=parc_controlled",
                           "--methods=popularity", "--intervals=1.5"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["error: --intervals: expected a two-sided level in (0, 1) such as "
                                                "0.8, got 1.5"]
