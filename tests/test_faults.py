"""Faults made to really happen: signals, kills inside a save, rotten checkpoints, full disks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_params, params_of, train_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexnet_jax.cli import build_parser, main


def steps_saved(workdir: Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() \
        else []


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


def test_sigterm_checkpoints_the_current_step_and_resumes(fashion_mnist_dir, tmp_path,
                                                          reference_params):
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
    assert main(train_args(workdir, fashion_mnist_dir)) == 0
    assert_same_params(params_of(workdir), reference_params)


def test_sigkill_inside_a_save_falls_back_to_the_previous_checkpoint(fashion_mnist_dir,
                                                                     tmp_path):
    """Kill while orbax is writing (its temporary folder exists); retry until that happens."""
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


def _corrupt_array_data(checkpoint: Path, how: str) -> Path:
    """Damage the largest data file of a checkpoint: truncate it or flip bytes in it."""
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        for i in range(len(data) // 3, len(data) // 3 + 64):
            data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupted_checkpoint_is_detected(fashion_mnist_dir, tmp_path, how, capsys):
    workdir = tmp_path / how
    assert main(train_args(workdir, fashion_mnist_dir, 1)) == 0
    assert main(train_args(workdir, fashion_mnist_dir, 2, "--checkpoint-every-steps", "1")) == 0
    good = params_of(workdir)
    latest = steps_saved(workdir)[-1]
    _corrupt_array_data(workdir / "checkpoints" / str(latest), how)
    capsys.readouterr()
    # strict: stop with the path named
    assert main(train_args(workdir, fashion_mnist_dir, 2, "--strict-checkpoints")) == 1
    err = capsys.readouterr().err
    assert f"checkpoints/{latest}" in err and "corrupted" in err
    # default: fall back to the previous good checkpoint and train on from there
    assert main(train_args(workdir, fashion_mnist_dir, 2)) == 0
    out = capsys.readouterr().out
    assert f"checkpoints/{latest} is unreadable or corrupted" in out
    assert "resuming from the checkpoint at step" in out
    assert f"step {latest}" not in out.split("resuming from the checkpoint at")[1].splitlines()[0]
    assert_same_params(params_of(workdir), good)  # retrained the lost step to the same result


def test_disk_full_while_saving_keeps_earlier_checkpoints(fashion_mnist_dir, tmp_path,
                                                          capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    # ~190 MB per checkpoint of params: 300 MB holds one and fills up during the second.
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        workdir = mount / "w"
        code = main(train_args(workdir, fashion_mnist_dir, 2, "--checkpoint-every-steps", "1"))
        err = capsys.readouterr().err
        assert code == 1
        assert "No space left on device" in err, err  # the OS's ENOSPC: it really filled
        assert "Traceback" not in err
        assert steps_saved(workdir)  # the earlier checkpoint is still there and readable
        params_of(workdir)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


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


def test_convert_rejects_a_file_that_is_not_a_state_dict(tmp_path, capsys):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(os.urandom(1000))
    assert main(["convert", "--from-torch", str(bogus), "--workdir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "is not a PyTorch state dict" in err and "Traceback" not in err


def test_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    import torch

    from alexnet_jax.d2l_reference import d2l_alexnet

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
