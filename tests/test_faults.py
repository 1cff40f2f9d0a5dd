"""Faults made to really happen: signals, kills inside a save, rotten checkpoints, full disks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    assert_events_mirror_metrics,
    assert_same_params,
    assert_same_run,
    copy_run,
    finished,
    params_of,
    run_record,
    sigterm_after,
    small_disk,
    steps_saved,
    train_args,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexnet_jax.cli import build_parser, main


def start_training(workdir, data, *extra):
    cmd = [sys.executable, "-m", "alexnet_jax.cli", *train_args(workdir, data, 2, *extra)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc, timeout=240.0, poll=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(poll)
    return False


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_resumes(fashion_mnist_dir, tmp_path,
                                                          reference_run):
    workdir = tmp_path / "term"
    proc = start_training(workdir, fashion_mnist_dir)
    # Wait for the first logged step (metrics.jsonl gets a line), then interrupt mid-epoch.
    metrics = workdir / "metrics.jsonl"
    assert wait_for(lambda: metrics.is_file() and metrics.read_text().strip(), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step" in err and "Traceback" not in err
    saved = steps_saved(workdir)
    assert saved and saved[-1] not in (3, 6), saved  # a mid-epoch step, not an epoch end
    assert_same_run(finished(workdir, fashion_mnist_dir), reference_run)


@pytest.mark.slow
def test_sigkill_inside_a_save_falls_back_to_the_previous_checkpoint(fashion_mnist_dir,
                                                                     tmp_path, reference_run):
    """Kill while orbax is writing (its temporary folder exists; retry until that happens):
    the same command resumes from the last complete checkpoint and ends bit-identical to the
    run never killed (metrics points past that checkpoint dropped, none twice)."""
    for attempt in range(5):
        workdir = tmp_path / f"kill{attempt}"
        ckpt = workdir / "checkpoints"
        proc = start_training(workdir, fashion_mnist_dir, "--checkpoint-every-steps", "1")

        def saving(ckpt=ckpt, workdir=workdir):
            return ckpt.is_dir() and steps_saved(workdir) and any(
                "tmp" in p.name for p in ckpt.iterdir())

        in_save = wait_for(saving, proc, poll=0.002)
        proc.kill()
        proc.communicate()
        partial = [p.name for p in ckpt.iterdir() if "tmp" in p.name] if ckpt.is_dir() else []
        if in_save and partial:
            break
    else:
        pytest.fail("could not land a kill inside a checkpoint write in 5 attempts")
    complete = steps_saved(workdir)
    assert complete, "the kill must come after a complete checkpoint"
    main_out = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.cli", *train_args(workdir, fashion_mnist_dir)],
        capture_output=True, text=True, timeout=300)
    assert main_out.returncode == 0, main_out.stderr
    assert f"resuming from the checkpoint at step {complete[-1]}" in main_out.stdout
    closing = [line for line in main_out.stdout.splitlines() if line.startswith("loss ")]
    assert_same_run((params_of(workdir), run_record(workdir), closing), reference_run)


@pytest.mark.slow
def test_corrupted_checkpoint_is_detected(reference_dir, fashion_mnist_dir, tmp_path, capsys):
    """The reference run (checkpoints 3 and 6) with its newest checkpoint damaged: its state's
    metadata file deleted (which once read as "does not fit"). Every other file deleted, and
    truncated or flipped bytes, are judged in test_failure_paths.py without training; here
    the whole command, once."""
    workdir = copy_run(reference_dir, tmp_path / "w")
    good = reference_dir[1][0]
    latest = steps_saved(workdir)[-1]
    (workdir / "checkpoints" / str(latest) / "default" / "_METADATA").unlink()
    capsys.readouterr()
    # read-only: reports it, falls back, moves nothing
    assert main(["evaluate", "--workdir", str(workdir), "--manual-dir", str(fashion_mnist_dir),
                 "--source", "idx", "--limit-test", "4"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoints/{latest} is corrupted" in out and "moved" not in out
    assert steps_saved(workdir)[-1] == latest and not (workdir / "corrupted_checkpoints").exists()
    # strict: stop with the path named
    assert main(train_args(workdir, fashion_mnist_dir, 2, "--strict-checkpoints")) == 1
    err = capsys.readouterr().err
    assert f"checkpoints/{latest}" in err and "corrupted" in err
    # default: quarantine it, fall back to the previous good checkpoint and train on from there
    assert main(train_args(workdir, fashion_mnist_dir, 2)) == 0
    out = capsys.readouterr().out
    assert f"checkpoints/{latest} is corrupted" in out and "moved it to" in out
    assert (workdir / "corrupted_checkpoints" / str(latest)).is_dir()
    assert "resuming from the checkpoint at step" in out
    assert f"step {latest}" not in out.split("resuming from the checkpoint at")[1].splitlines()[0]
    assert_same_params(params_of(workdir), good)  # retrained the lost steps to the same result
    # every checkpoint bad: stop and say how to start over, instead of retraining silently
    # (a missing file is proof at once; damage that is read again: test_failure_paths.py)
    for step in steps_saved(workdir):
        (workdir / "checkpoints" / str(step) / "default" / "_METADATA").unlink()
    capsys.readouterr()
    assert main(train_args(workdir, fashion_mnist_dir, 2)) == 1
    err = capsys.readouterr().err
    assert "every checkpoint" in err and "--restart" in err and len(err.splitlines()) == 1
    assert (workdir / "metrics.jsonl").read_text()  # the run's records are still there
    assert main(train_args(workdir, fashion_mnist_dir, 1, "--restart")) == 0
    assert "starting over: the earlier run's records are in" in capsys.readouterr().out
    aside = next((workdir / "replaced").iterdir())
    assert {"metrics.jsonl", "config.json", "corrupted_checkpoints"} <= {
        p.name for p in aside.iterdir()}


@pytest.mark.slow
def test_disk_full_while_saving_keeps_earlier_checkpoints(fashion_mnist_dir, tmp_path,
                                                          capsys):
    # ~190 MB per checkpoint of params: 300 MB holds one and fills up during the second.
    with small_disk(tmp_path / "small", "300m") as mount:
        workdir = mount / "w"
        code = main(train_args(workdir, fashion_mnist_dir, 2, "--checkpoint-every-steps", "1"))
        err = capsys.readouterr().err
        assert code == 1
        assert "No space left on device" in err, err  # the OS's ENOSPC: it really filled
        assert "Traceback" not in err
        assert steps_saved(workdir)  # the earlier checkpoint is still there and readable
        params_of(workdir)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.sampled_from(["train", "evaluate", "predict", "convert", "summary", "benchmark",
                     "--lr", "--batch-size", "--epochs", "--workdir", "--pipeline", "--dtype",
                     "--from-torch", "--to-torch", "--step", "--num", "-h", "--seed",
                     "--limit-train", "0", "-1", "1e9", "nan", "inf", "x", ""]),
    st.text(max_size=8)), max_size=6))
def test_cli_parser_never_tracebacks(argv):
    """Random argument lists: the parser accepts them or exits 2 with a usage message."""
    import contextlib
    import io

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exit_:
        assert exit_.code in (0, 2)
        if exit_.code == 2:
            assert "usage:" in stderr.getvalue()


def test_convert_without_pytorch_says_to_install_it(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from alexnet_jax.cli import main; "
            f"sys.exit(main(['convert', '--from-torch', 'x.pt', '--workdir', {str(tmp_path)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and done.stderr.startswith(
        "alexnet-jax: error: convert reads and writes PyTorch files, and PyTorch is not "
        "installed"), done.stderr
    assert "pip install torch" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.torch
def test_convert_rejects_a_file_that_is_not_a_state_dict(tmp_path, capsys):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(os.urandom(1000))
    assert main(["convert", "--from-torch", str(bogus), "--workdir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "is not a PyTorch state dict" in err and "Traceback" not in err


@pytest.mark.torch
def test_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    import torch

    from alexnet_jax.d2l.reference import d2l_alexnet

    sd = d2l_alexnet().state_dict()
    sd["20.weight"], sd["20.bias"] = torch.zeros(5, 4096), torch.zeros(5)  # 5 classes
    sd["17.weight"] = torch.zeros(100, 4096)  # and a mis-shaped layer
    pt = tmp_path / "other.pt"
    torch.save(sd, pt)
    assert main(["convert", "--from-torch", str(pt), "--workdir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "17.weight has shape (100, 4096), expected (4096, 4096)" in err


def test_wrong_image_shape_is_a_clear_value_error():
    import jax
    import numpy as np

    from alexnet_jax import AlexNet, init_params

    params = init_params(AlexNet(), jax.random.key(0))
    for shape, words in [((2, 1, 224, 224), "NCHW"), ((2, 96, 96, 1), "96x96"),
                         ((224, 224, 1), "rank 3"), ((2, 224, 224, 3), "3 channels")]:
        with pytest.raises(ValueError, match=words) as err:
            AlexNet().apply({"params": params}, np.zeros(shape, np.float32), train=False)
        assert "(batch, H, W, 1)" in str(err.value) and "193..224" in str(err.value)


def test_bad_data_dir_is_one_line(tmp_path, capsys):
    code = main(["train", "--workdir", str(tmp_path / "w"), "--source", "idx",
                 "--manual-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert code == 1 and "does not exist" in first and "Traceback" not in err
    assert "t10k-labels-idx1-ubyte.gz" in err  # then the files and sums to put there


# ---- a diverged run keeps its last finite checkpoint ----


def assert_finite_checkpoints(workdir: Path) -> None:
    """Every checkpoint in the work dir loads, and its parameters are finite."""
    import jax
    import numpy as np

    for step in steps_saved(workdir):
        params = params_of_step(workdir, step)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params)), step


def params_of_step(workdir: Path, step: int):
    import jax

    from alexnet_jax.training.saved_state import load_state

    return jax.device_get(load_state(workdir, step)[0].params)


@pytest.mark.slow
def test_a_diverged_run_keeps_its_last_finite_checkpoint_and_says_so(fashion_mnist_dir,
                                                                     tmp_path, capsys):
    """lr 30 on 4-image batches: the loss is finite at steps 1 and 2 and NaN at step 3, with a
    checkpoint after every step; run twice, as a user who retries would."""
    workdir = tmp_path / "w"
    args = train_args(workdir, fashion_mnist_dir, 2, "--lr", "30", "--checkpoint-every-steps",
                      "1", "--keep-checkpoints", "1")
    for attempt in range(2):
        assert main(args) == 1
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "the run diverged: a non-finite train loss (nan) at step 3, finite through " \
               "step 2" in err, err
        assert "The last finite checkpoint (step 2) is kept" in err, err
        assert steps_saved(workdir) == [2], attempt  # retention never dropped it for a NaN one
        assert_finite_checkpoints(workdir)
        if attempt:
            assert "resuming from the checkpoint at step 2" in out
    assert [p["step"] for p in run_record(workdir)] == [1, 2]  # no duplicated points


@pytest.mark.slow
def test_parameters_that_go_non_finite_are_never_saved(fashion_mnist_dir, tmp_path, capsys):
    """A step that leaves NaN in the parameters while its own loss was finite (the update
    overflowed): the save after it refuses, names the step range, and keeps the one before."""
    import jax.numpy as jnp

    from alexnet_jax.training import loop as train

    real_compile = train.compile_steps

    def compile_then_poison(*args):
        step, seconds, compiled = real_compile(*args)
        calls = []

        def poisoned(*step_args):
            state, metrics = step(*step_args)
            calls.append(1)
            if len(calls) == 2:
                params = dict(state.params)
                params["conv1"] = {**params["conv1"],
                                   "bias": params["conv1"]["bias"].at[0].set(jnp.nan)}
                state = state.replace(params=params)
            return state, metrics

        return poisoned, seconds, compiled

    train.compile_steps = compile_then_poison
    try:
        code = main(train_args(tmp_path / "w", fashion_mnist_dir, 2, "--checkpoint-every-steps",
                               "2", "--keep-checkpoints", "1"))
    finally:
        train.compile_steps = real_compile
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "the run diverged: NaN or infinite values in ['params']['conv1']['bias'] after " \
           "step 2, while the train loss was finite through step 2" in err, err
    assert "No checkpoint had been saved" in err and steps_saved(tmp_path / "w") == []


@pytest.mark.slow
def test_a_nan_checkpoint_of_an_earlier_version_is_reported_as_diverged(reference_dir,
                                                                        fashion_mnist_dir,
                                                                        tmp_path, capsys):
    """Earlier versions saved NaN states: `evaluate` names such a checkpoint diverged (not
    corrupted) and moves nothing; `train` moves it to diverged_checkpoints/ and says what to do."""
    import jax.numpy as jnp

    from alexnet_jax.training import checkpoints
    from alexnet_jax.training.checkpoints import checkpoint_tree, empty_totals
    from alexnet_jax.training.saved_state import load_state
    from alexnet_jax.training.steps import empty_metrics

    workdir = copy_run(reference_dir, tmp_path / "w")
    state, step = load_state(workdir)
    nan_state = state.replace(params={**state.params, "fc3": {
        **state.params["fc3"], "kernel": state.params["fc3"]["kernel"] * jnp.nan}})
    for s in steps_saved(workdir):  # an older version's run: every checkpoint NaN
        (workdir / "checkpoints" / str(s)).rename(tmp_path / f"finite{s}")
    with checkpoints.manager(workdir) as mngr:
        checkpoints.save(mngr, step, checkpoint_tree(nan_state, empty_metrics(state),
                                                     empty_totals()))
    capsys.readouterr()
    assert main(["evaluate", "--workdir", str(workdir), "--manual-dir",
                 str(fashion_mnist_dir), "--source", "idx"]) == 1
    out, err = capsys.readouterr()
    assert f"checkpoints/{step} is diverged: it holds NaN or infinite values in " \
           "['params']['fc3']['kernel']" in out and "corrupted" not in out + err, out
    assert steps_saved(workdir) == [step]
    assert main(train_args(workdir, fashion_mnist_dir, 3)) == 1
    out, err = capsys.readouterr()
    assert "moved it to" in out and (workdir / "diverged_checkpoints" / str(step)).is_dir()
    assert "every checkpoint" in err and "holds NaN or infinite values" in err
    assert "--restart" in err and err.count("\n") == 1 and "corrupted" not in err


# ---- one train per work dir; read-only commands never change a run ----


@pytest.mark.slow
def test_second_train_on_a_work_dir_exits_at_once(reference_dir, fashion_mnist_dir, tmp_path,
                                                  capsys):
    workdir = copy_run(reference_dir, tmp_path / "w")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from alexnet_jax.training.lock import hold\n"
         "with hold(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)",
         str(workdir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        config = (workdir / "config.json").read_text()
        capsys.readouterr()
        assert main(train_args(workdir, fashion_mnist_dir, 3)) == 1
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "in use by another train" in err
        assert len(err.splitlines()) == 1 and (workdir / "config.json").read_text() == config
        # read-only commands work while the lock is held
        assert main(["evaluate", "--workdir", str(workdir), "--manual-dir",
                     str(fashion_mnist_dir), "--source", "idx", "--limit-test", "4"]) == 0
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock with it
        holder.wait()
    from alexnet_jax.training.lock import hold

    with hold(workdir):
        pass


@pytest.mark.slow
def test_float64_checkpoint_read_without_x64_is_named_not_moved(fashion_mnist_dir, tmp_path,
                                                               capsys):
    """A float64 run's checkpoint (written here as `convert` writes one, at step 0, with
    JAX's 64-bit mode on) read without it: one line saying what to set (no JAX warning about
    truncated dtypes before it), nothing moved."""
    import warnings

    import jax

    from alexnet_jax.config import TrainConfig
    from alexnet_jax.model.build import build_model
    from alexnet_jax.training.saved_state import start_from
    from alexnet_jax.training.steps import create_train_state

    workdir = tmp_path / "f64"
    with jax.enable_x64(True):
        params = create_train_state(build_model("float64"), 0, 0.01).params
        start_from(TrainConfig(workdir=str(workdir), dtype="float64"),
                   jax.device_get(params), "a float64 run")
    before = steps_saved(workdir)
    assert before == [0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["evaluate", "--workdir", str(workdir), "--manual-dir",
                     str(fashion_mnist_dir), "--source", "idx"]) == 1
    err = capsys.readouterr().err
    assert "set JAX_ENABLE_X64=1" in err and len(err.splitlines()) == 1
    assert not caught, [str(w.message) for w in caught]
    assert steps_saved(workdir) == before and not (workdir / "corrupted_checkpoints").exists()
    assert main(train_args(workdir, fashion_mnist_dir, 2, "--limit-train", "4", "--dtype",
                          "float64")) == 1
    assert "JAX_ENABLE_X64=1" in capsys.readouterr().err
    assert steps_saved(workdir) == before


# ---- a stop anywhere resumes to the run that never stopped ----


@pytest.mark.slow
def test_stop_at_an_epochs_last_step_resumes_to_the_same_run(fashion_mnist_dir, tmp_path,
                                                             reference_run):
    """SIGTERM after step 3 of 6 (an epoch's last step: after its test accuracy and
    checkpoint), then the same command again: the same metrics, test accuracies, closing line
    and parameters. Stopped mid-epoch: test_sigterm_checkpoints_the_current_step_and_resumes
    (a real signal to a real process) and, with --augment, tests/test_augment.py (the second
    epoch's first step). TensorBoard's events hold each metrics point once; a point logged
    past the checkpoint (as a kill between logging and saving leaves) is dropped."""
    workdir = tmp_path / "w"
    with sigterm_after(3):
        assert main(train_args(workdir, fashion_mnist_dir)) == 128 + signal.SIGTERM
    assert_events_mirror_metrics(workdir)
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({**run_record(workdir)[-1], "step": 4, "epoch": 4 / 3,
                            "test_acc": None, "test_loss": None, "examples_per_sec": 1.0,
                            "wall_seconds": 1.0}) + "\n")
    assert_same_run(finished(workdir, fashion_mnist_dir), reference_run)
    assert_events_mirror_metrics(workdir)


# ---- bad state dicts, bad settings, damaged records: one line, nothing written ----


def _bad_state_dicts():
    import torch

    from alexnet_jax.d2l.reference import d2l_alexnet

    base = d2l_alexnet().state_dict()

    def changed(key, value):
        return {**base, key: value}

    nan = base["3.weight"].clone()
    nan[0, 0, 0, 0] = float("nan")
    inf = base["14.bias"].clone()
    inf[7] = float("inf")
    yield "nan", changed("3.weight", nan), "3.weight holds NaN or infinite values"
    yield "inf", changed("14.bias", inf), "14.bias holds NaN or infinite values"
    yield "int64", changed("0.bias", base["0.bias"].long()), "0.bias has dtype torch.int64"
    yield "five", {**base, "20.weight": torch.zeros(5, 4096), "20.bias": torch.zeros(5)}, \
        "a 5-class head"
    yield "strings", {k: "x" for k in base}, "0.weight is a str, not a tensor"


@pytest.mark.torch
def test_convert_refuses_weights_that_cannot_work(tmp_path, capsys):
    import torch

    for name, state_dict, words in _bad_state_dicts():
        pt = tmp_path / f"{name}.pt"
        torch.save(state_dict, pt)
        workdir = tmp_path / name
        assert main(["convert", "--from-torch", str(pt), "--workdir", str(workdir)]) == 1, name
        err = capsys.readouterr().err
        assert words in err and len(err.splitlines()) == 1, (name, err)
        assert not workdir.exists(), name


@pytest.mark.slow
@pytest.mark.parametrize("flags, words", [
    (["--lr", "1e-46"], "--lr 1e-46 is 0 in the float32 parameters"),
    (["--lr", "1e-40"], "is 0 in the float32"),  # a subnormal: flushed to 0
    (["--seed", str(2**70)], "--seed must be from 0 to 2**63 - 1"),
    (["--seed", "-1"], "--seed must be from 0 to 2**63 - 1"),
    (["--workdir", ""], "--workdir must name a folder"),
    (["--source", "idx", "--manual-dir", "/nonexistent/fashion-mnist"], "does not exist"),
])
def test_bad_settings_are_refused_before_anything_is_written(flags, words, fashion_mnist_dir,
                                                             tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "new"
    args = train_args(workdir, fashion_mnist_dir, 1)
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no work dir, nothing in the current directory


@pytest.mark.slow
def test_damaged_records_are_named_and_a_torn_line_is_dropped(reference_dir,
                                                              fashion_mnist_dir, tmp_path,
                                                              capsys):
    workdir = copy_run(reference_dir, tmp_path / "w")
    more = train_args(workdir, fashion_mnist_dir, 3)
    config = workdir / "config.json"
    good = config.read_text()
    for damage in (good[: len(good) // 2], "garbage", "[]"):
        config.write_text(damage)
        for argv in (more, ["evaluate", "--workdir", str(workdir)]):
            capsys.readouterr()
            assert main(argv) == 1
            err = capsys.readouterr().err
            assert f"{config} cannot be read" in err and "--restart" in err
            assert len(err.splitlines()) == 1
    config.write_text(good)
    metrics = workdir / "metrics.jsonl"
    lines = metrics.read_text()
    metrics.write_text("{\"epoch\": 1.0, \"st\n" + lines)
    capsys.readouterr()
    assert main(more) == 1
    err = capsys.readouterr().err
    assert f"{metrics}, line 1, is damaged" in err and len(err.splitlines()) == 1
    metrics.write_text(lines + '{"epoch": 2.33, "step": 7, "train_lo')  # a crash mid-write
    assert main(more) == 0
    assert "dropped the torn last line" in capsys.readouterr().out
    assert [p["step"] for p in run_record(workdir)] == list(range(1, 10))
