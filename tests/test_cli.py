"""The command answers help and usage errors without loading JAX, and its defaults are the
run's settings (alexnet_jax/config.py), not a second copy."""

import subprocess
import sys

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
heavy = sorted(m for m in ('jax', 'flax', 'optax', 'tensorflow') if m in sys.modules)
print('RESULT', code, heavy)
"""


def run_entry(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                          timeout=60)


def test_help_and_a_bad_flag_import_no_jax():
    proc = run_entry("train", "--epochs", "x")
    assert proc.stdout.strip().splitlines()[-1] == "RESULT 2 []", proc.stdout + proc.stderr
    assert "--epochs: expected a positive integer, got 'x'" in proc.stderr
    proc = run_entry("--help")
    assert proc.stdout.strip().splitlines()[-1] == "RESULT 0 []", proc.stdout + proc.stderr
    assert "compare-torch" in proc.stdout
    proc = run_entry("train", "--help")
    assert proc.stdout.strip().splitlines()[-1] == "RESULT 0 []", proc.stdout + proc.stderr


def test_a_command_that_runs_imports_jax():
    """The check above can fail: `summary` (which does import the model) reports JAX."""
    proc = run_entry("summary")
    assert "total parameters: 46,764,746" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "RESULT 0 ['flax', 'jax']", proc.stdout


def test_train_defaults_are_the_configs():
    args = build_parser().parse_args(["train"])
    assert TrainConfig.from_dict(vars(args)) == D2L
    assert (D2L.batch_size, D2L.lr, D2L.epochs, D2L.dropout) == (128, 0.01, 10, 0.5)  # d2l's


def test_examples_in_help_keep_their_line_breaks():
    """A backslash at a line end inside the examples stays a visible continuation."""
    text = build_parser()._subparsers._group_actions[0].choices["compare-torch"].format_help()
    lines = [line for line in text.splitlines() if "--dtype float64 --dropout 0" in line]
    assert lines and lines[0].rstrip().endswith("\\"), text
