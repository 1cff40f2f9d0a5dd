"""d2l's train_ch6 in JAX: one explicit loop, resumable, with d2l's metrics and plot.

Data flows one way: config -> data -> pipeline -> loop -> jitted step -> model. The loop
checkpoints after every epoch (and every N steps when asked, and on SIGTERM/SIGINT), so the
same command on the same work dir resumes exactly where the last checkpoint left off.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..data.fashion_mnist import load_split
from ..data.input_pipeline import InputPipeline, make_pipeline
from ..model.build import build_model
from ..observe.plots import plot_curves
from ..observe.profiling import StepTracer
from ..observe.progress import Progress
from ..runtime import memory
from ..runtime.parallel import (
    check_batch_size,
    is_primary,
    make_mesh,
    platform,
    put_replicated,
)
from . import checkpoints, layout, run_dir
from . import lock as workdir_lock
from .metrics_log import MetricsLog
from .report import CpuEstimate, closing_report, compiled_lines, metrics_point, progress_line
from .run_dir import RunError, TrainConfig
from .run_state import Run, Tally, check_loss, save, stop
from .steps import (
    TrainState,
    compile_steps,
    create_train_state,
    empty_metrics,
    evaluate,
    jit_steps,
)


def train_and_evaluate(config: TrainConfig, out=print, restart: bool = False):
    """Train (or resume) the run in config.workdir; return the final state and metrics.

    One train per work dir (a lock); a start that fails leaves no trace in a new work dir,
    and the checkpoint manager and the event writer are closed on every path.
    """
    run_dir.check_config(config)
    mesh = make_mesh()
    backend = platform(mesh)  # which kernels the model takes, and what train says
    try:
        check_batch_size(config.batch_size, mesh.size)
    except ValueError as err:
        raise RunError(str(err)) from None
    primary = is_primary()
    warn = out  # every process says which checkpoint it skips
    out = out if primary else (lambda *args: None)  # one process prints
    workdir = Path(config.workdir)
    # Checked before anything is written: the run in the work dir (--restart sets it aside),
    # then a batch too large.
    provenance = {} if restart else run_dir.continued_records(config)
    prepared = prepare(config, mesh, backend, out)
    with workdir_lock.claim(workdir, primary) as started:
        if restart and (aside := layout.set_aside(workdir)):
            out(f"starting over: the earlier run's records are in {aside}")
        with checkpoints.manager(workdir, keep=config.keep_checkpoints) as mngr:
            position = restore(config, workdir, prepared, mngr, provenance, out, warn)
            if primary:
                run_dir.write_config(workdir, config, extra=provenance)
            log = MetricsLog(workdir / layout.METRICS, int(position.state.step), out=out,
                             write=primary)
            with contextlib.closing(log):
                log.mirror(config.lr)
                run = Run(config, workdir, prepared.train_pipe, prepared.test_pipe, mngr, log,
                          time.perf_counter() - float(position.tally.totals["wall_seconds"]),
                          out, mesh, primary, backend, train_step=prepared.train_step,
                          step_bytes=prepared.step_bytes,
                          compile_seconds=prepared.compile_seconds)
                started()
                return train_epochs(run, position)


class Prepared(NamedTuple):
    """A run before it touches its work dir: data, the fresh state, the compiled step."""

    train_pipe: InputPipeline
    test_pipe: InputPipeline
    state: TrainState
    epoch_metrics: dict
    train_step: Callable
    compile_seconds: float
    step_bytes: int  # what a train step allocates per device (XLA's memory analysis)


def prepare(config: TrainConfig, mesh, backend: str, out) -> Prepared:
    """The data, pipelines, fresh state and the train step compiled for every batch shape;
    OutOfMemory when the step cannot fit on this process's devices."""
    splits = [load_split(name, config.source, config.data_dir, config.manual_dir, out).head(limit)
              for name, limit in (("train", config.limit_train), ("test", config.limit_test))]
    train_pipe, test_pipe = (make_pipeline(config.pipeline, split, config.batch_size, shuffle,
                                           config.seed, mesh)
                             for split, shuffle in zip(splits, (True, False)))
    model = build_model(config.dtype, config.num_classes, config.dropout, backend)
    state = put_replicated(create_train_state(model, config.seed, config.lr), mesh)
    epoch_metrics = put_replicated(empty_metrics(state), mesh)
    steps = jit_steps(mesh, config.augment)
    train_step, seconds, compiled = compile_steps(steps, state, epoch_metrics, train_pipe)
    need = memory.check_fits(compiled[max(compiled)], "--batch-size", config.batch_size,
                             jax.local_devices(), multiple=mesh.size)
    return Prepared(train_pipe, test_pipe, state, epoch_metrics, train_step, seconds, need)


