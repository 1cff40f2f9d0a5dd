"""d2l's printed lines: a progress line per metrics point, and the closing report."""

from __future__ import annotations

import math
import statistics
import time

import jax

from ..config import D2L, QUICK_RUN
from ..data.release import TRAIN_IMAGES
from ..observe.progress import duration
from ..runtime.cpu import bf16_units
from ..runtime.fast_malloc import allocator_note
from ..runtime.parallel import device_name
from .metrics_log import MetricsLog
from .run_dir import RunError


def metrics_point(epoch_metrics, global_step: int, steps_per_epoch: int, totals: dict,
                  wall_start: float) -> dict:
    """A metrics point: d2l's running train loss and accuracy so far in this epoch."""
    m = jax.device_get(epoch_metrics)
    count = int(m["count"])
    epoch, i = divmod(global_step - 1, steps_per_epoch)
    return {
        "epoch": epoch + (i + 1) / steps_per_epoch,
        "step": global_step,
        "train_loss": float(m["loss_sum"]) / count,
        "train_acc": int(m["correct"]) / count,
        "test_acc": None,
        "examples_per_sec": float(totals["train_examples"]) / float(totals["train_seconds"]),
        "wall_seconds": time.perf_counter() - wall_start,
    }


def progress_line(point: dict, total_steps: int) -> str:
    test = f", test acc {point['test_acc']:.3f}" if point.get("test_acc") is not None else ""
    return (f"epoch {point['epoch']:.2f} step {point['step']}/{total_steps}: loss "
            f"{point['train_loss']:.3f}, train acc {point['train_acc']:.3f}{test}, "
            f"{point['examples_per_sec']:.1f} examples/sec")


def closing_report(log: MetricsLog, totals: dict, out=print, sync_steps: bool = True) -> dict:
    """d2l's two closing lines (and the wall time), from the last epoch-end point; without
    `sync_steps` (--sync-steps, d2l's timing) examples/sec says what it timed."""
    ends = [p for p in log.points if p.get("test_acc") is not None]
    if not ends:
        raise RunError(f"{log.path} holds no finished epoch to report")
    last = ends[-1]
    speed = float(totals["train_examples"]) / float(totals["train_seconds"])
    out(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, "
        f"test acc {last['test_acc']:.3f}")
    timed = "" if sync_steps else (" (the wall time of the epochs' steps, one in flight; "
                                   "--sync-steps times each step alone, as d2l)")
    out(f"{speed:.1f} examples/sec on {device_name()}{timed}")
    if jax.device_count() > 1:
        out(f"{speed / jax.device_count():.1f} examples/sec per device")
    out(f"wall time {last['wall_seconds']:.1f} s")
    return {**last, "examples_per_sec": speed}



def compiled_lines(seconds: float, backend: str, dtype: str = D2L.dtype) -> list[str]:
    """What train says once its step is compiled: the time, what a missing tcmalloc costs,
    and what bfloat16 gives on this CPU."""
    notes = [allocator_note(backend)]
    if backend == "cpu" and dtype == "bfloat16":
        notes.append(bf16_cpu_note(bf16_units()))
    return [f"compiled the train step in {seconds:.1f} s (not counted in examples/sec)",
            *filter(None, notes)]


def bf16_cpu_note(units: tuple[str, ...]) -> str:
    """What --dtype bfloat16 does on a CPU with these bf16 units (runtime/cpu.py)."""
    have = f"bf16 units: {', '.join(units)}" if units else "no bf16 units"
    return (f"bfloat16 on this CPU ({have}): float32 arithmetic on bf16 activations, about "
            "float32's speed; bfloat16 pays on a GPU or TPU")


D2L_STEPS = D2L.epochs * math.ceil(TRAIN_IMAGES / D2L.batch_size)  # d2l's full run: 4,690
# Learns in a few minutes on 2 CPU cores (lr 0.05: d2l's 0.01 leaves loss 2.30 only after a
# few hundred steps); measured in benchmarks/NOTES.md.


class CpuEstimate:
    """Times a run's first ESTIMATE_AFTER steps, then says once how long the rest takes."""

    ESTIMATE_AFTER = 5  # steps timed (fewer when the run has fewer)

    def __init__(self, start_step: int, total_steps: int, batch_size: int):
        self.at = min(start_step + self.ESTIMATE_AFTER, total_steps)
        self.total_steps, self.batch_size, self.seconds = total_steps, batch_size, []

    def add(self, seconds: float, global_step: int) -> str | None:
        """Record a step; at the estimate's step, the estimate line."""
        if len(self.seconds) < self.ESTIMATE_AFTER:
            self.seconds.append(seconds)
        if global_step != self.at:
            return None
        return cpu_estimate(typical_step_seconds(self.seconds), self.batch_size,
                            self.total_steps - global_step, self.total_steps)


def typical_step_seconds(seconds: list[float]) -> float:
    """The median step after the first: the first steps after compiling fault their memory in,
    and single steps on a shared CPU move by up to 1.7x (benchmarks/NOTES.md)."""
    return statistics.median(seconds[1:] or seconds)


def cpu_estimate(step_seconds: float, batch_size: int, steps_left: int, total_steps: int) -> str:
    """How long this run's steps, and d2l's full run, take on this CPU at the measured pace."""
    line = (f"on this CPU a step takes {step_seconds:.2f} s: the {steps_left} steps left take "
            f"about {duration(step_seconds * steps_left)} (steps alone)")
    if (total_steps, batch_size) != (D2L_STEPS, D2L.batch_size):  # not d2l's run itself
        d2l = step_seconds / batch_size * D2L.batch_size * D2L_STEPS  # time per image scales
        line += f"; d2l's full run would take roughly {duration(d2l)} here"
    return line + f". d2l's full run is a GPU job; a quick run: alexnet-jax train {QUICK_RUN}"
