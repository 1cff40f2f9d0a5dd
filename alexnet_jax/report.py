"""d2l's printed lines: a progress line per metrics point, and the closing report."""

from __future__ import annotations

import jax

from .parallel import device_name
from .run_dir import MetricsLog, RunError


def progress_line(point: dict, total_steps: int) -> str:
    test = f", test acc {point['test_acc']:.3f}" if point.get("test_acc") is not None else ""
    return (f"epoch {point['epoch']:.2f} step {point['step']}/{total_steps}: loss "
            f"{point['train_loss']:.3f}, train acc {point['train_acc']:.3f}{test}, "
            f"{point['examples_per_sec']:.1f} examples/sec")


def closing_report(log: MetricsLog, totals: dict, out=print) -> dict:
    """d2l's two closing lines (and the wall time), from the last epoch-end point."""
    ends = [p for p in log.points if p.get("test_acc") is not None]
    if not ends:
        raise RunError(f"{log.path} holds no finished epoch to report")
    last = ends[-1]
    speed = float(totals["train_examples"]) / float(totals["train_seconds"])
    out(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, "
        f"test acc {last['test_acc']:.3f}")
    out(f"{speed:.1f} examples/sec on {device_name()}")
    if jax.device_count() > 1:
        out(f"{speed / jax.device_count():.1f} examples/sec per device")
    out(f"wall time {last['wall_seconds']:.1f} s")
    return {**last, "examples_per_sec": speed}