class Position(NamedTuple):
    """Where training goes on from: the state, this epoch's metric sums, the totals."""

    state: TrainState
    epoch_metrics: dict
    tally: Tally


def restore(config: TrainConfig, workdir: Path, prepared: Prepared, mngr, provenance: dict,
            out, warn) -> Position:
    """The newest usable checkpoint's position, or the fresh one when there is none."""
    state, epoch_metrics = prepared.state, prepared.epoch_metrics
    steps_per_epoch = len(prepared.train_pipe)
    totals = checkpoints.empty_totals()
    target = checkpoints.checkpoint_tree(state, epoch_metrics, totals)
    saved = mngr.all_steps()
    step, restored = checkpoints.restore_latest(mngr, target, quarantine=True,
                                                strict=config.strict_checkpoints, out=warn)
    if restored is not None:
        state = checkpoints.state_from_tree(state, restored)
        epoch_metrics, totals = restored["epoch_metrics"], restored["totals"]
        if step == 0:  # a converted checkpoint: given weights, nothing trained yet
            out(f"starting from the weights in the checkpoint at step 0 "
                f"({provenance.get('converted_from', 'converted')})")
        elif step < steps_per_epoch * config.epochs:  # a finished run says so, later
            out(f"resuming from the checkpoint at step {step} (epoch "
                f"{step // steps_per_epoch + 1}, batch {step % steps_per_epoch})")
    elif saved:
        raise RunError(checkpoints.none_usable(workdir, saved))
    start_step = int(state.step)
    return Position(state, epoch_metrics,
                    Tally(totals, finite_through=start_step, last_saved=start_step))


