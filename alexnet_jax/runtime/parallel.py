"""Data parallelism through JAX's own sharding: a 1-D mesh, sharded batches, many hosts.

One mesh axis, `data`, spans every device of every process. A global batch is split along
it (each device gets `batch / devices` examples), parameters and optimizer state are
replicated, and XLA inserts the gradient all-reduce. With one device all of this is a
no-op, so there is one train step for 1 and N devices.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..config import D2L
from .supervise import distributed_flags, native_log

DATA_AXIS = "data"


# lost_processes waits the run's heartbeat timeout plus this for the service's answer.
ANSWER_MARGIN_SECONDS = 2.0


def init_distributed(coordinator: str | None, num_processes: int | None,
                     process_id: int | None, auto: bool = False,
                     heartbeat_timeout: int = D2L.heartbeat_timeout) -> None:
    """Join a multi-process run (before anything else touches JAX's devices). A process that
    sends no heartbeat for `heartbeat_timeout` seconds is dead to the coordination service,
    which then ends every other process: the trade-off between how soon a lost host is
    noticed (within the timeout) and how long a stall (swapping, a VM's migration, a stalled
    network file system) a healthy run survives (half of it; config.py)."""
    if not distributed_flags(coordinator, num_processes, process_id, auto):
        return
    # The run checkpoints on SIGTERM itself (training/stops.py): no preemption service, whose
    # threads only add warnings when a peer dies.
    jax.config.update("jax_enable_preemption_service", False)
    # For the process's life, not undone: it is the child that exists for this one run
    # (runtime/supervise.py), and a lost peer can reach any thread until it exits.
    threading.excepthook = _stop_on_lost_process(threading.excepthook, heartbeat_timeout)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout)
    threading.Thread(target=_watch_peer_failures, name="alexnet-jax peer failures",
                     daemon=True).start()


# The coordination service's key-value store: where a process that fails says why, so that
# the others stop at once with its reason instead of waiting for it in a collective.
FAILED_KEY = "alexnet-jax/failed/"


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def lost_processes(heartbeat_timeout: float) -> list[int]:
    """The processes of this run that the coordination service no longer counts alive, or []
    when it cannot tell within the run's heartbeat timeout and a margin; [0] when the service
    itself no longer answers (it runs in process 0). Empty outside a multi-process run.

    The service answers once every live process has asked (`get_live_nodes` is collective),
    and it counts a process dead after the heartbeat timeout: survivors of a lost process
    all ask, and get their answer then. One that failed alone asks in vain, and goes on
    after `wait`."""
    if not jax.distributed.is_initialized():
        return []
    everyone = list(range(jax.process_count()))
    answer: list = []

    def ask():
        try:
            live = _client().get_live_nodes(everyone)
            answer.append([i for i in everyone if i not in live])
        except Exception:  # the service cannot be reached: its process is gone
            answer.append([0])

    asking = threading.Thread(target=ask, name="alexnet-jax live processes", daemon=True)
    asking.start()
    asking.join(heartbeat_timeout + ANSWER_MARGIN_SECONDS)
    return answer[0] if answer else []


def publish_failure(line: str) -> None:
    """Tell the other processes why this one stops (they stop too, with this line)."""
    if jax.distributed.is_initialized():
        with contextlib.suppress(Exception):  # the service may be gone too: nothing to tell
            _client().key_value_set(f"{FAILED_KEY}{jax.process_index()}", line)


def _watch_peer_failures(poll: float = 0.5) -> None:
    """A peer that published a failure ends this process with its reason: otherwise this one
    would wait for it in the next collective, until the heartbeat timeout or for ever."""
    me = jax.process_index()
    while True:
        time.sleep(poll)
        try:
            failed = _client().key_value_dir_get(FAILED_KEY)
        except Exception:  # the service is gone: lost_processes and the supervisor say so
            continue
        for key, line in failed:
            peer = int(key.rsplit("/", 1)[1])
            if peer != me:
                _exit_with(f"process {peer} of this {jax.process_count()}-process run stopped: "
                           f"{line} (fix that, then run the same command again on every "
                           "process: the run resumes from its last checkpoint)")


def _stop_on_lost_process(default_hook, heartbeat_timeout: int):
    """A threading.excepthook: a lost peer seen in a background thread (orbax's save) ends
    the process with the one line, before that thread prints a traceback."""

    def hook(args):
        if gone := lost_processes(heartbeat_timeout):
            exit_lost_process(str(args.exc_value), gone)
        default_hook(args)

    return hook


_EXITING = threading.Lock()


def exit_lost_process(detail: str, gone: list[int]) -> None:
    """Print the one line of a lost process (`gone`: lost_processes' answer, which names
    them) and exit 1 at once (no Python or native shutdown, which would wait for the dead
    peer)."""
    n, me = jax.process_count(), jax.process_index()
    _exit_with(f"another process of this {n}-process run is gone (process "
               f"{', '.join(map(str, gone))}; process {me} saw: "
               f"{detail.strip().splitlines()[0][:160] if detail.strip() else 'no answer'}). "
               f"Run the same command again on all {n} processes: the run resumes from its "
               "last checkpoint.")


def exit_failed(message: str) -> None:
    """This process failed (not a lost peer) in a multi-process run: say so, tell the
    others (the first line), and exit 1 at once (jax.distributed's shutdown would wait for
    them)."""
    publish_failure(message.strip().splitlines()[0] if message.strip() else "an error")
    _exit_with(message)


def _exit_with(line: str) -> None:
    _EXITING.acquire()  # one line, even if two threads stop the process
    if (log := native_log()) is not None:
        line += f" Native logs: {log}"
    sys.stdout.flush()
    print(f"alexnet-jax: error: {line}", file=sys.stderr, flush=True)
    os._exit(1)


def make_mesh() -> Mesh:
    """A 1-D mesh over all devices, in JAX's order (devices of one process are adjacent)."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def platform(mesh: Mesh) -> str:
    """The backend the mesh's devices are ("cpu", "gpu", "tpu"): decided once per run, and
    passed to what depends on it (the model's kernels, train's CPU notes)."""
    return mesh.devices.flat[0].platform


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
    """Host values (the same in every process) as arrays replicated over the mesh: fresh
    copies, which a step may donate. One process copies on its devices; several build each
    array from its host value (device_put cannot assume every process passes the same)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding, may_alias=False)

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
