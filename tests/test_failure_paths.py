"""Failures that must say what they are, in one line, and lose nothing: a checkpoint is moved
aside only on proof; its digest lives in it; a batch that cannot fit is refused before the
work dir is touched; a write that fails names its path; every manager is closed."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp
import pytest
from conftest import copy_run, corrupt_array_data, steps_saved, train_args

from alexnet_jax.cli import main
from alexnet_jax.runtime import memory
from alexnet_jax.training import checkpoints
from alexnet_jax.training.saved_state import load_state


def out_of_memory(*args, **kwargs):
    raise MemoryError()


@pytest.fixture(scope="module")
def flaky_reads(tmp_path_factory) -> Path:
    """An LD_PRELOAD shim (tests/flaky_reads.c): the first FLAKY_FAILS reads of files whose
    path holds FLAKY_PATH fail with EIO, as on a flaky disk or network file system."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the flaky-read shim")
    lib = tmp_path_factory.mktemp("flaky") / "flaky_reads.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib),
                    str(Path(__file__).with_name("flaky_reads.c")), "-ldl"], check=True)
    return lib


def train_with_flaky_reads(flaky_reads, workdir, data, path: str, fails: int):
    env = {**os.environ, "FLAKY_PATH": path, "FLAKY_FAILS": str(fails),
                  "LD_PRELOAD": " ".join(filter(None, (str(flaky_reads),
                                                os.environ.get("LD_PRELOAD"))))}
    return subprocess.run([sys.executable, "-m", "alexnet_jax.cli",
                           *train_args(workdir, data, 2)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_the_reads_orphaned_by_a_failed_read_print_nothing(caplog):
    """orbax reads a checkpoint's arrays concurrently; after one read fails (reported in one
    line by the restore), the others' futures can end in errors nobody awaits, which asyncio
    logs when it collects them, at any moment (seen in a two-process run's output). Once a
    restore has run, those read errors print nothing; any other unawaited error still does."""
    import asyncio
    import gc

    checkpoints._quiet_orphaned_reads()
    loop = asyncio.new_event_loop()

    def unawaited(exc):
        future = loop.create_future()
        future.set_exception(exc)
        del future
        gc.collect()

    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            unawaited(ValueError('OUT_OF_RANGE: Error reading "params.fc3.kernel/1.0" in OCDBT '
                                 'database at local file "/run/checkpoints/4/default/"'))
            assert caplog.records == []
            unawaited(ValueError("a bug of ours"))
    finally:
        loop.close()
    assert [r.getMessage().split("\n")[0] for r in caplog.records] == [
        "Future exception was never retrieved"]
    assert "a bug of ours" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("what, fails", [("default/ocdbt.process_0", 2), ("default/_METADATA", 1),
                                         ("default/ocdbt.process_0", 10**6)],
                         ids=["arrays-twice", "metadata-once", "arrays-always"])
def test_a_read_error_is_read_again_and_only_one_that_persists_stops(
        what, fails, flaky_reads, reference_dir, fashion_mnist_dir, tmp_path):
    """The first reads of the newest checkpoint fail with EIO (a real failing read, through
    tensorstore): read again, it resumes from that checkpoint with no traceback, nothing
    moved. Failing every time: one line naming it and the error, exit 1, nothing moved."""
    workdir = copy_run(reference_dir, tmp_path / "w")
    saved = steps_saved(workdir)
    done = train_with_flaky_reads(flaky_reads, workdir, fashion_mnist_dir,
                                  f"checkpoints/{saved[-1]}/{what}", fails)
    assert steps_saved(workdir) == saved and not (workdir / "corrupted_checkpoints").exists()
    if fails < 10:
        assert done.returncode == 0, done.stderr
        assert f"this run is finished ({saved[-1]} of {saved[-1]} steps)" in done.stdout
        assert "Traceback" not in done.stderr and "warning" not in done.stdout
        return
    assert done.returncode == 1
    err = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: All log")]
    assert len(err) == 1, done.stderr
    assert f"checkpoint {workdir.absolute()}/checkpoints/{saved[-1]} cannot be read now" in err[0]
    assert "Input/output error" in err[0] and "nothing was moved" in err[0]


@pytest.mark.slow
def test_metadata_that_reads_as_none_once_is_read_again(reference_dir, tmp_path, monkeypatch):
    """orbax answers None for a state's metadata it cannot find: with the file there, that is
    a failed read (read again), not a missing file (judged at once and set aside)."""
    monkeypatch.setattr(checkpoints, "RETRY_WAITS_SECONDS", (0.0, 0.0))
    workdir = copy_run(reference_dir, tmp_path / "w")
    saved = steps_saved(workdir)
    real, calls = ocp.CheckpointManager.item_metadata, []

    def none_once(self, step):
        calls.append(step)
        return {checkpoints.STATE: None} if len(calls) == 1 else real(self, step)

    monkeypatch.setattr(ocp.CheckpointManager, "item_metadata", none_once)
    assert load_state(workdir)[1] == saved[-1] and calls[:2] == [saved[-1]] * 2
    assert steps_saved(workdir) == saved and not (workdir / "corrupted_checkpoints").exists()


@pytest.mark.slow
def test_running_out_of_memory_in_a_read_moves_nothing(reference_dir, fashion_mnist_dir,
                                                       tmp_path, capsys, monkeypatch):
    """Memory runs out in every read: one line naming the newest checkpoint and the error,
    exit 1, nothing moved; once memory is back the same checkpoint restores."""
    monkeypatch.setattr(checkpoints, "RETRY_WAITS_SECONDS", (0.0, 0.0))
    workdir = copy_run(reference_dir, tmp_path / "w")
    saved = steps_saved(workdir)
    monkeypatch.setattr(ocp.CheckpointManager, "restore", out_of_memory)
    capsys.readouterr()
    assert main(train_args(workdir, fashion_mnist_dir, 2)) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert f"checkpoint {workdir.absolute()}/checkpoints/{saved[-1]} cannot be read now" in err
    assert "MemoryError" in err and "nothing was moved" in err and "--restart" not in err
    assert steps_saved(workdir) == saved and not (workdir / "corrupted_checkpoints").exists()
    monkeypatch.undo()
    assert load_state(workdir)[1] == saved[-1]


@pytest.mark.slow
def test_each_file_of_a_checkpoint_deleted_restores_it_whole_or_sets_it_aside(
        reference_dir, tmp_path, monkeypatch):
    """Each file of the newest checkpoint deleted in turn, then its largest file truncated
    or with flipped bytes: train's restore either reads it whole (its arrays' SHA-256 is the
    one recorded at save) or proves it damaged, moves it aside, says so in one line and takes
    the one before; never "does not fit", never a stop.
    (One such run trained on to the straight run's parameters: test_faults.py's
    test_corrupted_checkpoint_is_detected.)"""
    from alexnet_jax.model.build import build_model
    from alexnet_jax.training.steps import create_train_state, empty_metrics

    monkeypatch.setattr(checkpoints, "RETRY_WAITS_SECONDS", (0.0, 0.0))
    state = jax.eval_shape(lambda: create_train_state(build_model(), 0, 0.01))
    target = checkpoints.checkpoint_tree(state, empty_metrics(state), checkpoints.empty_totals())
    newest, previous = steps_saved(reference_dir[0])[-1], steps_saved(reference_dir[0])[-2]
    source = reference_dir[0] / "checkpoints" / str(newest)
    good = json.loads((source / "digest" / "metadata").read_text())["sha256"]
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert len(files) >= 10, files
    outcomes = {}
    for rel in [*files, "truncate", "flip"]:
        workdir = tmp_path / str(len(outcomes))
        if rel in ("truncate", "flip"):  # rewrites a file: a copy of its own
            copy_run(reference_dir, workdir)
            corrupt_array_data(workdir / "checkpoints" / str(newest), rel)
        else:  # a deletion leaves the reference's files alone: hard links, not copies
            shutil.copytree(reference_dir[0], workdir, copy_function=os.link)
            (workdir / "checkpoints" / str(newest) / rel).unlink()
        lines = []
        with checkpoints.manager(workdir) as mngr:
            found, restored = checkpoints.restore_latest(mngr, target, quarantine=True,
                                                         out=lines.append)
        aside = workdir / "corrupted_checkpoints" / str(newest)
        if found == newest:
            assert checkpoints.tree_digest(restored) == good and not lines, rel
            assert not aside.exists(), rel
            outcomes[str(rel)] = "whole"
        else:
            assert found == previous and aside.is_dir(), (rel, found)
            assert len(lines) == 1 and f"checkpoints/{newest} is corrupted" in lines[0], lines
            outcomes[str(rel)] = "set aside"
        shutil.rmtree(workdir)
    assert outcomes["default/_METADATA"] == outcomes["digest/metadata"] == "set aside", outcomes
    assert outcomes["truncate"] == outcomes["flip"] == "set aside", outcomes
    assert "whole" in outcomes.values(), outcomes


@pytest.mark.slow
def test_the_digest_is_part_of_its_checkpoint_and_old_ones_still_verify(reference_dir,
                                                                         fashion_mnist_dir,
                                                                         tmp_path, capsys):
    """A checkpoint holds its SHA-256 (checkpoints/STEP/digest/): a wrong one is found. A
    checkpoint of an earlier version (the state alone, its digest in checkpoint_digests/)
    still restores, and a wrong digest there is found too."""
    from alexnet_jax.training.checkpoints import checkpoint_tree, empty_totals
    from alexnet_jax.training.steps import empty_metrics

    workdir = copy_run(reference_dir, tmp_path / "w")
    newest = steps_saved(workdir)[-1]
    assert not (workdir / "checkpoint_digests").exists()
    record = workdir / "checkpoints" / str(newest) / "digest" / "metadata"
    good = json.loads(record.read_text())["sha256"]
    evaluate = ["evaluate", "--workdir", str(workdir), "--manual-dir", str(fashion_mnist_dir),
                "--source", "idx", "--limit-test", "4"]
    record.write_text(json.dumps({"sha256": "0" * 64}))
    capsys.readouterr()
    assert main(evaluate) == 0
    out = capsys.readouterr().out
    assert f"checkpoints/{newest} is corrupted: its arrays do not match the SHA-256" in out

    # The same checkpoint as an earlier version wrote it.
    state, _ = load_state(workdir, step=steps_saved(workdir)[0])
    tree = checkpoint_tree(state, empty_metrics(state), empty_totals())
    legacy = tmp_path / "legacy"
    with ocp.CheckpointManager(legacy / "checkpoints") as mngr:
        mngr.save(newest, args=ocp.args.StandardSave(tree))
    (workdir / "checkpoints" / str(newest)).rename(tmp_path / "new")
    (legacy / "checkpoints" / str(newest)).rename(workdir / "checkpoints" / str(newest))
    digests = workdir / "checkpoint_digests"
    digests.mkdir()
    (digests / f"{newest}.sha256").write_text(checkpoints.tree_digest(tree) + "\n")
    capsys.readouterr()
    assert main(evaluate) == 0
    assert f"checkpoint step {newest}:" in capsys.readouterr().out
    (digests / f"{newest}.sha256").write_text(good + "\n")  # another state's digest
    assert main(evaluate) == 0
    out = capsys.readouterr().out
    assert f"checkpoints/{newest} is corrupted: its arrays do not match the SHA-256" in out
    # train's restore moves it aside with its digest, and takes the one before
    with checkpoints.manager(workdir) as mngr:
        found, _ = checkpoints.restore_latest(mngr, tree, quarantine=True)
    assert found == steps_saved(workdir)[-1] < newest
    aside = workdir / "corrupted_checkpoints" / str(newest)
    assert (aside / "checkpoint_digests.sha256").read_text().strip() == good
    assert not (digests / f"{newest}.sha256").exists()


@pytest.mark.slow
def test_a_batch_that_cannot_fit_is_refused_before_anything_is_written(fashion_mnist_dir,
                                                                       tmp_path, capsys,
                                                                       monkeypatch):
    """XLA's memory analysis of the compiled step against what the host has: with 64 MiB
    available, a batch of 4 (about 0.3 GiB) is refused in one line that names a batch that
    fits, before the work dir exists."""
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 64 * 2**20)
    assert main(train_args(tmp_path / "w", fashion_mnist_dir, 1)) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert "--batch-size 4 needs about" in err and "64 MiB are available" in err, err
    assert "no batch fits" in err or "the largest batch that fits is about" in err
    assert not (tmp_path / "w").exists()


def test_memory_figures_and_the_largest_batch(tmp_path):
    """The host's figure is the smaller of MemAvailable and a cgroup's room; the largest
    batch scales the batch by what is available over what it needs, in device multiples."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25165824 kB\nMemAvailable:   20971520 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert memory.host_available_bytes(meminfo, cgroup) == 20 * 2**30
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text(str(2**30))
    assert memory.host_available_bytes(meminfo, cgroup) == 20 * 2**30  # no limit
    (cgroup / "memory.max").write_text(str(8 * 2**30))
    assert memory.host_available_bytes(meminfo, cgroup) == 7 * 2**30
    line = memory.too_large("--batch-size", 4096, 30 * 2**30, 22 * 2**30, multiple=8)
    assert line == ("--batch-size 4096 needs about 30.0 GiB, 22.0 GiB are available; the "
                    "largest batch that fits is about 3000")  # 4096 * 22 / 30 = 3003.7
    assert "no batch fits" in memory.too_large("--batch-size", 4, 2**30, 2**20, multiple=8)


@pytest.mark.slow
def test_out_of_memory_in_a_step_is_the_same_line(reference_dir, fashion_mnist_dir,
                                                  tmp_path, capsys, monkeypatch):
    """XLA's RESOURCE_EXHAUSTED raised by a step (memory taken by another process since the
    check) gives the memory line, and the checkpoints are kept."""
    import jax

    from alexnet_jax.training import loop

    real_compile = loop.compile_steps

    def compile_then_fail(*args):
        step, seconds, compiled = real_compile(*args)

        def fails(*step_args):
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory allocating 31322653504 bytes.")

        return fails, seconds, compiled

    workdir = copy_run(reference_dir, tmp_path / "w")
    saved = steps_saved(workdir)
    monkeypatch.setattr(loop, "compile_steps", compile_then_fail)
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 2**20)
    assert main(train_args(workdir, fashion_mnist_dir, 3)) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--batch-size 4 needs about" in err, err
    assert "1 MiB are available" in err and steps_saved(workdir) == saved


@pytest.mark.slow
def test_a_benchmark_row_that_cannot_fit_is_skipped_with_its_reason(monkeypatch):
    from alexnet_jax.commands.benchmark import bench_row
    from alexnet_jax.runtime.parallel import make_mesh

    monkeypatch.setattr(memory, "host_available_bytes", lambda: 2**20)
    row = bench_row("jax-f32-default", 8, 1, 0, make_mesh(), None, None, 1.0, "cpu")
    assert row["error"].startswith("OutOfMemory: jax-f32-default at batch 8 needs about"), row


@pytest.mark.slow
def test_a_failed_start_leaves_no_manager_open(reference_dir, fashion_mnist_dir, tmp_path,
                                               capsys, monkeypatch):
    """config.json cannot be written (a full disk) after the checkpoint manager opened: one
    line with the path and the reason, every manager closed, the checkpoints as they were."""
    from alexnet_jax.training import run_dir

    opened, closed = [], []
    real_init, real_close = ocp.CheckpointManager.__init__, ocp.CheckpointManager.close
    monkeypatch.setattr(ocp.CheckpointManager, "__init__",
                        lambda self, *a, **k: (opened.append(self), real_init(self, *a, **k))[1])
    monkeypatch.setattr(ocp.CheckpointManager, "close",
                        lambda self: (closed.append(self), real_close(self))[1])
    monkeypatch.setattr(run_dir, "write_atomic", lambda path, text: (_ for _ in ()).throw(
        run_dir.cannot_write(path, OSError(errno.ENOSPC, "No space left on device"))))
    workdir = copy_run(reference_dir, tmp_path / "w")
    saved = steps_saved(workdir)
    capsys.readouterr()
    assert main(train_args(workdir, fashion_mnist_dir, 3)) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"alexnet-jax: error: cannot write {workdir / 'config.json'}: No "
                           "space left on device. Nothing saved before was lost: free space or "
                           "fix the folder, then run the same command again")
    assert opened and all(m in closed for m in opened)
    assert steps_saved(workdir) == saved


def test_a_record_that_cannot_be_written_names_its_path(tmp_path):
    """A full disk (/dev/full) under metrics.jsonl and predict's CSV: the path and ENOSPC."""
    from alexnet_jax.commands.evaluate import write_csv
    from alexnet_jax.training.metrics_log import MetricsLog
    from alexnet_jax.training.run_dir import RunError

    log = MetricsLog(tmp_path / "metrics.jsonl", 0)
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    with pytest.raises(RunError, match=f"cannot write {tmp_path}/metrics.jsonl: No space left"):
        log.add({"step": 1})
    (tmp_path / "p.csv").write_text("kept\n")
    (tmp_path / "p.csv.tmp").symlink_to("/dev/full")
    with pytest.raises(RunError, match=f"cannot write {tmp_path}/p.csv: No space left"):
        write_csv(tmp_path / "p.csv", [0], [1])
    assert (tmp_path / "p.csv").read_text() == "kept\n"


@pytest.mark.parametrize("line", ["[]", "{}", '{"step": "3"}', "7"])
def test_a_record_that_is_no_point_is_named_with_its_line(line, tmp_path):
    from alexnet_jax.training.metrics_log import read_points
    from alexnet_jax.training.run_dir import RunError

    path = tmp_path / "metrics.jsonl"
    path.write_text(f'{{"step": 1}}\n{line}\n{{"step": 3}}\n')
    with pytest.raises(RunError, match=re.escape(f"metrics.jsonl, line 2, is damaged: {line!r}")):
        read_points(path)


def test_a_test_that_hangs_fails_at_the_time_limit(tmp_path):
    """The project's settings give every test a time limit (pytest-timeout): a test that
    hangs fails, it does not hold CI."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parent.parent
    limit = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]["timeout"]
    assert 60 <= limit <= 900
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hang():\n    "
                                           "time.sleep(60)\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-c", str(root / "pyproject.toml"), "--rootdir", str(tmp_path),
                           "-o", "timeout=1", str(tmp_path / "test_hang.py")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Timeout" in done.stdout, done.stdout[-2000:]
