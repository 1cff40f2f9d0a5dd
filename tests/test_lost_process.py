"""A multi-process run that loses a process or is stopped: the survivors stop with one line,
all processes stop at the same step on a signal, and the same commands resume the run. Two
CLI processes on loopback (jax.distributed, gloo), float32, the device pipeline."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import corrupt_array_data, free_port, steps_saved

LOST_RUN_STEPS = 8
HEARTBEAT = 5  # seconds: --heartbeat-timeout, so that a lost process is noticed within 10 s


def lost_process_run(workdir, data, port: int, process_id: int,
                     steps: int = LOST_RUN_STEPS) -> subprocess.Popen:
    """One of two CLI processes: `steps` steps of 4 images, a checkpoint every 2."""
    cmd = [sys.executable, "-m", "alexnet_jax", "train", "--workdir", str(workdir),
           "--coordinator", f"localhost:{port}", "--num-processes", "2",
           "--process-id", str(process_id), "--manual-dir", str(data), "--source", "idx",
           "--limit-train", str(4 * steps), "--limit-test", "8", "--batch-size", "4",
           "--epochs", "1", "--checkpoint-every-steps", "2",
           "--heartbeat-timeout", str(HEARTBEAT)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def both(workdir, data, steps: int = LOST_RUN_STEPS, data_1=None) -> list[subprocess.Popen]:
    """The two processes; `data_1`: process 1's data folder, when it differs."""
    port = free_port()
    return [lost_process_run(workdir, data if i == 0 or data_1 is None else data_1, port, i,
                             steps) for i in range(2)]


def kill_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def survivor_stops(survivor, victim, victim_id: int, report, moment: str) -> None:
    """SIGKILL `victim`: `survivor` must stop within 10 s, exit 1, with the one line that says
    which process is gone and how to resume (native logs go to a file)."""
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    err = survivor.stderr.read()
    survivor.wait(120)
    took = time.monotonic() - killed
    report(f"lost process in a {moment}: seconds until the survivor stopped", took, 10.0)
    assert survivor.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("alexnet-jax: error: another process of "
                                                   "this "), err
    assert f" is gone (process {victim_id}" in err, err  # the lost one named
    assert "Run the same command again on" in err and "Native logs: " in err, err
    assert took <= 10, took


@pytest.mark.slow
def test_a_stopped_then_lost_run_ends_each_time_with_one_line_and_resumes(
        fashion_mnist_dir, tmp_path, report):
    """One run of two CLI processes on loopback, its same commands run three times.
    1. A scheduler stops one host (SIGTERM to process 1): the processes agree at the next
       step, save that step together and exit 143, each with one line.
    2. The same commands resume from that step; then process 0, the coordinator, dies in a
       step: the survivor stops with one line.
    3. The newest checkpoint is also truncated, and the same commands go on: both read it,
       agree that it is corrupted (one line each), process 0 moves it aside, both fall back
       to the one before and train on in step; then process 1 dies while the run's last
       checkpoint is being written (process 0 waits in orbax's barrier): the survivor stops
       with one line, the partial checkpoint is no checkpoint, each metrics step is there
       once. (Resuming after a kill inside a save is test_faults.py's, on one process.)"""
    workdir = tmp_path / "run"
    metrics = workdir / "metrics.jsonl"
    procs = both(workdir, fashion_mnist_dir)
    try:
        assert wait_until(lambda: metrics.is_file() and metrics.read_text().strip(), 300, 0.01)
        procs[1].send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        kill_all(procs)
    assert [p.returncode for p in procs] == [143, 143], errs
    stops = {err.split("stopped by SIGTERM at step ")[1].split()[0] for err in errs}
    assert len(stops) == 1 and all(err.count("\n") == 1 for err in errs), errs
    stop = int(stops.pop())
    assert steps_saved(workdir)[-1] == stop

    procs = both(workdir, fashion_mnist_dir)
    lines, seen = [], threading.Event()

    def read_stdout():
        for line in procs[0].stdout:
            lines.append(line)
            if f" step 6/{LOST_RUN_STEPS}:" in line:  # checkpoint 4 is long saved
                seen.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        assert seen.wait(300), "".join(lines)
        survivor_stops(procs[1], procs[0], 0, report, "step")
    finally:
        kill_all(procs)
    assert f"resuming from the checkpoint at step {stop} " in "".join(lines)

    saved = steps_saved(workdir)
    corrupt_array_data(workdir / "checkpoints" / str(saved[-1]), "truncate")
    ckpt = workdir / "checkpoints"
    procs = both(workdir, fashion_mnist_dir)

    def final_save():
        return any(p.name.startswith(f"{LOST_RUN_STEPS}.") for p in ckpt.iterdir())

    try:
        assert wait_until(final_save, 300, poll=0.001), procs[0].stderr.read()
        survivor_stops(procs[0], procs[1], 1, report, "final save")
        outputs = [p.stdout.read() for p in procs]
    finally:
        kill_all(procs)
    assert f"resuming from the checkpoint at step {saved[-2]} " in outputs[0], outputs[0]
    for out in outputs:  # both read it, agree, and say so once; process 0 moves it
        warnings = [line for line in out.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and f"checkpoints/{saved[-1]} is corrupted" in warnings[0] \
            and "cannot be read now" not in out, out
    assert (workdir / "corrupted_checkpoints" / str(saved[-1])).is_dir()
    assert steps_saved(workdir)[-1] < LOST_RUN_STEPS  # the partial one is not a checkpoint
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == LOST_RUN_STEPS, steps


def wait_until(predicate, timeout: float, poll: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


@pytest.mark.slow
def test_a_process_that_fails_stops_the_others_with_its_reason(fashion_mnist_dir, tmp_path,
                                                               report):
    """Process 1's data folder is missing: it says so, and process 0, which would wait for it
    in the first collective, stops too with process 1's reason; one line each, exit 1, not
    'a process is gone' (the coordination service still counts both alive)."""
    procs = both(tmp_path / "run", fashion_mnist_dir, data_1=tmp_path / "nowhere")
    t0 = time.monotonic()
    try:
        errs = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        kill_all(procs)
    report("a failed process: seconds until both stopped", time.monotonic() - t0)
    assert [p.returncode for p in procs] == [1, 1], errs
    missing = f"data folder {tmp_path / 'nowhere'} does not exist"
    assert errs[1].startswith(f"alexnet-jax: error: {missing}"), errs[1]
    assert errs[0].startswith("alexnet-jax: error: process 1 of this 2-process run stopped: "
                              f"{missing}"), errs[0]
    assert errs[0].count("\n") == 1 and "gone" not in errs[0] + errs[1], errs


def test_the_lost_process_is_read_from_jax_distributeds_fatal_status():
    """What a supervised child's native log says before its abort (jaxlib 0.10, seen in this
    suite's runs and a stalled process's): the process it names, never "?"."""
    from alexnet_jax.runtime.supervise import lost_process

    unhealthy = ("UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):"
                 "\n1\nThe tasks have crashed. Check the task logs for an earlier error")
    assert lost_process(unhealthy) == "process 1"
    assert lost_process(unhealthy.replace("\n1\n", "\n1\n3\n")) == "process 1, 3"
    assert lost_process("UNAVAILABLE: Failed to send RPC to coordination service. Either the "
                        "leader task was preempted/died/restarted unexpectedly") == \
        "process 0, the coordinator"
    assert lost_process("INTERNAL: task /job:jax_worker/replica:0/task:2 failed") == "process 2"
