"""Build a benchmark of real fine-tuning results, then rank its zoo leave-one-task-out.

  ./run.sh build_benchmark --out=runs/built [--image_size=16 --num_targets=24 ...]

Pre-trains every --families architecture on every source task (models FAMILY@SOURCE),
fine-tunes each on every target (full fine-tune and linear probe, --seeds seeds), and writes
OUT/records.csv (model,task,score: full fine-tune test accuracy), records_linear_probe.csv,
runs.csv, graphs.jsonl, features/TASK/MODEL.npz, proxy.npz and report.json (Fennec with the
MobileNetV2 proxy at k = 0 and k = --probes, the estimators, popularity: weighted tau, top-1
regret and seconds to rank the zoo for one new task). Finished stages are kept in
OUT/stages, so a rerun resumes; --max_stages stops after that many new stages.

Task data: real data shipped in scikit-learn / scikit-image (fennec_jax.benchmark_builder.
packaged_datasets); --tfds_datasets adds one target per TFDS dataset read with
tfds.data_source (needs the prepared dataset in --tfds_data_dir).
"""

import os
import time

import jax
from absl import app, flags, logging

from fennec_jax import atomic_io, benchmark_builder as bb

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


def main(argv):
    del argv
    from fennec_jax.proxy import mobilenet_v2_proxy

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
    proxies = bb.load_proxy_embeddings(os.path.join(_OUT.value, "proxy.npz"), result.records.tasks)
    report = bb.compare_methods(result.records, os.path.join(_OUT.value, "features"), proxies,
                                estimator_names=_ESTIMATORS.value, extract_seconds=result.extract_seconds,
                                proxy_seconds=result.proxy_seconds, probes=_PROBES.value, seeds=_PROBE_SEEDS.value)
    report["build_seconds"] = build_seconds
    report["comparison_seconds"] = time.perf_counter() - start - build_seconds
    report["ground_truth"] = {"finetune": bb.ground_truth_summary(result.finetune_runs),
                              "linear_probe": bb.ground_truth_summary(result.probe_runs)}
    if _REAL_SCALE.value:
        report["real_scale"] = _real_scale_cost(spec, report)
    atomic_io.write_json(os.path.join(_OUT.value, "report.json"), report)
    atomic_io.write_text(os.path.join(_OUT.value, "report.md"), _markdown(report))
    print(_markdown(report))


def _real_scale_cost(spec, report) -> dict:
    """Measured forward seconds of one full-size model per family on --num_train images at 224 px,
    and their sum over the zoo's models (each model costs its family's measured time)."""
    per_family = {}
    for family in spec.families:
        per_family[family] = bb.forward_seconds(family, _NUM_TRAIN.value)
        logging.info("real-scale forward %s: %.2f s for %d images", family, per_family[family], _NUM_TRAIN.value)
    models_per_family = report["models"] // len(spec.families)
    proxy = report["results"]["fennec_proxy_k0"]["seconds_per_task"]
    return {"image_size": 224, "width": 1.0, "images": _NUM_TRAIN.value,
            "forward_seconds_per_model_measured": per_family,
            "zoo_forward_seconds_summed": models_per_family * sum(per_family.values()),
            "zoo_models": report["models"],
            "proxy_seconds_per_task_measured": proxy}


def _markdown(report) -> str:
    lines = [f"{report['models']} models x {report['tasks']} tasks; build {report['build_seconds']:.0f} s, "
             f"comparison {report['comparison_seconds']:.0f} s (leave-one-task-out).", "",
             "| method | weighted tau | top-1 regret | s / new task (built zoo, measured) |", "|---|---|---|---|"]
    for method, row in report["results"].items():
        lines.append(f"| {method} | {row['weighted_tau']:.3f} | {row['top1_regret']:.3f} | "
                     f"{row['seconds_per_task']:.3f} |")
    lines += ["", "| ground truth | spread | std over models | seed noise | seed Kendall tau |", "|---|---|---|---|---|"]
    for protocol, g in report["ground_truth"].items():
        lines.append(f"| {protocol} | {g['spread']:.3f} | {g['std_over_models']:.3f} | {g['seed_noise']:.3f} | "
                     f"{g['seed_kendall']:.3f} |")
    real = report.get("real_scale")
    if real:
        lines += ["", f"Real scale (width 1, 224 px, {real['images']} images, random weights, compile excluded):", "",
                  "| family | forward s per model (measured) |", "|---|---|"]
        lines += [f"| {family} | {sec:.2f} |" for family, sec in real["forward_seconds_per_model_measured"].items()]
        lines += ["", f"Estimators' forward passes over a zoo of {real['zoo_models']} full-size models: "
                  f"{real['zoo_forward_seconds_summed']:.0f} s per task (per-model measurements summed), versus "
                  f"{real['proxy_seconds_per_task_measured']:.1f} s for one proxy embedding (measured)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    app.run(main)
