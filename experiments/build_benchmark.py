"""Build a benchmark of real fine-tuning results, then rank its zoo leave-one-task-out.

  ./run.sh build_benchmark --out=runs/built [--image_size=16 --num_targets=24 ...]

Pre-trains every --families architecture on every source task (models FAMILY@SOURCE),
fine-tunes each on every target (full fine-tune and linear probe, --seeds seeds), and writes
OUT/records.csv (model,task,score: full fine-tune test accuracy), records_linear_probe.csv,
runs.csv, graphs.jsonl, features/TASK/MODEL.npz, proxy.npz, then compares methods on the
built benchmark with the one evaluation loop (leave-one-task-out; the tasks' MobileNetV2 proxy
embeddings and the models' features reach the methods as evidence: fennec with the proxy at
k = 0 and k = --probes, fennec without it, popularity, the estimators) and writes
report.json / report.md / report.html (figures; fennec's predictions against the true
scores), with the measured seconds to rank the zoo for one new task.
Finished stages are kept in OUT/stages, so a rerun resumes; --max_stages stops after that
many new stages.

Task data: real data shipped in scikit-learn / scikit-image (fennec_jax.benchmarks.builder.
packaged_datasets); --tfds_datasets adds one target per TFDS dataset read with
tfds.data_source (needs the prepared dataset in --tfds_data_dir).
"""

import os
import time

import jax
import numpy as np
from absl import flags, logging

from experiments import cli
from fennec_jax.benchmarks import builder as bb
from fennec_jax.benchmarks.bundled import as_benchmark, attach_task_data
from fennec_jax.eval import protocol, reports

