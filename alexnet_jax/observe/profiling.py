"""`jax.profiler` traces of chosen train steps, for TensorBoard's profile plugin and Perfetto.

The step is wrapped after it is compiled, so a trace holds the steps themselves and no
compilation. Each trace lands in DIR/plugins/profile/RUN/ (`tensorboard --logdir DIR`, the
Profile tab) with a `perfetto_trace.json.gz` beside it for https://ui.perfetto.dev.
"""

from __future__ import annotations

from pathlib import Path

import jax


class StepTracer:
    """A train step that traces global steps `first`..`last` (counting from `done` + 1);
    `close` ends a trace still open (a run that stops before `last` keeps what it traced)."""

    def __init__(self, step, first: int, last: int, done: int, logdir: Path):
        self.step, self.first, self.last, self.count = step, first, last, done
        self.logdir, self.active = Path(logdir), False

    def __call__(self, *args):
        self.count += 1
        if self.count == self.first:
            jax.profiler.start_trace(str(self.logdir), create_perfetto_trace=True)
            self.active = True
        out = self.step(*args)
        if self.count == self.last:
            self.close(jax.block_until_ready(out))
        return out

    def close(self, *_) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
