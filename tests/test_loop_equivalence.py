"""Our training loop reports what d2l's train_ch6 reports, point for point.

`compare-torch` runs a replica of d2l's train_ch6 (alexnet_jax/d2l/reference.py: its
Accumulator, its per-epoch evaluation, the points its Animator plots) and our `train` from the
same initial weights on the same batches. In float64 with dropout off, over two epochs whose
last batch is partial, every point and the final parameters must agree to 1e-10 relative.
"""

from __future__ import annotations

import jax
import pytest
import torch
from conftest import rel_err, run_record

from alexnet_jax.cli import main
from alexnet_jax.d2l.compare import curve_values
from alexnet_jax.d2l.torch_weights import params_to_torch
from alexnet_jax.training.saved_state import load_state

pytestmark = pytest.mark.equivalence  # `pytest -m equivalence` runs these alone

BOUND = 1e-10


@pytest.fixture
def x64_restored():
    """compare-torch --dtype float64 turns on JAX's 64-bit mode; the other tests run without."""
    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)


def compare_args(data, out, *settings) -> list[str]:
    return ["compare-torch", "--source", "idx", "--manual-dir", str(data), "--out", str(out),
            *settings]


@pytest.mark.slow
def test_train_loop_equals_d2l_train_ch6(fashion_mnist_dir, tmp_path, x64_restored, report):
    out = tmp_path / "compare"
    # 11 images at batch 2: 6 batches an epoch, the last of 1 image (d2l keeps it).
    assert main(compare_args(fashion_mnist_dir, out, "--dtype", "float64", "--dropout", "0",
                             "--epochs", "2", "--limit-train", "11", "--limit-test", "30",
                             "--batch-size", "2")) == 0
    ours = curve_values(run_record(out / "seed0" / "jax"))
    theirs = curve_values(run_record(out / "seed0" / "torch"))
    # d2l plots after every step here (num_batches // 5 == 1) and test acc after each epoch.
    assert sorted(ours) == sorted(theirs) == pytest.approx([i / 6 for i in range(1, 13)])
    assert all(theirs[e].keys() == ours[e].keys() for e in theirs)
    assert [e for e in ours if "test_acc" in ours[e]] == [1.0, 2.0]
    for curve in ("train_loss", "train_acc", "test_acc"):
        values = [(ours[e][curve], theirs[e][curve]) for e in theirs if curve in theirs[e]]
        assert all(b > 0 for _, b in values), f"{curve}: compare on non-zero values"
        worst = max(abs(a - b) / abs(b) for a, b in values)
        report(f"train loop float64 vs d2l train_ch6: {curve}, worst of {len(values)} points",
               worst, BOUND)
        assert worst <= BOUND

    state, step = load_state(out / "seed0" / "jax")
    assert step == 12
    final = params_to_torch(jax.device_get(state.params), as_tensors=False)
    d2l_final = torch.load(out / "seed0" / "torch" / "final_state_dict.pt")
    errors = {k: rel_err(final[k], v.numpy()) for k, v in d2l_final.items()}
    worst = max(errors, key=errors.get)
    report(f"train loop float64: final parameters, worst ({worst})", errors[worst], BOUND)
    assert errors[worst] <= BOUND
    assert (out / "seed0" / "compare.png").stat().st_size > 10_000
    assert "| 0 |" in (out / "summary.md").read_text()


def test_compare_refuses_epochs_too_short_for_d2l(fashion_mnist_dir, tmp_path, capsys):
    out = tmp_path / "short"
    assert main(compare_args(fashion_mnist_dir, out, "--limit-train", "8",
                             "--batch-size", "2")) == 1
    err = capsys.readouterr().err
    assert "needs at least 5 batches per epoch" in err and "8 train images at batch 2 make 4" in err
    assert not out.exists()
