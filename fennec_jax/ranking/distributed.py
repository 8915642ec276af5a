"""Multi-process runs on JAX's own distributed runtime (multi-controller JAX).

Every process runs the same program on the same inputs. After `initialize`, ``jax.devices()``
lists the devices of every process, so ``engine.make_mesh()`` is the global mesh: with it,
``engine.top_k`` splits the models over all devices of all processes, and
``estimators.score_models`` splits the models it scores; both return their results
replicated, whole on every process. Outputs are then written once (`is_main`), or in parts,
each process its share of the rows (`process_rows`) to its own file (`part_path`); an array
split over processes is read whole with `gather`.

On CPU, the collectives between processes go over TCP (gloo). Nothing here schedules
work: the processes are started by the user (or a cluster manager), one per host.
"""

import os

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator_address=None, num_processes=1, process_id=0, *,
               cpu_collectives="gloo", timeout_s=300):
    """Joins this process to a run of ``num_processes``; True if it did.

    Call it first, before any other JAX call. With ``num_processes == 1`` it does nothing
    and returns False, so a main may call it with its flags' values unconditionally.

    Args:
      coordinator_address: "host:port" where process 0 serves the coordinator, reachable
        from every process (the same value in each).
      num_processes: processes in the run.
      process_id: this process's index in ``[0, num_processes)``; process 0 is the
        coordinator.
      cpu_collectives: the CPU backend's collectives across processes: "gloo" (TCP) or
        "mpi".
      timeout_s: seconds to wait for every process to join.
    """
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) \
            or num_processes < 1:
        raise ValueError(f"num_processes: expected a positive integer, got "
                         f"{num_processes!r}")
    if isinstance(process_id, bool) or not isinstance(process_id, int) \
            or not 0 <= process_id < num_processes:
        raise ValueError(f"process_id: expected an integer in [0, {num_processes}), got "
                         f"{process_id!r}")
    if num_processes == 1:
        return False
    if not coordinator_address:
        raise ValueError("coordinator_address: expected 'host:port' of process 0 when "
                         f"num_processes={num_processes}, got {coordinator_address!r}")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=timeout_s)
    return True


def is_main():
    """Whether this is process 0, which writes what is written once."""
    return jax.process_index() == 0


def process_rows(count):
    """The slice of rows in ``[0, count)`` that this process writes: ``count`` cut into
    ``jax.process_count()`` consecutive parts as even as possible, in process order."""
    index, processes = jax.process_index(), jax.process_count()
    return slice(index * count // processes, (index + 1) * count // processes)


def part_path(path):
    """Where this process writes its part of ``path``: ``path`` itself in a one-process
    run, else ``<stem>.part-<index>-of-<count><suffix>`` (e.g. ``ranks.part-00001-of-00002
    .csv``), which sort in process order."""
    processes = jax.process_count()
    if processes == 1:
        return path
    stem, suffix = os.path.splitext(path)
    return f"{stem}.part-{jax.process_index():05d}-of-{processes:05d}{suffix}"


def gather(array):
    """``array`` as NumPy, whole, on every process: read in place when this process holds
    all of it (on its own devices, or replicated), else all-gathered across processes."""
    if not isinstance(array, jax.Array) or array.is_fully_addressable \
            or array.is_fully_replicated:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
