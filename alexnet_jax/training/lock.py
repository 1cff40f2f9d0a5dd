"""One `train` per work dir: an advisory lock that dies with its holder.

`fcntl.flock` on WORKDIR/train.lock: the kernel releases it when the holding process exits,
however it exits (SIGKILL and crashes included), so a stale lock never blocks the next run.
The file names the holder (host, pid, since when) for the run that is turned away.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from .layout import LOCK


class WorkdirBusy(RuntimeError):
    """Another process trains in this work dir."""


@contextlib.contextmanager
def hold(workdir: Path):
    """Hold the work dir's lock for the `with` block, or raise WorkdirBusy at once."""
    path = Path(workdir) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "a process that has not said who it is"
            raise WorkdirBusy(
                f"{workdir} is in use by another train ({holder}); wait for it to end or stop "
                "it, or use another --workdir") from None
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, since {since}\n".encode(),
                  0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def claim(workdir: Path, primary: bool = True):
    """Create (if new) and lock the work dir for a `train`; yields `started()`, to call once
    the run is under way. A work dir this created is removed if the block fails before."""
    workdir = Path(workdir)
    workdir.parent.mkdir(parents=True, exist_ok=True)
    try:
        workdir.mkdir()
        created = primary
    except FileExistsError:
        created = False
    started = []
    try:
        with hold(workdir) if primary else contextlib.nullcontext():
            yield lambda: started.append(True)
    except BaseException:
        if created and not started:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
