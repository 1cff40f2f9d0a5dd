"""d2l's train_ch6 in JAX: one explicit loop, resumable, with d2l's metrics and plot.

Data flows one way: config -> data -> pipeline -> loop -> jitted step -> model. The loop
checkpoints after every epoch (and every N steps when asked, and on SIGTERM/SIGINT), so the
same command on the same work dir resumes exactly where the last checkpoint left off.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from ..data.fashion_mnist import load_split
from ..data.input_pipeline import make_pipeline
from ..observe.plots import plot_curves
from ..observe.profiling import StepTracer
from ..observe.progress import Progress
from ..runtime.parallel import check_batch_size, is_primary, make_mesh, put_replicated
from . import checkpoints, run_dir
from . import lock as workdir_lock
from .report import CpuEstimate, closing_report, compiled_lines, metrics_point, progress_line
from .run_dir import RunError, TrainConfig
from .steps import TrainState, compile_steps, create_train_state, empty_metrics, evaluate, jit_steps
from .stops import Interrupted, SignalFlag, diverged_message


@dataclass
class Run:
    """What the loop's helpers share: fixed for the run, but for the running totals."""

    config: TrainConfig
    workdir: Path
    train_pipe: Any
    test_pipe: Any
    mngr: Any  # the orbax CheckpointManager
    log: run_dir.MetricsLog
    totals: dict
    wall_start: float
    out: Any
    flag: SignalFlag | None = None
    last_saved: int = 0
    finite_through: int = 0  # the last step whose train loss was checked finite
    train_step: Any = None  # compiled ahead of time for each batch shape
    progress: Progress | None = None  # lines with an ETA where stderr is not a terminal
    estimate: CpuEstimate | None = None  # a CPU run says once how long it takes

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_pipe)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    def save(self, step: int, state: TrainState, epoch_metrics) -> None:
        """Start the checkpoint of `step`; a state with NaN or infinite values is never saved."""
        self.totals["wall_seconds"] = np.float64(time.perf_counter() - self.wall_start)
        tree = run_dir.checkpoint_tree(state, epoch_metrics, self.totals)
        if bad := checkpoints.non_finite(tree):
            self.diverged(f"NaN or infinite values in {', '.join(bad[:3])} after step {step}, "
                          f"while the train loss was finite through step {self.finite_through}")
        checkpoints.save(self.mngr, step, tree)
        self.last_saved = step

    def check_loss(self, epoch_metrics, step: int) -> None:
        """Stop at the first step whose train loss is not finite (the running sum turns so)."""
        loss = float(jax.device_get(epoch_metrics["loss_sum"]))
        if not math.isfinite(loss):
            self.diverged(f"a non-finite train loss ({loss}) at step {step}, finite through "
                          f"step {self.finite_through}")
        self.finite_through = step

    def diverged(self, what: str) -> None:
        self.mngr.wait_until_finished()
        raise RunError(diverged_message(what, self.config.lr, self.mngr.latest_step()))


def train_and_evaluate(config: TrainConfig, out=print, restart: bool = False):
    """Train (or resume) the run in config.workdir; return the final state and metrics.

    One train per work dir (a lock); a start that fails leaves no trace in a new work dir.
    """
    run_dir.check_config(config)
    mesh = make_mesh()
    try:
        check_batch_size(config.batch_size, mesh.size)
    except ValueError as err:
        raise RunError(str(err)) from None
    out = out if is_primary() else (lambda *args: None)  # one process prints
    with workdir_lock.claim(Path(config.workdir), is_primary()) as started:
        run, state, epoch_metrics = start(config, Path(config.workdir), mesh, out, restart)
        started()
        return train_epochs(run, state, epoch_metrics)


def start(config: TrainConfig, workdir: Path, mesh, out, restart: bool):
    """Data, pipelines, the fresh or restored state, config.json: the run ready to train."""
    if restart and (aside := run_dir.set_aside(workdir)):
        out(f"starting over: the earlier run's records are in {aside}")
    provenance = run_dir.continued_records(config)
    splits = [load_split(name, config.source, config.data_dir, config.manual_dir).head(limit)
              for name, limit in (("train", config.limit_train), ("test", config.limit_test))]
    train_pipe, test_pipe = (make_pipeline(config.pipeline, split, config.batch_size, shuffle,
                                           config.seed, mesh)
                             for split, shuffle in zip(splits, (True, False)))
    model = run_dir.build_model(config.dtype, config.num_classes, config.dropout)
    state = put_replicated(create_train_state(model, config.seed, config.lr), mesh)
    epoch_metrics = put_replicated(empty_metrics(state), mesh)
    totals = run_dir.empty_totals()
    mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints)
    target = run_dir.checkpoint_tree(state, epoch_metrics, totals)
    saved = mngr.all_steps()
    step, restored = checkpoints.restore_latest(mngr, target, quarantine=True,
                                                strict=config.strict_checkpoints)
    if restored is not None:
        state = run_dir.state_from_tree(state, restored)
        epoch_metrics, totals = restored["epoch_metrics"], restored["totals"]
        if step == 0:  # a converted checkpoint: given weights, nothing trained yet
            out(f"starting from the weights in the checkpoint at step 0 "
                f"({provenance.get('converted_from', 'converted')})")
        elif step < len(train_pipe) * config.epochs:  # a finished run says so, later
            out(f"resuming from the checkpoint at step {step} (epoch "
                f"{step // len(train_pipe) + 1}, batch {step % len(train_pipe)})")
    elif saved:
        mngr.close()
        raise RunError(checkpoints.none_usable(workdir, saved))
    run_dir.write_config(workdir, config, extra=provenance)
    start_step = int(state.step)
    log = run_dir.MetricsLog(workdir / "metrics.jsonl", start_step, out=out, lr=config.lr)
    run = Run(config, workdir, train_pipe, test_pipe, mngr, log, totals,
              time.perf_counter() - float(totals["wall_seconds"]), out, last_saved=start_step,
              finite_through=start_step)
    return run, state, epoch_metrics


