"""The README's "Use it as a library" example, run exactly as written there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import alexnet_jax

README = Path(__file__).resolve().parent.parent / "README.md"


def library_example() -> str:
    text = README.read_text()
    section = text[text.index("## Use it as a library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_package_exports_what_the_example_and_a_harness_need():
    for name in ("AlexNet", "init_params", "create_train_state", "train_step", "eval_step",
                 "load_split", "model_input", "params_from_torch", "params_to_torch"):
        assert name in alexnet_jax.__all__ and hasattr(alexnet_jax, name), name


def test_readme_library_example_runs(fashion_mnist_dir, tmp_path):
    """In a fresh interpreter, where tensorflow and torch cannot be imported: the example
    needs neither. Its train loss is near ln 10 at d2l's init, and its test accuracy is the
    one counted after it apart from `evaluate` and its pipeline (COUNT_APART)."""
    code = ("import sys; sys.modules['tensorflow'] = sys.modules['torch'] = None\n"
            + library_example() + COUNT_APART)
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600,
                          env={**os.environ, "FASHION_MNIST_DIR": str(fashion_mnist_dir)})
    assert done.returncode == 0, done.stderr
    loss_line, acc_line, apart = done.stdout.splitlines()
    assert 2.0 < float(loss_line.split()[-1]) < 2.6, loss_line  # ln 10 = 2.30
    acc = re.fullmatch(r"test acc (\d\.\d{3}) on 16 images", acc_line)
    assert acc, acc_line
    assert acc.group(1) == f"{float(apart):.3f}", (acc_line, apart)


# Appended to the example: its test accuracy counted apart from `evaluate` and its pipeline,
# as the fraction of its 16 test images whose largest logit is their label (one program).
COUNT_APART = """
import numpy as np
from alexnet_jax import model_input
forward = jax.jit(lambda p, x: model.apply({"params": p}, model_input(x), train=False))
logits = forward(state.params, test.images)
print(float(np.mean(np.argmax(logits, -1) == test.labels)))
"""


def test_the_tests_matmul_precision_reaches_the_processes_they_start():
    """conftest.py sets JAX's matmul precision for the suite in the environment, so a
    training process a test starts computes as the test does (on a GPU: no TF32 on one side
    of a bit-for-bit comparison only)."""
    import jax

    code = "import jax; print(jax.config.jax_default_matmul_precision)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == jax.config.jax_default_matmul_precision == "highest"
