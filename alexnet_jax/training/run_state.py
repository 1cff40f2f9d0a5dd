"""A run as the loop sees it: what is fixed once it starts (`Run`), what changes with each
step (`Tally`), and the three things a step can end in: a checkpoint, a divergence, a stop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from ..config import TrainConfig
from ..data.input_pipeline import InputPipeline
from ..observe.progress import Progress
from . import checkpoints
from .metrics_log import MetricsLog
from .report import CpuEstimate
from .run_dir import RunError
from .steps import TrainState
from .stops import Interrupted, SignalFlag, diverged_message


@dataclass(frozen=True)
class Run:
    """What is fixed for a run once it has started (`Tally` holds what changes per step)."""

    config: TrainConfig
    workdir: Path
    train_pipe: InputPipeline
    test_pipe: InputPipeline
    mngr: checkpoints.Manager
    log: MetricsLog
    wall_start: float  # perf_counter at the start, less the wall time of earlier sessions
    out: Callable[[str], None]
    mesh: Mesh  # every device of every process; the pipelines shard over it
    primary: bool  # the one process that writes the records and prints
    backend: str  # the mesh's platform ("cpu", "gpu", "tpu"): the model's kernels follow it
    flag: SignalFlag = field(default_factory=SignalFlag)
    train_step: Callable | None = None  # compiled ahead of time for each batch shape
    step_bytes: int = 0  # what a train step allocates per device (XLA's memory analysis)
    compile_seconds: float = 0.0
    progress: Progress | None = None  # a bar on a terminal, else lines with an ETA
    estimate: CpuEstimate | None = None  # a CPU run says once how long it takes (else None)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_pipe)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs


@dataclass
class Tally:
    """What changes with each step: the running totals (checkpointed), the last step whose
    train loss was checked finite, the last step saved."""

    totals: dict
    finite_through: int
    last_saved: int


def save(run: Run, tally: Tally, step: int, state: TrainState, epoch_metrics) -> None:
    """Start the checkpoint of `step`; a state with NaN or infinite values is never saved."""
    tally.totals["wall_seconds"] = np.float64(time.perf_counter() - run.wall_start)
    tree = checkpoints.checkpoint_tree(state, epoch_metrics, tally.totals)
    if bad := checkpoints.non_finite(tree):
        diverged(run, f"NaN or infinite values in {', '.join(bad[:3])} after step {step}, "
                      f"while the train loss was finite through step {tally.finite_through}")
    checkpoints.save(run.mngr, step, tree)
    tally.last_saved = step


def check_loss(run: Run, tally: Tally, epoch_metrics, step: int) -> None:
    """Stop at the first step whose train loss is not finite (the running sum turns so)."""
    loss = float(jax.device_get(epoch_metrics["loss_sum"]))
    if not math.isfinite(loss):
        diverged(run, f"a non-finite train loss ({loss}) at step {step}, finite through step "
                      f"{tally.finite_through}")
    tally.finite_through = step


def diverged(run: Run, what: str) -> None:
    run.mngr.wait_until_finished()
    raise RunError(diverged_message(what, run.config.lr, run.mngr.latest_step()))


def stop(run: Run, tally: Tally) -> None:
    """Raise Interrupted once the checkpoint the signal asked for is on disk."""
    run.mngr.wait_until_finished()
    raise Interrupted(f"stopped by {run.flag.name} at step {tally.last_saved} of "
                      f"{run.total_steps}; checkpoint saved in "
                      f"{checkpoints.checkpoint_dir(run.workdir)}. Run the same command to "
                      "resume.", run.flag.signum)
