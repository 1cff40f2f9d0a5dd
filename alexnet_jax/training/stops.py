"""How a run stops: SIGTERM/SIGINT become a flag the loop checks after each step; a diverged
run says where it went non-finite."""

from __future__ import annotations

import contextlib
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Interrupted(RuntimeError):
    """Stopped by a signal after checkpointing; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class SignalFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def agreed(self) -> bool:
        """Whether to stop now. In a multi-process run a signal reaches each process at its
        own step (a scheduler signals them all, or one): they exchange what they got, so that
        all save the same step and stop together."""
        if jax.process_count() == 1:
            return self.signum is not None
        got = int(np.max(multihost_utils.process_allgather(np.int32(self.signum or 0))))
        if got and self.signum is None:  # another process's signal
            self.signum = got
        return bool(got)  # one that lands during the exchange counts at the next

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def diverged_message(what: str, lr: float, kept: int | None) -> str:
    """The error of a diverged run: where it went non-finite, the checkpoint kept, what to do."""
    return (f"the run diverged: {what}; lr {lr} is probably too large. "
            + (f"The last finite checkpoint (step {kept}) is kept; nothing non-finite was "
               "saved. " if kept is not None else "No checkpoint had been saved. ")
            + "The same command would diverge the same way: start over with a smaller --lr "
              "and --restart (the records are kept aside).")
