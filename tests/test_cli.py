"""The command answers help and usage errors without loading JAX, and its defaults are the
run's settings (alexnet_jax/config.py), not a second copy."""

import os
import subprocess
import sys

import pytest

from alexnet_jax.cli_parser import build_parser
from alexnet_jax.config import D2L, TrainConfig

# Runs the console script's entry on a command line, then reports its exit code and whether
# JAX, Flax or optax were imported on the way.
CHILD = """
import sys
from alexnet_jax.cli import entry
sys.argv = ['alexnet-jax', *sys.argv[1:]]
try:
    code = entry()
except SystemExit as exit:
    code = exit.code
import os
heavy = sorted(m for m in ('jax', 'flax', 'optax', 'tensorflow') if m in sys.modules)
print('RESULT', code, heavy)
print('MALLOC', os.environ.get('ALEXNET_JAX_MALLOC'))
"""


def run_entry(*argv: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("ALEXNET_JAX_MALLOC", "LD_PRELOAD")}
    return subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                          timeout=120, env={**base, **env})


def result(proc: subprocess.CompletedProcess) -> str:
    return next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))


def test_help_and_a_bad_flag_import_no_jax():
    proc = run_entry("train", "--epochs", "x")
    assert result(proc) == "RESULT 2 []", proc.stdout + proc.stderr
    assert "--epochs: expected a positive integer, got 'x'" in proc.stderr
    proc = run_entry("--help")
    assert result(proc) == "RESULT 0 []", proc.stdout + proc.stderr
    assert "compare-torch" in proc.stdout
    proc = run_entry("train", "--help")
    assert result(proc) == "RESULT 0 []", proc.stdout + proc.stderr


def test_the_supervising_parent_of_a_multi_process_train_imports_no_jax():
    """The parent only reads the multi-process flags and starts the child that trains."""
    parent = """
import sys
from alexnet_jax import cli
from alexnet_jax.runtime import supervise
supervise.train_in_child = lambda argv, who: print('CHILD', who) or 0
code = cli.main(['train', '--coordinator', 'localhost:1', '--num-processes', '2',
                 '--process-id', '1'])
print('RESULT', code, sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                          timeout=120)
    assert "CHILD process 1 of 2" in proc.stdout, proc.stdout + proc.stderr
    assert "RESULT 0 []" in proc.stdout, proc.stdout + proc.stderr


def test_a_command_that_runs_imports_jax():
    """The check above can fail: `summary` (which does import the model) reports JAX. It
    runs no steps, so it keeps the allocator it started with (no re-execution)."""
    proc = run_entry("summary")
    assert "total parameters: 46,764,746" in proc.stdout
    assert result(proc) == "RESULT 0 ['flax', 'jax']", proc.stdout
    assert "MALLOC None" in proc.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="the allocator is chosen on Linux only")
def test_only_a_command_that_runs_steps_on_a_cpu_re_executes_for_the_allocator(tmp_path):
    """`evaluate` runs steps: on the CPU it re-executes once under the kept-memory malloc
    (and then fails on the missing work dir, one line); told it runs on a GPU, it does not."""
    missing = str(tmp_path / "none")
    on_cpu = run_entry("evaluate", "--workdir", missing, JAX_PLATFORMS="cpu")
    assert result(on_cpu).startswith("RESULT 1 "), on_cpu.stdout + on_cpu.stderr
    assert on_cpu.stdout.count("RESULT") == 1  # the first start re-executed, it did not return
    assert "MALLOC tcmalloc" in on_cpu.stdout or "MALLOC glibc-kept" in on_cpu.stdout
    assert "does not exist" in on_cpu.stderr
    on_gpu = run_entry("evaluate", "--workdir", missing, JAX_PLATFORMS="cuda")
    assert "MALLOC None" in on_gpu.stdout, on_gpu.stdout + on_gpu.stderr


def test_train_defaults_are_the_configs():
    args = build_parser().parse_args(["train"])
    assert TrainConfig.from_dict(vars(args)) == D2L
    assert (D2L.batch_size, D2L.lr, D2L.epochs, D2L.dropout) == (128, 0.01, 10, 0.5)  # d2l's


def test_train_flags_are_the_config_fields_both_ways():
    """Every setting has its flag and every flag is a setting, but for those named here:
    from_dict drops unknown keys, so a mistyped `dest` would otherwise pass unnoticed."""
    import dataclasses

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions} - {"help"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - dests == {"num_classes"}  # Fashion-MNIST's 10; convert records others
    assert dests - fields == {"restart", "coordinator", "num_processes", "process_id",
                              "distributed"}  # how to start, not what the run is


def test_the_quick_run_is_written_once():
    """The quick run's flags live in config.QUICK_RUN; --help and the README show them."""
    from pathlib import Path

    from alexnet_jax.config import QUICK_RUN

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f'make train ARGS="{QUICK_RUN}"' in readme
    assert f"alexnet-jax train {QUICK_RUN}" in readme
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    assert f"alexnet-jax train {QUICK_RUN}" in train.format_help()


def test_examples_in_help_keep_their_line_breaks():
    """A backslash at a line end inside the examples stays a visible continuation."""
    text = build_parser()._subparsers._group_actions[0].choices["compare-torch"].format_help()
    lines = [line for line in text.splitlines() if "--dtype float64 --dropout 0" in line]
    assert lines and lines[0].rstrip().endswith("\\"), text
