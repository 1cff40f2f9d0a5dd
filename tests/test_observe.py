"""Seeing inside runs: TensorBoard event files, profiler traces, several runs in one plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import assert_events_mirror_metrics, run_record, train_args

from alexnet_jax.cli import main


@pytest.mark.slow
def test_gpu_path_trains_without_tensorflow(fashion_mnist_dir, tmp_path):
    """The GPU machine has tensorboard but neither TensorFlow nor tensorflow-datasets: one
    training step on scripts/gpu_check.sh's path (release files, device pipeline), in a
    process where importing either fails, trains, evaluates and writes its events."""
    workdir = tmp_path / "w"
    args = train_args(workdir, fashion_mnist_dir, 1, "--limit-train", "4", "--pipeline",
                      "device")
    code = ("import sys; sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None; "
            "from alexnet_jax.cli import main; rc = main(" + repr(args) + "); "
            "assert 'tensorflow' not in [m.split('.')[0] for m in sys.modules "
            "if sys.modules[m] is not None]; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert [p["step"] for p in run_record(workdir)] == [1]
    assert_events_mirror_metrics(workdir)


@pytest.mark.slow
def test_profile_steps_writes_a_trace(fashion_mnist_dir, tmp_path):
    workdir = tmp_path / "w"
    assert main(train_args(workdir, fashion_mnist_dir, 1, "--limit-train", "4",
                           "--profile-steps", "1:1")) == 0
    traces = workdir / "profile" / "plugins" / "profile"
    xplane = list(traces.glob("*/*.xplane.pb"))
    assert xplane and xplane[0].stat().st_size > 0
    assert list(traces.glob("*/perfetto_trace.json.gz"))


def test_plot_several_runs(tmp_path, capsys):
    runs = []
    for name, shift in (("lr0.01", 0.0), ("lr0.05", 0.3)):
        run = tmp_path / name
        run.mkdir()
        points = [{"epoch": e / 2, "step": e, "train_loss": 2.3 - e / 10 - shift,
                   "train_acc": 0.1 * e + shift, "test_acc": 0.2 * e if e % 2 == 0 else None}
                  for e in range(1, 5)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
        runs.append(str(run))
    png = tmp_path / "compare.png"
    assert main(["plot", *runs, "--out", str(png)]) == 0
    assert png.stat().st_size > 0 and "2 runs" in capsys.readouterr().out

    from alexnet_jax.observe.plots import plot_runs
    from alexnet_jax.training.metrics_log import read_points

    fig = plot_runs({os.path.basename(r): read_points(tmp_path / r / "metrics.jsonl")
                     for r in runs}, tmp_path / "again.png")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"{run}: {curve}" for run in ("lr0.01", "lr0.05")
                      for curve in ("train loss", "train acc", "test acc")]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert len(lines["lr0.05: train loss"].get_xdata()) == 4
    assert list(lines["lr0.01: test acc"].get_ydata()) == [0.4, 0.8]
    assert lines["lr0.01: train loss"].get_color() != lines["lr0.05: train loss"].get_color()
    assert main(["plot", str(tmp_path / "nowhere"), "--out", str(png)]) == 1
    err = capsys.readouterr().err
    assert "metrics.jsonl is missing" in err and len(err.splitlines()) == 1


def test_event_files_are_tensorboards_own_records(tmp_path):
    """The events written without TensorFlow: TensorBoard's own loader (EventFileLoader, in a
    child, where TensorFlow may load) reads every point, lr included."""
    from alexnet_jax.observe import events

    points = [{"step": s, "train_loss": 2.3 - s / 10, "train_acc": s / 10,
               "test_acc": None if s % 2 else s / 20} for s in range(1, 5)]
    log = events.EventLog(tmp_path / "tb", points[:2], lr=0.01)
    for point in points[2:]:
        log.add(point)
    log.close()
    assert events.read_scalars(tmp_path / "tb")["train/loss"] == [
        (p["step"], pytest.approx(p["train_loss"])) for p in points]
    code = ("import sys, json; from pathlib import Path\n"
            "from tensorboard.backend.event_processing.event_file_loader import "
            "EventFileLoader\n"
            "path = next(Path(sys.argv[1]).glob('events.out.tfevents.*'))\n"
            "print(json.dumps([[e.step, v.tag, v.simple_value if v.HasField('simple_value') "
            "else v.tensor.float_val[0]] for e in EventFileLoader(str(path)).Load() "
            "for v in e.summary.value]))")  # its loader turns scalars into tensors
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tb")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert [s for s, tag, _ in seen if tag == "test/acc"] == [2, 4]
    assert [round(v, 5) for s, tag, v in seen if tag == "train/lr"] == [0.01] * 4
