"""How a run stops: SIGTERM/SIGINT become a flag the loop checks after each step; a diverged
run says where it went non-finite."""

from __future__ import annotations

import contextlib
import signal


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