_OUT = flags.DEFINE_string("out", "runs/built_benchmark", "Output folder (resumes from OUT/stages).")
_FAMILIES = flags.DEFINE_list("families", list(bb.ZooSpec().families), "Architecture families of the zoo.")
_WIDTH = flags.DEFINE_float("width", 0.0625, "Channel width multiplier of every model.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 16, "Side of the square inputs (densenet121 needs >= 29).")
_NUM_SOURCES = flags.DEFINE_integer("num_sources", 8, "Pre-training sources (1..8).")
_SOURCE_EXAMPLES = flags.DEFINE_integer("source_examples", 600, "Training examples per source.")
_NUM_TARGETS = flags.DEFINE_integer("num_targets", 20, "Target tasks.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 100, "Training examples per target.")
_NUM_TEST = flags.DEFINE_integer("num_test", 100, "Test examples per target.")
_DEFAULTS = bb.TrainConfig()
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", _DEFAULTS.pretrain_steps, "Pre-training steps.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Pre-training batch size.")
_FINETUNE_STEPS = flags.DEFINE_integer("finetune_steps", _DEFAULTS.finetune_steps, "Full fine-tune steps.")
_FINETUNE_BATCH_SIZE = flags.DEFINE_integer("finetune_batch_size", _DEFAULTS.finetune_batch_size,
                                            "Full fine-tune batch size.")
_PROBE_STEPS = flags.DEFINE_integer("probe_steps", _DEFAULTS.probe_steps, "Linear-probe steps.")
_SEEDS = flags.DEFINE_integer("seeds", _DEFAULTS.seeds, "Fine-tune / probe seeds per (model, target).")
_TARGETS_PER_GROUP = flags.DEFINE_integer("targets_per_group", _DEFAULTS.targets_per_group,
                                          "Targets fine-tuned together under one vmapped step (one stage).")
_PROXY_EXAMPLES = flags.DEFINE_integer("proxy_examples", 32, "Target examples embedded by the MobileNetV2 proxy.")
_REAL_SCALE = flags.DEFINE_bool("real_scale", True, "Also time full-size (width 1, 224 px) forward passes of "
                                "each family on --num_train images: the estimators' cost at real scale.")
_ESTIMATORS = flags.DEFINE_list("estimators", ["logme", "leep", "nce", "hscore"], "Forward-pass estimators.")
_PROBES = flags.DEFINE_integer("probes", 3, "k for the Fennec-with-probes rows.")
_PROBE_SEEDS = flags.DEFINE_integer("probe_seeds", 5, "Probe draws per task.")
_MAX_STAGES = flags.DEFINE_integer("max_stages", None, "Stop after computing this many stages.")
_TFDS_DATASETS = flags.DEFINE_list("tfds_datasets", [], "TFDS datasets to add as targets (tfds.data_source).")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "data_dir of the prepared TFDS datasets.")


def _tfds_targets(num_classes: int):
    import tensorflow_datasets as tfds

    targets = []
    for name in _TFDS_DATASETS.value:
        source = tfds.data_source(name, split="train", data_dir=_TFDS_DATA_DIR.value)
        images, labels = bb.arrays_from_source(source, _IMAGE_SIZE.value,
                                               limit=20 * (_NUM_TRAIN.value + _NUM_TEST.value))
        classes = sorted(set(labels.tolist()))[:num_classes]
        targets.append(bb.class_subset_task(name.replace("/", "_"), images, labels, classes, _NUM_TRAIN.value,
                                            _NUM_TEST.value, 0))
    return targets


def main():
    from fennec_jax.encoders.proxy import mobilenet_v2_proxy

    start = time.perf_counter()
    # Compiled train steps are cached on disk, so a resumed run does not compile them again.
    jax.config.update("jax_compilation_cache_dir", os.path.join(_OUT.value, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    spec = bb.ZooSpec(tuple(_FAMILIES.value), _WIDTH.value)
    config = bb.TrainConfig(pretrain_steps=_PRETRAIN_STEPS.value, batch_size=_BATCH_SIZE.value,
                            finetune_steps=_FINETUNE_STEPS.value, finetune_batch_size=_FINETUNE_BATCH_SIZE.value,
                            probe_steps=_PROBE_STEPS.value, seeds=_SEEDS.value,
                            targets_per_group=_TARGETS_PER_GROUP.value)
    datasets = bb.packaged_datasets(_IMAGE_SIZE.value)
    sources = bb.default_sources(datasets, _NUM_SOURCES.value, _SOURCE_EXAMPLES.value)
    targets = bb.default_targets(datasets, _NUM_TARGETS.value, _NUM_TRAIN.value, _NUM_TEST.value)
    targets += _tfds_targets(spec.head_classes)
    result = bb.build_benchmark(_OUT.value, spec, sources, targets, config, proxy=mobilenet_v2_proxy(),
                                proxy_examples=_PROXY_EXAMPLES.value, max_stages=_MAX_STAGES.value,
                                progress=logging.info)
    if not result.complete:
        logging.info("stopped after %d stages (--max_stages); rerun to resume", result.stages_computed)
        return
    build_seconds = time.perf_counter() - start
    bench = attach_task_data(as_benchmark(result.records, name=os.path.basename(os.path.abspath(_OUT.value))),
                             proxies=os.path.join(_OUT.value, "proxy.npz"),
                             features_dir=os.path.join(_OUT.value, "features"))
    methods = cli.methods_from_flags(["popularity", "fennec", "fennec:proxy=false", *_ESTIMATORS.value], None)
    report = protocol.evaluate(bench, methods, protocol.TasksOut(probes=(0, _PROBES.value), seeds=_PROBE_SEEDS.value,
                                                                 history="targets"), keep_predictions="fennec")
    report["models"] = bench.records.num_models
    report["build_seconds"] = build_seconds
    report["comparison_seconds"] = time.perf_counter() - start - build_seconds
    report["online_seconds_per_task"] = {
        "forward_passes_of_every_candidate": float(np.median(list(result.extract_seconds.values()))),
        "proxy_embedding": float(np.median(list(result.proxy_seconds.values())))}
    report["ground_truth"] = {"finetune": bb.ground_truth_summary(result.finetune_runs),
                              "linear_probe": bb.ground_truth_summary(result.probe_runs)}
    if _REAL_SCALE.value:
        report["real_scale"] = _real_scale_cost(spec, report)
    print(reports.write_report(_OUT.value, report, notes=_notes(report)))


def _real_scale_cost(spec, report) -> dict:
    """Measured forward seconds of one full-size model per family on --num_train images at 224 px,
    and their sum over the zoo's models (each model costs its family's measured time)."""
    per_family = {}
    for family in spec.families:
        per_family[family] = bb.forward_seconds(family, _NUM_TRAIN.value)
        logging.info("real-scale forward %s: %.2f s for %d images", family, per_family[family], _NUM_TRAIN.value)
    models_per_family = report["models"] // len(spec.families)
    proxy = report["online_seconds_per_task"]["proxy_embedding"]
    return {"image_size": 224, "width": 1.0, "images": _NUM_TRAIN.value,
            "forward_seconds_per_model_measured": per_family,
            "zoo_forward_seconds_summed": models_per_family * sum(per_family.values()),
            "zoo_models": report["models"],
            "proxy_seconds_per_task_measured": proxy}


def _notes(report) -> list[str]:
    """Ground truth, online cost and real-scale paragraphs under the comparison table."""
    seconds = report["online_seconds_per_task"]
    notes = [f"Built in {report['build_seconds']:.0f} s; comparison {report['comparison_seconds']:.0f} s. Online cost "
             f"of one new task (median over tasks, measured on the built zoo): forward passes of every candidate "
             f"{seconds['forward_passes_of_every_candidate']:.3f} s (what an estimator needs), one proxy embedding "
             f"{seconds['proxy_embedding']:.3f} s (what fennec with the proxy needs)."]
    for protocol_name, g in report["ground_truth"].items():
        notes.append(f"Ground truth ({protocol_name}): spread {g['spread']:.3f}, std over models "
                     f"{g['std_over_models']:.3f}, seed noise {g['seed_noise']:.3f}, seed Kendall tau "
                     f"{g['seed_kendall']:.3f}.")
    real = report.get("real_scale")
    if real:
        per_family = ", ".join(f"{f} {s:.2f} s" for f, s in real["forward_seconds_per_model_measured"].items())
        notes.append(f"Real scale (width 1, 224 px, {real['images']} images, random weights, compile excluded): "
                     f"{per_family}. Estimators' forward passes over a zoo of {real['zoo_models']} full-size "
                     f"models: {real['zoo_forward_seconds_summed']:.0f} s per task (per-model measurements "
                     f"summed), versus {real['proxy_seconds_per_task_measured']:.1f} s for one proxy embedding.")
    return notes


if __name__ == "__main__":
    cli.run(main)
