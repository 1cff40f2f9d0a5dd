"""Data parallelism through JAX's own sharding: a 1-D mesh, sharded batches, many hosts.

One mesh axis, `data`, spans every device of every process. A global batch is split along
it (each device gets `batch / devices` examples), parameters and optimizer state are
replicated, and XLA inserts the gradient all-reduce. With one device all of this is a
no-op, so there is one train step for 1 and N devices.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .supervise import native_log

DATA_AXIS = "data"
# Example index, and label, of the padding examples that fill a last partial batch up to a
# multiple of the devices; the steps leave them out of the loss, the gradient and the metrics.
PAD = -1


def distributed_flags(coordinator: str | None, num_processes: int | None,
                      process_id: int | None, auto: bool = False) -> bool:
    """True for a multi-process run; a ValueError for flags that cannot make one.

    Either all three of coordinator, num_processes and process_id, or `auto`: JAX then reads
    them from the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU, JAX_COORDINATOR_ADDRESS).
    """
    given = {"--coordinator": coordinator, "--num-processes": num_processes,
             "--process-id": process_id}
    if not auto and all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if not auto and missing:
        raise ValueError(f"a multi-process run needs --coordinator, --num-processes and "
                         f"--process-id together; missing {', '.join(missing)} "
                         "(or use --distributed to read them from the cluster)")
    if num_processes is not None and process_id is not None \
            and not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in 0..{num_processes - 1}, got {process_id}")
    return True


# A process that sends no heartbeat for this long is dead to the coordination service, which
# then ends every other process (JAX's default, 100 s, kept survivors waiting in a barrier).
HEARTBEAT_TIMEOUT_SECONDS = 5


def init_distributed(coordinator: str | None, num_processes: int | None,
                     process_id: int | None, auto: bool = False) -> None:
    """Join a multi-process run (before anything else touches JAX's devices)."""
    if not distributed_flags(coordinator, num_processes, process_id, auto):
        return
    # The run checkpoints on SIGTERM itself (training/stops.py): no preemption service, whose
    # threads only add warnings when a peer dies.
    jax.config.update("jax_enable_preemption_service", False)
    threading.excepthook = _stop_on_lost_process(threading.excepthook)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS)


# What a collective, the coordination service or orbax's save barriers say when a peer
# process has gone away.
PEER_GONE = ("gloo", "connection closed by peer", "connection reset by peer", "broken pipe",
             "heartbeat", "unavailable", "deadline_exceeded", "socket closed",
             "waiting for async_write_complete barrier",
             "waiting for async_commit_complete barrier")


def _stop_on_lost_process(default_hook):
    """A threading.excepthook: a lost peer seen in a background thread (orbax's save) ends
    the process with the one line, before that thread prints a traceback."""

    def hook(args):
        if means_lost_process(args.exc_value):
            exit_lost_process(str(args.exc_value))
        default_hook(args)

    return hook

_EXITING = threading.Lock()


def exit_lost_process(detail: str) -> None:
    """Print the one line of a lost process and exit 1 at once (no Python or native
    shutdown, which would wait for the dead peer)."""
    _EXITING.acquire()  # one line, even if two threads see the loss
    n, me = jax.process_count(), jax.process_index()
    line = (f"alexnet-jax: error: another process of this {n}-process run is gone (process {me} "
            f"saw: {detail.strip().splitlines()[0][:160]}). Run the same command again on all "
            f"{n} processes: the run resumes from its last checkpoint.")
    if (log := native_log()) is not None:
        line += f" Native logs: {log}"
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    os._exit(1)


def means_lost_process(err: BaseException) -> bool:
    """True when `err`, in a multi-process run, means another process is gone."""
    return jax.distributed.is_initialized() and any(s in str(err).lower() for s in PEER_GONE)


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices, in JAX's order (devices of one process are adjacent)."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, num_devices: int) -> None:
    """Refuse a global batch the devices cannot share equally, naming the nearest good ones."""
    if batch_size % num_devices == 0:
        return
    lower = batch_size // num_devices * num_devices
    upper = lower + num_devices
    nearest = f"{lower} or {upper}" if lower else f"{upper}"
    raise ValueError(f"--batch-size {batch_size} (the global batch) is not divisible by the "
                     f"{num_devices} devices, so they cannot share it equally; use {nearest}")


def padded_size(size: int, num_devices: int) -> int:
    """A last partial batch is filled up to a multiple of the devices with padding examples."""
    return math.ceil(size / num_devices) * num_devices


def pad_indices(indices: np.ndarray, num_devices: int) -> np.ndarray:
    """Example indices of one global batch, with PAD for padding examples."""
    pad = padded_size(len(indices), num_devices) - len(indices)
    return np.concatenate([indices, np.full(pad, PAD, indices.dtype)]) if pad else indices


def is_real(indices_or_labels):
    """True for real examples, False for padding (numpy, JAX or TensorFlow arrays)."""
    return indices_or_labels != PAD


def process_rows(sharding: NamedSharding, global_size: int) -> slice:
    """The rows of a global batch that live on this process's devices (one contiguous run)."""
    rows = [idx[0] for idx in sharding.addressable_devices_indices_map((global_size,)).values()]
    start = min(r.start or 0 for r in rows)
    stop = max(global_size if r.stop is None else r.stop for r in rows)
    return slice(start, stop)


def global_array(sharding: NamedSharding, local: np.ndarray, global_size: int) -> jax.Array:
    """One global, sharded array from the rows this process holds (`process_rows`)."""
    return jax.make_array_from_process_local_data(sharding, local,
                                                  (global_size, *local.shape[1:]))


def put_replicated(tree, mesh: Mesh):
    """Host values (the same in every process) as arrays replicated over the mesh."""
    sharding = replicated(mesh)

    def put(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def is_primary() -> bool:
    """Only process 0 writes metrics, plots, config and prints progress."""
    return jax.process_index() == 0


def device_name() -> str:
    """d2l's device string (cuda:0, tpu:0 or cpu:0); `N x cuda` for N devices."""
    dev = jax.devices()[0]
    platform = "cuda" if dev.platform == "gpu" and "rocm" not in dev.client.platform_version \
        else dev.platform
    count = jax.device_count()
    return f"{platform}:{dev.id}" if count == 1 else f"{count} x {platform}"