def train_epochs(run: Run, position: Position):
    """The epochs left to train; d2l's closing report."""
    state, epoch_metrics, tally = position
    start_step = int(state.step)
    tracer = None
    try:
        if start_step >= run.total_steps:
            run.out(f"this run is finished ({start_step} of {run.total_steps} steps); nothing "
                    "to train")
            return state, closing_report(run.log, tally.totals, run.out, run.config.sync_steps)
        for line in compiled_lines(run.compile_seconds, run.backend, run.config.dtype):
            run.out(line)
        train_step = run.train_step
        if run.config.profile_steps:  # (first, last) global steps
            tracer = train_step = StepTracer(train_step, *run.config.profile_steps, start_step,
                                             run.workdir / layout.PROFILE)
        estimate = CpuEstimate(start_step, run.total_steps, run.config.batch_size) \
            if run.backend == "cpu" else None
        run = replace(run, train_step=train_step, estimate=estimate, progress=Progress(
            "train", run.total_steps, start_step, run.out, tty=sys.stderr.isatty() and
            run.primary))
        with run.flag:
            for epoch in range(start_step // run.steps_per_epoch, run.config.epochs):
                first = max(start_step - epoch * run.steps_per_epoch, 0)
                state, epoch_metrics, seconds = train_epoch(run, tally, state, epoch_metrics,
                                                            epoch, first)
                epoch_metrics = end_epoch(run, tally, state, epoch_metrics, epoch,
                                          seconds if first == 0 else None)
                if run.flag.agreed() and epoch + 1 < run.config.epochs:
                    stop(run, tally)  # at an epoch's end, after its test accuracy and save
        return state, closing_report(run.log, tally.totals, run.out, run.config.sync_steps)
    except Exception as err:
        if memory.is_out_of_memory(err):
            raise memory.out_of_memory("--batch-size", run.config.batch_size, run.step_bytes,
                                       jax.local_devices(), run.mesh.size) from err
        raise
    finally:
        if tracer:
            tracer.close()
        if run.progress:
            run.progress.close()


class _Done(NamedTuple):
    """A dispatched step, to be waited for: its global step, metric sums and batch size."""

    step: int
    metrics: dict
    size: int


def train_epoch(run: Run, tally: Tally, state, epoch_metrics, epoch: int, first: int):
    """Steps `first`.. of one epoch; returns the state, the metric sums and the step seconds.

    By default one step is in flight: step i is dispatched (its batch gathered and resized on
    the device) before the host waits for step i - 1, so the accelerator never waits for the
    host; each step's loss is still checked as it completes, and the current step is waited
    for before anything reads or saves it. A step's seconds are then the wall time between
    completions (the epoch's steps, input preparation on the device included). `--sync-steps`
    is d2l's timing instead: its batch ready, the step alone, waited for."""
    run.progress.show(f"epoch {epoch + 1}/{run.config.epochs}")
    log_every = max(run.steps_per_epoch // 5, 1)  # d2l's animator: 5 points per epoch
    clock = {"seconds": 0.0, "last": time.perf_counter(), "dt": 0.0}
    pending: _Done | None = None

    def complete(done: _Done, started: float | None = None) -> None:
        """Wait for a dispatched step; time it, check its loss, count it."""
        jax.block_until_ready(done.metrics)
        now = time.perf_counter()
        dt = now - (clock["last"] if started is None else started)
        clock["last"], clock["dt"] = now, dt
        clock["seconds"] += dt
        tally.totals["train_seconds"] = tally.totals["train_seconds"] + dt
        tally.totals["train_examples"] = tally.totals["train_examples"] + done.size
        check_loss(run, tally, done.metrics, done.step)
        run.progress.update(1)
        if run.estimate and (estimate := run.estimate.add(dt, done.step)):
            run.out(estimate)

    for i, batch in enumerate(run.train_pipe.epoch(epoch, first), start=first):
        global_step = epoch * run.steps_per_epoch + i + 1
        if run.config.sync_steps:
            jax.block_until_ready(batch.images)  # d2l times the steps once their batch is loaded
            started = time.perf_counter()
        state, epoch_metrics = run.train_step(state, batch.images, batch.labels, epoch_metrics)
        if run.config.sync_steps:
            complete(_Done(global_step, epoch_metrics, batch.size), started)
        else:
            if pending is not None:
                complete(pending)  # the step before, while this one runs
            # Its loss, copied on the device: the next step takes (donates) the sums themselves.
            pending = _Done(global_step, {"loss_sum": jnp.copy(epoch_metrics["loss_sum"])},
                            batch.size)
        last = i + 1 == run.steps_per_epoch
        logging = (i + 1) % log_every == 0 or last
        if pending is not None and logging:
            complete(pending)  # read next: this step itself
            pending = None
        every = run.config.checkpoint_every_steps
        stopping = not last and run.flag.agreed()  # a signal that came during the waits above
        saving = stopping or (not last and every and global_step % every == 0)
        if pending is not None and saving:
            complete(pending)  # saved next: this step itself
            pending = None
        if logging:
            point = metrics_point(epoch_metrics, global_step, run.steps_per_epoch,
                                  tally.totals, run.wall_start)
            run.progress.show(loss=f"{point['train_loss']:.3f}",
                              acc=f"{point['train_acc']:.3f}",
                              img_s=f"{batch.size / max(clock['dt'], 1e-9):.0f}")
            if not last:
                run.log.add(point)
                if run.progress.bar is None:  # on a terminal the bar shows them
                    run.out(progress_line(point, run.total_steps))
        if saving:
            save(run, tally, global_step, state, epoch_metrics)
        if stopping:
            stop(run, tally)  # at an epoch's last step, end_epoch comes first
    return state, epoch_metrics, clock["seconds"]


def end_epoch(run: Run, tally: Tally, state, epoch_metrics, epoch: int,
              step_seconds: float | None):
    """d2l's epoch end: test accuracy, the epoch's point, a checkpoint, the plot.

    Returns the emptied metric sums for the next epoch.
    """
    test = evaluate(state, run.test_pipe, run.mesh)
    point = metrics_point(epoch_metrics, (epoch + 1) * run.steps_per_epoch,
                          run.steps_per_epoch, tally.totals, run.wall_start)
    count = int(jax.device_get(epoch_metrics)["count"])
    point.update(test_acc=test["acc"], test_loss=test["loss"],
                 epoch_examples_per_sec=None if step_seconds is None else count / step_seconds)
    run.log.add(point)
    run.out(progress_line(point, run.total_steps))
    epoch_metrics = put_replicated(empty_metrics(state), run.mesh)
    save(run, tally, point["step"], state, epoch_metrics)
    if run.primary:
        plot_curves(run.log.points, run.workdir / layout.CURVES, run.config.epochs)
    return epoch_metrics
