"""A train step's random draws: dropout, and `train --augment`'s transform and draws, their
determinism and resume, and that the augmentation leaves runs without it and the test set
alone (its independence of the devices: tests/test_parallel.py)."""

from __future__ import annotations

import json
import signal
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    assert_same_run,
    eval_logits,
    finished,
    run_record,
    sigterm_after,
    train_args,
)

from alexnet_jax.cli import main
from alexnet_jax.commands.show_batch import batch_seen_at
from alexnet_jax.data.augment import BRIGHTNESS_SD, MAX_SHIFT, apply, augment, draw
from alexnet_jax.data.preprocess import model_input
from alexnet_jax.model.alexnet import AlexNet, init_params
from alexnet_jax.training.saved_state import load_state
from alexnet_jax.training.steps import run_rng, step_input, step_keys


def reference(image, dy, dx, flip, scale):
    """The augmentation of one (H, W) image by loops: mirror, shift with black, scale."""
    image = image[:, ::-1] if flip else image
    out = np.zeros_like(image)
    h, w = image.shape
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[i, j] = image[i - dy, j - dx]
    return out * np.float32(scale)


def test_apply_is_the_exact_shift_flip_and_scale():
    """Random pixels, the largest shifts both ways, both flips: equal to the loop reference
    bit for bit (each output pixel is one input pixel times the scale)."""
    x = np.random.default_rng(0).random((6, 40, 40, 1), np.float32)
    dy, dx = np.array([0, MAX_SHIFT, -MAX_SHIFT, 3, -7, 5]), np.array([0, -16, 16, 0, 2, -9])
    flip = np.array([False, True, False, True, False, True])
    scale = np.array([1.0, 1.1, 0.9, 1.0, 1.23, 0.8], np.float32)
    out = np.asarray(jax.jit(apply)(x, dy, dx, flip, scale))
    for b in range(6):
        np.testing.assert_array_equal(out[b, ..., 0],
                                      reference(x[b, ..., 0], dy[b], dx[b], flip[b], scale[b]))


def test_draws_flip_half_spread_shifts_and_scale_as_the_paper(report):
    """50,000 draws: flips near one half, every shift from -16 to 16 about equally often on
    both axes, brightness scale 1 + N(0, 0.1); a key gives the same draws again."""
    n = 50_000
    draw_jit = jax.jit(draw, static_argnums=1)
    dy, dx, flip, scale = (np.asarray(a) for a in draw_jit(jax.random.key(7), n))
    assert abs(flip.mean() - 0.5) < 4 * np.sqrt(0.25 / n)
    expected = n / (2 * MAX_SHIFT + 1)
    for axis, shifts in (("row", dy), ("column", dx)):
        counts = np.bincount(shifts + MAX_SHIFT, minlength=2 * MAX_SHIFT + 1)
        assert len(counts) == 2 * MAX_SHIFT + 1  # nothing outside -16..16
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        report(f"augment: {axis} shifts' chi-square vs uniform, 32 degrees of freedom", chi2,
               70.0)
        assert chi2 < 70.0  # p about 2e-4 for a uniform draw
    assert np.corrcoef(dy, dx)[0, 1] ** 2 < 1e-3
    assert abs(scale.mean() - 1.0) < 4 * BRIGHTNESS_SD / np.sqrt(n)
    assert abs(scale.std() / BRIGHTNESS_SD - 1.0) < 0.02
    again = draw_jit(jax.random.key(7), n)
    np.testing.assert_array_equal(np.asarray(again[3]), scale)


def test_each_step_draws_its_own_augmentation():
    """The augmentation key derives from the step's key: the same step draws the same
    transforms (as a resumed run must), the next step others (a fixed key would repeat
    them every step)."""
    rng = run_rng(0)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 28, 28), np.uint8))
    first, again, second = (np.asarray(step_input(rng, step, images, True)[0])
                            for step in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)


def test_train_step_input_and_show_batch_agree(test_split):
    """The train step's input with augmentation is show-batch's picture; without, d2l's
    preprocessing alone; the two keys of a step differ."""
    images, rng = test_split.images[:8], run_rng(3)
    # Compiled, as in the step: 1 + 0.1 * N(0, 1) compiled may round once (a fused multiply-
    # add) where op-by-op it rounds twice.
    step = jax.jit(step_input, static_argnums=3)
    plain = np.asarray(jax.jit(model_input)(jnp.asarray(images)))[..., 0]
    x, _ = step(rng, 5, jnp.asarray(images), False)
    np.testing.assert_array_equal(np.asarray(x)[..., 0], plain)
    x, _ = step(rng, 5, jnp.asarray(images), True)
    shown, drawn = batch_seen_at(rng, 5, images, augment=True)
    np.testing.assert_array_equal(np.asarray(x)[..., 0], shown)
    expected = jax.jit(lambda k, i: augment(k, model_input(i)))(step_keys(rng, 5)[1], images)
    np.testing.assert_array_equal(shown, np.asarray(expected)[..., 0])
    assert not np.array_equal(shown, plain) and len(drawn) == 4
    dropout, aug = step_keys(rng, 5)
    assert not np.array_equal(jax.random.key_data(dropout), jax.random.key_data(aug))


def test_show_batch_writes_the_batch(fashion_mnist_dir, tmp_path, capsys):
    out = tmp_path / "batch.png"
    assert main(["show-batch", "--augment", "--num", "12", "--out", str(out), "--manual-dir",
                 str(fashion_mnist_dir), "--source", "idx", "--step", "470"]) == 0
    assert out.stat().st_size > 10_000
    line = capsys.readouterr().out
    assert "12 of the 128 images of step 470 (epoch 2, batch 2 of 469" in line
    assert "augmented as `train --augment` does" in line