def train_epochs(run: Run, state, epoch_metrics):
    """The epochs left to train; d2l's closing report."""
    start_step = int(state.step)
    if start_step >= run.total_steps:
        run.out(f"this run is finished ({start_step} of {run.total_steps} steps); nothing to train")
        run.mngr.close()
        return state, closing_report(run.log, run.totals, run.out)
    steps = jit_steps(run.train_pipe.mesh, run.config.augment)
    run.train_step, seconds = compile_steps(steps, state, epoch_metrics, run.train_pipe)
    for line in compiled_lines(seconds, jax.default_backend()):
        run.out(line)
    if not (sys.stderr.isatty() and is_primary()):
        run.progress = Progress("train", run.total_steps, start_step, run.out, tty=False)
    run.estimate = CpuEstimate(start_step, run.total_steps, run.config.batch_size)
    if run.config.profile_steps:  # (first, last) global steps
        run.train_step = StepTracer(run.train_step, *run.config.profile_steps, start_step,
                                    run.workdir / "profile")
    try:
        with SignalFlag() as run.flag:
            for epoch in range(start_step // run.steps_per_epoch, run.config.epochs):
                first = max(start_step - epoch * run.steps_per_epoch, 0)
                state, epoch_metrics, seconds = train_epoch(run, state, epoch_metrics, epoch,
                                                            first)
                epoch_metrics = end_epoch(run, state, epoch_metrics, epoch,
                                          seconds if first == 0 else None)
                if run.flag.agreed() and epoch + 1 < run.config.epochs:
                    stop(run)  # at an epoch's end, after its test accuracy and checkpoint
    finally:
        run.mngr.wait_until_finished()
        run.mngr.close()
    return state, closing_report(run.log, run.totals, run.out)


def train_epoch(run: Run, state, epoch_metrics, epoch: int, first: int):
    """Steps `first`.. of one epoch; returns the state, the metric sums and the step seconds."""
    tty = sys.stderr.isatty() and is_primary()
    bar = tqdm(total=run.steps_per_epoch, initial=first, unit="step", dynamic_ncols=True,
               desc=f"epoch {epoch + 1}/{run.config.epochs}", disable=not tty)
    log_every = max(run.steps_per_epoch // 5, 1)  # d2l's animator: 5 points per epoch
    step_seconds = 0.0
    for i, batch in enumerate(run.train_pipe.epoch(epoch, first), start=first):
        jax.block_until_ready(batch.images)  # d2l times the steps once their batch is loaded
        t0 = time.perf_counter()
        state, epoch_metrics = run.train_step(state, batch.images, batch.labels, epoch_metrics)
        jax.block_until_ready(epoch_metrics)
        dt = time.perf_counter() - t0
        step_seconds += dt
        run.totals["train_seconds"] = run.totals["train_seconds"] + dt
        run.totals["train_examples"] = run.totals["train_examples"] + batch.size
        global_step = epoch * run.steps_per_epoch + i + 1
        run.check_loss(epoch_metrics, global_step)
        bar.update(1)
        if run.progress:
            run.progress.update(1)
        estimate = run.estimate.add(dt, global_step)
        if estimate and jax.default_backend() == "cpu":
            run.out(estimate)
        last = i + 1 == run.steps_per_epoch
        if (i + 1) % log_every == 0 or last:
            point = metrics_point(epoch_metrics, global_step, run.steps_per_epoch, run.totals,
                                  run.wall_start)
            bar.set_postfix(loss=f"{point['train_loss']:.3f}", acc=f"{point['train_acc']:.3f}",
                            img_s=f"{batch.size / max(dt, 1e-9):.0f}")
            if not last:
                run.log.add(point)
                if not tty:
                    run.out(progress_line(point, run.total_steps))
        every = run.config.checkpoint_every_steps
        stopping = not last and run.flag.agreed()
        if stopping or (not last and every and global_step % every == 0):
            run.save(global_step, state, epoch_metrics)
        if stopping:
            stop(run)  # at an epoch's last step, end_epoch comes first
    bar.close()
    return state, epoch_metrics, step_seconds


def stop(run: Run) -> None:
    """Raise Interrupted once the checkpoint the signal asked for is on disk."""
    run.mngr.wait_until_finished()
    raise Interrupted(f"stopped by {run.flag.name} at step {run.last_saved} of {run.total_steps};"
                      f" checkpoint saved in {checkpoints.checkpoint_dir(run.workdir)}. Run the "
                      "same command to resume.", run.flag.signum)


def end_epoch(run: Run, state, epoch_metrics, epoch: int, step_seconds: float | None):
    """d2l's epoch end: test accuracy, the epoch's point, a checkpoint, the plot.

    Returns the emptied metric sums for the next epoch.
    """
    test = evaluate(state, run.test_pipe)
    point = metrics_point(epoch_metrics, (epoch + 1) * run.steps_per_epoch,
                          run.steps_per_epoch, run.totals, run.wall_start)
    count = int(jax.device_get(epoch_metrics)["count"])
    point.update(test_acc=test["acc"], test_loss=test["loss"],
                 epoch_examples_per_sec=None if step_seconds is None else count / step_seconds)
    run.log.add(point)
    run.out(progress_line(point, run.total_steps))
    epoch_metrics = put_replicated(empty_metrics(state), run.train_pipe.mesh)
    run.save(point["step"], state, epoch_metrics)
    if is_primary():
        plot_curves(run.log.points, run.workdir / "curves.png", run.config.epochs)
    return epoch_metrics
