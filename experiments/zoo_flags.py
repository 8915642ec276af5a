"""The flags ``rank`` and ``suggest`` share: which zoo, what is known of the new task (its data,
probes, metadata) and the proxy encoder, read into what ``Zoo.rank`` / ``Zoo.suggest`` take."""

import csv
import os
import sys

from absl import flags

from experiments import cli
from fennec_jax.core.registry import parse_config
from fennec_jax.zoo.zoo import PROXIES

ZOO = flags.DEFINE_string("zoo", None, "Zoo folder from ./run.sh fit_zoo (default: the bundled default zoo).")
TASK = flags.DEFINE_string("task", None, "The new task's data (image folder, .npz, tfds:NAME@DIR); "
                           "leave out to use probes and metadata alone.")
PROBES = flags.DEFINE_string("probes", None, "Measured scores so far: model=score,... or a CSV file with "
                             "columns model,score (the zoo's units).")
TASK_META = flags.DEFINE_string("task_meta", None, "key=value,... task metadata (as the zoo's task metadata).")
PROXY = flags.DEFINE_string("proxy", None, f"Proxy encoder ({' | '.join(PROXIES)}); default: the zoo's own.")


def parse_probes(text: str | None) -> dict[str, float]:
    """``{model: score}`` from ``model=score,...`` or a CSV file with columns model,score; a
    bad item, a non-number or a model given twice is an InputError naming it."""
    if not text:
        return {}
    if os.path.isfile(text):
        try:
            with open(text, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        except UnicodeDecodeError:
            raise cli.InputError(f"--probes={text}: expected a UTF-8 CSV file") from None
        if not rows or not {"model", "score"} <= set(rows[0]):
            raise cli.InputError(f"--probes={text}: expected a CSV with columns model,score")
        items = [(row["model"], row["score"], f"{text} line {i + 2}") for i, row in enumerate(rows)]
    else:
        items = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            model, sep, score = item.rpartition("=")
            if not sep or not model:
                raise cli.InputError(f"--probes: {item!r} is not model=score; expected model=score,... or a CSV file")
            items.append((model, score, f"--probes {item}"))
    out = {}
    for model, score, where in items:
        if model in out:
            raise cli.InputError(f"{where}: model {model!r} given twice")
        try:
            out[model] = float(score)
        except (TypeError, ValueError):
            raise cli.InputError(f"{where}: score {score!r} is not a number") from None
    return out


def task_inputs():
    """``(zoo, encoder, probes, metadata)`` from the flags: the zoo (default: the default zoo,
    fitted on first use), the proxy encoder (None: the zoo's own), probes and task metadata."""
    from fennec_jax.zoo.default import default_zoo
    from fennec_jax.zoo.zoo import load_proxy, load_zoo

    probes = parse_probes(PROBES.value)
    try:
        metadata = parse_config(TASK_META.value)
    except ValueError as err:
        raise cli.InputError(f"--task_meta: {err}") from None
    zoo = default_zoo(lambda msg: print(msg, file=sys.stderr, flush=True)) if ZOO.value is None else load_zoo(ZOO.value)
    encoder = None
    if PROXY.value is not None:
        encoder, proxy_id = load_proxy(PROXY.value)
        if zoo.proxy is not None and proxy_id != zoo.proxy:
            raise cli.InputError(f"--proxy={PROXY.value}: the zoo was fitted with proxy {zoo.proxy}; its task map "
                                 f"only reads that encoder's embeddings (leave --proxy out, or refit the zoo)")
    return zoo, encoder, probes, metadata


def zoo_name() -> str:
    return ZOO.value or "default (builder: 40 models x 20 tasks)"
