"""The flags ``rank`` and ``suggest`` share: which zoo, what is known of the new task (its data,
probes, metadata) and the proxy encoder, read into what ``Zoo.rank`` / ``Zoo.suggest`` take."""

import sys

from absl import flags

from experiments import cli
from fennec_jax.core.registry import parse_config
from fennec_jax.zoo.probes import ProbesError, parse_probes
from fennec_jax.zoo.zoo import PROXIES

ZOO = flags.DEFINE_string("zoo", None, "Zoo folder from ./run.sh fit_zoo (default: the bundled default zoo).")
TASK = flags.DEFINE_string("task", None, "The new task's data (image folder, .npz, tfds:NAME@DIR); "
                           "leave out to use probes and metadata alone.")
PROBES = flags.DEFINE_string("probes", None, "Measured scores so far: model=score,... or a CSV file with "
                             "columns model,score (the zoo's units).")
TASK_META = flags.DEFINE_string("task_meta", None, "key=value,... task metadata (as the zoo's task metadata).")
PROXY = flags.DEFINE_string("proxy", None, f"Proxy encoder ({' | '.join(PROXIES)}); default: the zoo's own.")


def task_inputs():
    """``(zoo, encoder, probes, metadata)`` from the flags: the zoo (default: the default zoo,
    fitted on first use), the proxy encoder (None: the zoo's own), probes and task metadata."""
    from fennec_jax.zoo.default import default_zoo
    from fennec_jax.zoo.zoo import load_proxy, load_zoo

    try:
        probes = parse_probes(PROBES.value)
    except ProbesError as err:
        raise cli.InputError(str(err)) from None
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
