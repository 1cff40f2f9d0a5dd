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
    one counted here apart from `evaluate` and its pipeline: argmax of the model's logits on
    d2l's preprocessing of the same 16 images, after the same step."""
    code = ("import sys; sys.modules['tensorflow'] = sys.modules['torch'] = None\n"
            + library_example())
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600,
                          env={**os.environ, "FASHION_MNIST_DIR": str(fashion_mnist_dir)})
    assert done.returncode == 0, done.stderr
    loss_line, acc_line = done.stdout.splitlines()
    assert 2.0 < float(loss_line.split()[-1]) < 2.6, loss_line  # ln 10 = 2.30
    acc = re.fullmatch(r"test acc (\d\.\d{3}) on 16 images", acc_line)
    assert acc, acc_line
    assert acc.group(1) == f"{accuracy_after_one_step(fashion_mnist_dir):.3f}", acc_line


def accuracy_after_one_step(data) -> float:
    """The example's run: one train step on the first 8 train images; then the fraction of
    the first 16 test images whose largest logit is their label."""
    import jax
    import numpy as np

    from alexnet_jax import (
        build_model,
        create_train_state,
        empty_metrics,
        load_split,
        model_input,
        train_step,
    )

    train = load_split("train", source="idx", manual_dir=str(data)).head(8)
    test = load_split("test", source="idx", manual_dir=str(data)).head(16)
    model = build_model()
    state = create_train_state(model, seed=0, lr=0.01)
    state, _ = jax.jit(train_step)(state, train.images, train.labels, empty_metrics(state))
    logits = model.apply({"params": state.params}, model_input(test.images), train=False)
    return float(np.mean(np.argmax(logits, -1) == test.labels))
