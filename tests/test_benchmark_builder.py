"""A tiny benchmark built end to end: 1 family x 3 sources, 3 targets at 8 px, a few steps."""

import csv
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fennec_jax.benchmarks import builder as bb
from fennec_jax.archs import graphs
from fennec_jax.core.records import load_records
from fennec_jax import estimators
from fennec_jax.benchmarks.bundled import as_benchmark, attach_task_data
from fennec_jax.core.records import records_from_matrix
from fennec_jax.encoders.features import load_feature_dir, load_features
from fennec_jax.eval import metrics, protocol
from fennec_jax.methods.base import TaskEvidence, get_method
from fennec_jax.encoders.proxy import ImageProxy, task_embedding
from fennec_jax.methods.fennec import Fennec, SpaceConfig

pytest.importorskip("sklearn")
pytest.importorskip("skimage")

SPEC = bb.ZooSpec(("resnet18",), width=0.0625, head_classes=10)
# 3 targets in groups of 2: the second group is padded with a repeat of its target
CONFIG = bb.TrainConfig(pretrain_steps=60, batch_size=32, finetune_steps=10, finetune_batch_size=16, probe_steps=50,
                        seeds=2, targets_per_group=2)
N = 40  # train and test examples per target


def _tiny_proxy() -> ImageProxy:
    """A cheap stand-in for MobileNetV2: per-channel means and a 4x4 average pool, 51 wide."""

    def apply_fn(params, images):
        pooled = images.reshape(images.shape[0], 4, images.shape[1] // 4, 4, images.shape[2] // 4, 3).mean((2, 4))
        feats = jnp.concatenate([pooled.reshape(images.shape[0], -1), images.mean((1, 2))], -1) * params
        return feats + 1.0, None

    preprocess = lambda image: np.asarray(image, np.float32) / 255.0
    return ImageProxy("tiny", apply_fn, jnp.float32(1.0), preprocess, 51)


@pytest.fixture(scope="module")
def tasks():
    datasets = bb.packaged_datasets(8, patches_per_image=4)
    sources = bb.default_sources(datasets, num_sources=3, num_examples=200)  # digits 0-4, 5-9, all
    targets = [bb.class_subset_task("digits_1_7", *datasets["digits"], (1, 7), N, N, 0),
               bb.class_subset_task("digits_0_3_8", *datasets["digits"], (0, 3, 8), N, N, 0),
               bb.class_subset_task("faces", *datasets["faces"], (0, 1), N, N, 0)]
    return sources, targets


@pytest.fixture(scope="module")
def built(tmp_path_factory, tasks):
    """(out_dir, result of a run stopped after 2 stages, result of the resumed run)."""
    sources, targets = tasks
    out = str(tmp_path_factory.mktemp("built"))
    partial = bb.build_benchmark(out, SPEC, sources, targets, CONFIG, proxy=_tiny_proxy(), proxy_examples=20,
                                 max_stages=2)
    resumed = bb.build_benchmark(out, SPEC, sources, targets, CONFIG, proxy=_tiny_proxy(), proxy_examples=20)
    return out, partial, resumed


def test_stage_limit_stops_and_rerun_resumes(built):
    out, partial, resumed = built
    assert not partial.complete and partial.stages_computed == 2 and partial.records is None
    # 1 pretrain + 2 target groups + 3 proxy stages in all; the first 2 were loaded on the rerun.
    assert resumed.complete and resumed.stages_computed == 1 + 2 + 3 - 2
    assert os.path.exists(os.path.join(out, "stages", "pretrain", "resnet18.npz"))


def _output_bytes(out: str) -> dict[str, bytes]:
    """Every output file of a build (stage files aside: they also hold timings), by path."""
    files = {}
    for root, dirs, names in os.walk(out):
        dirs[:] = [d for d in dirs if d != "stages"]
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                files[os.path.relpath(os.path.join(root, name), out)] = f.read()
    return files


def test_rerun_of_a_deleted_stage_gives_byte_identical_outputs(built, tasks):
    """Training is seeded throughout, so recomputing a stage writes the same bytes (on the same
    machine: XLA:CPU splits reductions by its thread count, so another core count trains
    differently; see notes/issue18_claims_numerics.md)."""
    out, _, resumed = built
    before = _output_bytes(out)
    stage = os.path.join(out, "stages", "target", "resnet18", "group000.npz")
    with np.load(stage) as data:
        first = {key: data[key] for key in ("finetune", "probe")}
    os.remove(stage)
    again = bb.build_benchmark(out, SPEC, *tasks, CONFIG, proxy=_tiny_proxy(), proxy_examples=20)
    assert again.stages_computed == 1
    with np.load(stage) as data:
        for key, value in first.items():
            np.testing.assert_array_equal(data[key], value)
    after = _output_bytes(out)
    assert sorted(after) == sorted(before) and any(path.startswith("features") for path in after)
    assert [path for path in before if after[path] != before[path]] == []
    np.testing.assert_array_equal(again.finetune_runs, resumed.finetune_runs)
    np.testing.assert_array_equal(again.probe_runs, resumed.probe_runs)


def test_records_file_holds_real_accuracies(built):
    out, _, resumed = built
    records = load_records(os.path.join(out, "records.csv"))
    assert records.models == ("resnet18@src_digits_0to4", "resnet18@src_digits_5to9", "resnet18@src_digits_all")
    assert records.tasks == ("digits_1_7", "digits_0_3_8", "faces")
    assert records.mask.all() and np.all((records.scores >= 0) & (records.scores <= 1))
    np.testing.assert_allclose(records.scores, resumed.records.scores, atol=1e-6)
    # test accuracies are multiples of 1/N per seed; both protocols beat chance on digits
    assert records.scores[records.task_index("digits_1_7")].mean() > 0.7  # chance 0.5
    assert records.scores[records.task_index("digits_0_3_8")].mean() > 0.45  # chance 0.33
    probe = load_records(os.path.join(out, "records_linear_probe.csv"))
    assert probe.scores[probe.task_index("digits_1_7")].mean() > 0.7
    with open(os.path.join(out, "runs.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 3 * CONFIG.seeds and {r["protocol"] for r in rows} == {"finetune", "linear_probe"}
    for row in rows:
        assert float(row["score"]) * N == pytest.approx(round(float(row["score"]) * N), abs=1e-3)
    assert resumed.finetune_runs.shape == (3, 3, CONFIG.seeds)
    np.testing.assert_allclose(resumed.finetune_runs.mean(-1), records.scores, atol=1e-6)
    summary = bb.ground_truth_summary(resumed.finetune_runs)
    assert summary["spread"] >= 0 and -1 <= summary["seed_kendall"] <= 1


def test_graphs_and_features_files(built, tasks):
    out, _, resumed = built
    sources, targets = tasks
    zoo = graphs.load_jsonl(os.path.join(out, "graphs.jsonl"))
    assert [g.name for g in zoo] == list(resumed.records.models)
    assert zoo[0].num_nodes == zoo[2].num_nodes > 20 and zoo[0].name != zoo[2].name
    for target in targets:
        for model, source in zip(resumed.records.models, sources):
            feats, labels, probs = load_features(os.path.join(out, "features", target.name, f"{model}.npz"))
            assert feats.shape[0] == N and np.array_equal(labels, target.train_y)
            assert probs.shape == (N, source.num_classes)  # the source head's classes
            np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    with np.load(os.path.join(out, "proxy.npz")) as data:
        assert list(data["tasks"]) == [t.name for t in targets]
        images = (targets[2].train_x[:20] * 255).round().astype(np.uint8)
        proxy = _tiny_proxy()
        feats = np.asarray(proxy.apply_fn(proxy.params, np.stack([proxy.preprocess(i) for i in images]))[0])
        np.testing.assert_allclose(data["embeddings"][2], task_embedding(feats, targets[2].train_y[:20]), atol=1e-5)


def test_built_benchmark_evaluates_through_the_one_loop(built):
    """The builder's comparison is ``evaluate`` on its outputs: the proxy embeddings and the
    features reach the methods as evidence of the held-out task, and nothing else of it."""
    out, _, resumed = built
    bench = attach_task_data(as_benchmark(resumed.records), proxies=os.path.join(out, "proxy.npz"),
                             features_dir=os.path.join(out, "features"))
    small = (SpaceConfig(d=2, d_data=0, steps=30),)
    methods = {"popularity": get_method("popularity"), "fennec_proxy": Fennec(configs=small, name="fennec_proxy"),
               "fennec": Fennec(configs=small, proxy=False), "logme": get_method("logme"), "leep": get_method("leep")}
    report = protocol.evaluate(bench, methods, protocol.TasksOut(probes=(0, 1), seeds=2),
                               keep_predictions="fennec_proxy")
    assert set(report["results"]) == set(methods)
    records = resumed.records
    for t, task in enumerate(records.tasks):
        true = records.scores[t]
        # Estimators: exactly the score of the task's feature files (k = 0: every model scored).
        _, feats, labels, probs = load_feature_dir(os.path.join(out, "features", task), records.models)
        for name in ("logme", "leep"):
            pred = estimators.score_models(name, feats, labels, probs if name == "leep" else None)
            expected = metrics.ranking_metrics(true, np.asarray(pred))["weighted_tau"]
            assert report["results"][name]["0"]["per_task"][task]["weighted_tau"] == pytest.approx(float(expected))
        # Popularity from the other tasks only: a version that saw the task would differ.
        history = records.without_task(t)
        z = np.where(history.mask, (history.scores - np.nanmean(history.scores, 1, keepdims=True))
                     / np.nanstd(history.scores, 1, keepdims=True), 0.0)
        expected = metrics.ranking_metrics(true, z.mean(0))["weighted_tau"]
        assert report["results"]["popularity"]["0"]["per_task"][task]["weighted_tau"] == pytest.approx(float(expected))
    # Fennec at k = 0 predicts exactly what a fit on the other tasks predicts from the task's
    # embedding and metadata, and not what a fit that saw the task predicts (a leak would).
    history = bench.records
    for t, task in enumerate(records.tasks):
        evidence = TaskEvidence(metadata=history.task_metadata(t), proxy=history.task_side["proxy"][t])
        for name in ("fennec_proxy", "fennec"):
            method = methods[name]
            honest = method.score(method.fit(history.without_task(t), seed=0), evidence)
            leak = method.score(method.fit(history, seed=0), evidence)
            assert np.abs(honest - leak).max() > 1e-3
            tau = metrics.ranking_metrics(records.scores[t], honest)["weighted_tau"]
            assert report["results"][name]["0"]["per_task"][task]["weighted_tau"] == pytest.approx(float(tau))
            if name == report["predictions"]["method"]:
                np.testing.assert_allclose(report["predictions"]["by_setting"]["0"][task]["pred"], honest, rtol=1e-6)
    # With the proxy the k = 0 prior comes from the task's embedding, without it from the mean task.
    with_proxy = [report["results"]["fennec_proxy"]["0"]["per_task"][t]["weighted_tau"] for t in records.tasks]
    without = [report["results"]["fennec"]["0"]["per_task"][t]["weighted_tau"] for t in records.tasks]
    assert with_proxy != without
    with pytest.raises(ValueError, match="no proxy embedding"):
        attach_task_data(as_benchmark(records_from_matrix(["a", "b"], ["elsewhere"], np.ones((1, 2)))),
                         proxies=os.path.join(out, "proxy.npz"))


def test_depthwise_as_shifts_matches_the_grouped_convolution():
    conv = nn.Conv(6, (5, 5), strides=(2, 2), padding=((2, 2),) * 2, feature_group_count=6, use_bias=True)
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 6))
    params = conv.init(jax.random.key(1), x)
    params = jax.tree_util.tree_map(lambda a: a + 0.1, params)  # a non-zero bias
    loss = lambda apply, p: (apply(conv, p, x) * jnp.arange(x.shape[-1])).sum()
    plain = lambda module, p, x: module.apply(p, x)
    np.testing.assert_allclose(bb._apply(conv, params, x), plain(conv, params, x), atol=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(jax.grad(lambda p: loss(bb._apply, p))(params)),
                         jax.tree_util.tree_leaves(jax.grad(lambda p: loss(plain, p))(params))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_forward_seconds_times_a_real_size_pass():
    seconds = bb.forward_seconds("resnet18", 3, image_size=32, width=0.125, batch_size=2)
    assert 0 < seconds < 30


def test_class_subset_task_is_balanced_and_relabelled():
    labels = np.repeat(np.arange(4), 10)
    images = np.zeros((40, 16, 16, 3), np.float32) + labels[:, None, None, None]
    task = bb.class_subset_task("t", images, labels, (3, 1), 8, 6, 0)
    assert task.num_classes == 2 and np.bincount(task.train_y).tolist() == [4, 4]
    np.testing.assert_array_equal(task.train_x[:, 0, 0, 0], np.where(task.train_y == 0, 3, 1))
    np.testing.assert_array_equal(task.test_x[:, 0, 0, 0], np.where(task.test_y == 0, 3, 1))
    with pytest.raises(ValueError, match="classes"):
        bb.class_subset_task("t", images, labels, (1, 1), 8, 6, 0)


def test_bad_spec_is_rejected(tasks):
    sources, targets = tasks
    with pytest.raises(ValueError, match="densenet121 needs"):
        bb.build_benchmark("/nonexistent", bb.ZooSpec(("densenet121",)), sources, targets, CONFIG)
    with pytest.raises(ValueError, match="head_classes"):
        bb.build_benchmark("/nonexistent", bb.ZooSpec(("resnet18",), head_classes=2), sources, targets, CONFIG)


def test_arrays_from_tfds_data_source():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        source = tfds.data_source("mnist", split="train")
        images, labels = bb.arrays_from_source(source, 16, limit=10)
        first = source[0]
    assert images.shape == (10, 16, 16, 3) and labels.shape == (10,) and labels.dtype == np.int32
    assert labels[0] == first["label"] and 0 <= images.min() and images.max() <= 1
    np.testing.assert_allclose(images[0, ..., 0].mean(), first["image"].mean() / 255.0, atol=0.05)
    with pytest.raises(ValueError, match="source"):
        bb.arrays_from_source(object(), 16)
