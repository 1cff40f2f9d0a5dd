"""Long work reports progress with an ETA, also where output is not a terminal."""

from __future__ import annotations

import pytest

from alexnet_jax.observe import progress as progress_module
from alexnet_jax.observe.progress import Progress, duration
from alexnet_jax.training.report import CpuEstimate, cpu_estimate, typical_step_seconds


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    return clock


def test_a_line_every_tenth_with_the_eta_of_the_work_left(clock):
    lines = []
    progress = Progress("train", 100, out=lines.append, tty=False)
    for _ in range(100):
        clock.now += 2.0  # 2 s a step
        progress.update(1)
    assert len(lines) == 10
    assert lines[0] == "train: 10 of 100 steps (10%), ETA 3 min 00 s"
    assert lines[4] == "train: 50 of 100 steps (50%), ETA 1 min 40 s"
    assert lines[-1] == "train: 100 of 100 steps (100%)"


def test_a_line_every_30_seconds_between_tenths(clock):
    lines = []
    progress = Progress("train", 10_000, out=lines.append, tty=False)
    for _ in range(40):
        clock.now += 10.0  # 10 s a step: 4 steps, far from a tenth, in 40 s
        progress.update(1)
    assert len(lines) == 13  # one line per 30 s
    assert lines[0] == "train: 3 of 10000 steps (0%), ETA 27 h 46 min"


def test_a_resumed_run_estimates_from_its_own_pace(clock):
    lines = []
    progress = Progress("download", 100_000_000, done=90_000_000, out=lines.append,
                        unit="MB", scale=1e6, tty=False)
    clock.now += 10.0
    progress.update(5_000_000)  # 5 MB in 10 s: 10 s for the 5 MB left
    assert lines == []  # still in the same tenth, and not yet 30 s
    clock.now += 20.0
    progress.update(1_000_000)
    assert lines == ["download: 96.0 of 100.0 MB (96%), ETA 20 s"]


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3600, 10_500)] == [
        "0 s", "59 s", "1 min 01 s", "59 min 59 s", "1 h 00 min", "2 h 55 min"]


def test_cpu_estimate_names_this_run_d2ls_run_and_a_quick_run():
    line = cpu_estimate(2.2, 128, 4690, 4690)
    assert "the 4690 steps left take about 2 h 51 min" in line and "roughly" not in line
    assert "roughly" not in cpu_estimate(2.2, 128, 4000, 4690)  # d2l's run, resumed
    assert "alexnet-jax train --limit-train 2048" in line
    small = cpu_estimate(0.1, 4, 6, 6)
    assert "d2l's full run would take roughly 4 h 10 min here" in small  # 0.1 s / 4 images


def test_the_estimate_leaves_out_the_first_step_and_outliers():
    """A page-faulting first step (3.5 s) and a neighbour's slow one (4.1 s) among 2.3-2.5 s
    steps: the estimate, said once after the fifth step, uses the median of steps 2 to 5."""
    estimate = CpuEstimate(0, 4690, 128)
    lines = [estimate.add(s, step) for step, s in enumerate([3.5, 2.3, 4.1, 2.5, 2.4, 9.0], 1)]
    assert lines[:4] == [None] * 4 and lines[5] is None
    assert lines[4].startswith("on this CPU a step takes 2.45 s: the 4685 steps left")
    assert typical_step_seconds([1.7]) == 1.7  # a run of one step has nothing else
    resumed = CpuEstimate(6, 9, 4)  # 3 steps left: said at the last, from steps 8 and 9
    lines = [resumed.add(s, step) for step, s in [(7, 5.0), (8, 0.2), (9, 0.4)]]
    assert lines[:2] == [None, None] and "a step takes 0.30 s: the 0 steps left" in lines[2]
