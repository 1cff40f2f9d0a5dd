"""A multi-process run trains in a child process, so that a lost peer ends it with one line.

When another process of the run dies, jax.distributed's client ends this one from a native
thread: a C++ check failure and an abort (exit 134) that no Python code sees, wherever the
main thread is (a step, orbax's save barrier, the exit). So `train` with multi-process flags
runs the training in a child whose native stderr (gRPC, gloo, XLA logs) goes to a file, and
turns the child's abort into the one line a user needs. jaxlib's own hook for this
(`missed_heartbeat_callback`) cannot be used from Python: it aborts with std::bad_cast.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

NATIVE_LOG = "ALEXNET_JAX_NATIVE_LOG"  # set in the child: where its native stderr goes
# What the distributed client's fatal line says before the abort, in jaxlib 0.4-0.11.
SERVICE_FATAL = re.compile(r"(?:Terminating process because|detected fatal errors).*?"
                           r"(?:absl::Status: |Status: )?(?P<status>[A-Z_]+: [^\n]*)")


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


def is_child() -> bool:
    return NATIVE_LOG in os.environ


def native_log() -> Path | None:
    """The child's native log, or None outside a child."""
    return Path(os.environ[NATIVE_LOG]) if is_child() else None


def native_logs_aside() -> None:
    """In the child: native code's stderr, and absl's log (orbax's tracebacks from its save
    thread when a peer dies), to the file the parent chose; Python's sys.stderr (our lines,
    the progress bar) stays on the terminal."""
    if not is_child():
        return
    path = native_log()
    terminal = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
    sys.stderr.flush()
    # Not undone: this child exists for one run, and fd 2 now belongs to the native log.
    sys.stderr = os.fdopen(terminal, "w", buffering=1)
    absl = logging.getLogger("absl")
    absl.propagate = False
    absl.addHandler(logging.FileHandler(path))


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux), as one host would."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def train_in_child(argv: list[str], process: str) -> int:
    """Run `alexnet-jax argv` as a child, signals passed on; its exit code, or 1 with one
    line on stderr when it aborted (`process`: 'process I of N' for that line)."""
    fd, name = tempfile.mkstemp(prefix="alexnet-jax-native-", suffix=".log")
    os.close(fd)
    log = Path(name)
    child = subprocess.Popen([sys.executable, "-m", "alexnet_jax", *argv],
                             env={**os.environ, NATIVE_LOG: name},
                             preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    previous = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code in (-signal.SIGABRT, 128 + signal.SIGABRT, -signal.SIGSEGV):
        print(f"alexnet-jax: error: {aborted_line(log, process)}", file=sys.stderr, flush=True)
        return 1
    if code == 0 or not log.is_file() or log.stat().st_size == 0:  # kept where it may tell
        log.unlink(missing_ok=True)
    return code if code >= 0 else 128 - code


def lost_process(status: str) -> str:
    """Which process jax.distributed's fatal status (and the lines after it) names: the
    tasks that stopped sending heartbeats (listed on the next lines), a task's index, or the
    coordination service's own process (0) when the service itself is unreachable."""
    if unhealthy := re.search(r"stopped sending heartbeats\):\s*((?:\d+[,\s]*)+)", status):
        return "process " + ", ".join(re.findall(r"\d+", unhealthy[1]))
    if task := re.search(r"/task:(\d+)", status):
        return f"process {task[1]}"
    if "coordination service" in status or "leader" in status:
        return "process 0, the coordinator"
    return "a process the service did not name"


def aborted_line(log: Path, process: str) -> str:
    """What to say of a child that aborted, from its native log."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = SERVICE_FATAL.search(text)
    if found:
        lost = lost_process(text[found.start("status"):found.start("status") + 2000])
        return (f"another process of this run is gone ({lost}; {process} was told by "
                f"jax.distributed: {found['status'][:160]}). Run the same command again on "
                f"every process: the run resumes from its last checkpoint. Native logs: {log}")
    return (f"the training process ({process}) aborted; its native logs are in {log}. Run the "
            "same command again to resume from the last checkpoint.")