@pytest.fixture(scope="module")
def augmented_dir(fashion_mnist_dir, tmp_path_factory):
    """The small 2-epoch run (6 steps of 4 images) with --augment, uninterrupted: its work dir
    and (params, metrics points, closing line)."""
    workdir = tmp_path_factory.mktemp("aug") / "w"
    return workdir, finished(workdir, fashion_mnist_dir, "--augment")


@pytest.fixture(scope="module")
def augmented_run(augmented_dir):
    return augmented_dir[1]


@pytest.mark.slow
def test_the_flag_changes_every_parameter_and_is_recorded(augmented_dir, reference_run):
    """With --augment every parameter ends unlike the run without it, and config.json says
    so. (That a seed gives one run: the stopped runs below end bit-exactly like this one.)"""
    workdir, augmented = augmented_dir
    differ = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b),
                                          augmented[0], reference_run[0]))
    assert all(differ)
    config = json.loads((workdir / "config.json").read_text())["settings"]
    assert config["augment"] is True


@pytest.mark.slow
def test_stopped_mid_run_resumes_bit_exactly(augmented_run, fashion_mnist_dir, tmp_path):
    """SIGTERM after the second epoch's first step (4), then the same command: the run that
    never stopped, bit for bit (its augmentation keys come from the saved state). An epoch's
    last step is stopped without --augment in tests/test_faults.py."""
    workdir = tmp_path / "w"
    with sigterm_after(4):
        assert main(train_args(workdir, fashion_mnist_dir, 2, "--augment")) == \
            128 + signal.SIGTERM
    assert_same_run(finished(workdir, fashion_mnist_dir, "--augment"), augmented_run)


@pytest.mark.slow
def test_test_images_are_never_augmented(augmented_dir, test_split):
    """The test loss and accuracy the augmented run recorded at its end are those of its final
    parameters on the plain test images (d2l's preprocessing only), computed here apart from
    the run's own evaluation."""
    workdir, _ = augmented_dir
    state, _ = load_state(workdir)
    images, labels = test_split.images[:4], test_split.labels[:4]  # the run's --limit-test 4
    logits = eval_logits(state.apply_fn, state.params, jnp.asarray(images), model_input)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels))
    recorded = run_record(workdir)[-1]
    assert recorded["test_acc"] == float(np.mean(np.argmax(logits, -1) == labels))
    assert abs(recorded["test_loss"] - float(losses.mean())) < 1e-6 * float(losses.mean())


@pytest.mark.slow
def test_resuming_with_another_augment_setting_is_refused(augmented_dir, fashion_mnist_dir,
                                                          capsys):
    """Without --augment on the augmented run's work dir: refused, and nothing written."""
    workdir, _ = augmented_dir
    before = (workdir / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(train_args(workdir, fashion_mnist_dir, 3)) == 1
    assert "augment=True in" in capsys.readouterr().err
    assert (workdir / "metrics.jsonl").read_text() == before


def test_dropout_keys_rate_and_scaling():
    """The same key, the same masks; another key, others; rate 0 is the eval pass."""
    model = AlexNet()
    params = init_params(model, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(14).random((1, 224, 224, 1), dtype=np.float32))

    @partial(jax.jit, static_argnames=("rate", "train"))  # one program, not op by op
    def forward(params, x, key, rate, train):
        return AlexNet(dropout_rate=rate).apply({"params": params}, x, train=train,
                                                rngs={"dropout": key})

    def run(key, rate=0.5, train=True):
        return forward(params, x, key, rate, train)

    a, b = run(jax.random.key(1)), run(jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(jax.random.key(2)))
    np.testing.assert_array_equal(run(jax.random.key(3), train=False),  # the eval pass
                                  run(jax.random.key(1), rate=0.0))


def test_each_train_step_drops_with_its_own_key_at_d2ls_rate(report):
    """Dropout as the train step runs it: fc1's and fc2's masks under the step's own key
    (`step_keys`): the same when a step is run again (a resumed run), fresh at the next step
    (a key reused would repeat them), kept at d2l's rate 0.5 and scaled by 1 / (1 - 0.5)."""
    model = AlexNet()
    params = init_params(model, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(32).random((32, 224, 224, 1), dtype=np.float32))
    rng = run_rng(0)

    @jax.jit  # one program, not op by op
    def intermediates(params, x, key):
        return model.apply({"params": params}, x, train=True, rngs={"dropout": key},
                           capture_intermediates=True, mutable=["intermediates"])[1]

    def masks(step):
        """Per dropout layer: (the ReLU's output, the dropout's) of the model at `step`."""
        key, _ = step_keys(rng, step)
        state = intermediates(params, x, key)
        got = state["intermediates"]
        return [(np.maximum(np.asarray(got[fc]["__call__"][0]), 0),
                 np.asarray(got[drop]["__call__"][0]))
                for fc, drop in (("fc1", "Dropout_0"), ("fc2", "Dropout_1"))]

    first, again, second = masks(0), masks(0), masks(1)
    for (relu, out), (_, out_again), (relu_next, out_next) in zip(first, again, second):
        np.testing.assert_array_equal(out, out_again)
        active = relu > 0
        kept = out[active] != 0
        keep = kept.mean()
        report("dropout: keep rate - 0.5 over a layer's active units", abs(keep - 0.5))
        assert abs(keep - 0.5) < 5 * np.sqrt(0.25 / active.sum())
        np.testing.assert_allclose(out[active][kept], 2 * relu[active][kept], rtol=1e-6)
        both = active & (relu_next > 0)
        same = ((out != 0) == (out_next != 0))[both].mean()
        assert 0.4 < same < 0.6, same  # independent masks agree about half the time
