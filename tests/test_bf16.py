"""bfloat16 on the CPU: each layer errs as bf16's roundings allow, whatever this CPU has."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import d2l_images, rel_err

from alexnet_jax.runtime.cpu import bf16_units


def test_bf16_units_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    assert bf16_units(info) == ("avx512_bf16",)
    info.write_text("flags\t\t: fpu avx2 amx_bf16 avx512_bf16\n")
    assert bf16_units(info) == ("amx_bf16", "avx512_bf16")
    assert bf16_units(tmp_path / "missing") == ()


def test_train_says_what_bfloat16_gives_on_this_cpu():
    from alexnet_jax.training.report import bf16_cpu_note, compiled_lines

    assert "no bf16 units" in bf16_cpu_note(()) and "float32's speed" in bf16_cpu_note(())
    assert "bf16 units: amx_bf16, avx512_bf16" in bf16_cpu_note(("amx_bf16", "avx512_bf16"))
    assert len(compiled_lines(1.0, "cpu", "bfloat16")) == len(compiled_lines(1.0, "cpu")) + 1
    assert compiled_lines(1.0, "gpu", "bfloat16") == compiled_lines(1.0, "gpu")


# The bound, argued before measuring: bf16 keeps 8 significant bits, so rounding a value to
# it errs by at most u = 2^-8 relative, and over many values (round to nearest, errors
# independent from value to value) by at most u / sqrt(3) in norm (the RMS of a uniform error
# on [-u, u]; it is less on the real mantissas). The CPU's bf16 layer rounds three things
# once each: its input, its output gradient and its output (the kernel stays float32, and
# float32 sums add nothing comparable). k independent roundings add in quadrature, so each of
# the output and the three gradients errs by at most sqrt(3) * u / sqrt(3) = u in norm, as
# long as the sums do not cancel, which ReLU activations and Xavier weights do little of.
# Measured (benchmarks/NOTES.md 38): 1.5e-3 to 3.0e-3, 0.4u to 0.77u; autocast's 1.8e-3 to
# 3.4e-3. A fourth rounding, or one coarser step, goes past it.
U = 2.0 ** -8
BOUND = U


def layer_cases(images: np.ndarray):
    """d2l's net in float64 on real images: each conv or linear layer with its real input."""
    import torch

    from alexnet_jax.d2l.reference import d2l_net

    net = d2l_net(seed=5, dtype=torch.float64).eval()
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float64))
    cases = []
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                cases.append((layer, x))
            x = layer(x)
    return cases


def torch_layer(layer, x, g, autocast: bool):
    """(y, dx, dw, db) of `layer` at x with output gradient g, in float64 or under
    autocast's bfloat16 (inputs given in float32, as an autocast step has them)."""
    import copy

    import torch

    if autocast:  # a float32 layer, as autocast finds it in a float32 model
        layer = copy.deepcopy(layer).float()
    x = x.clone().requires_grad_(True)
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.backward(g.to(y.dtype))
    return [t.detach().double().numpy() for t in (y, x.grad, layer.weight.grad,
                                                  layer.bias.grad)]


@partial(jax.jit, static_argnums=0)
def _value_and_grads(module, params, x, g):
    """One program, compiled as the train step compiles the layer (not op by op)."""
    y, vjp = jax.vjp(lambda p, x: module.apply({"params": p}, x), params, x)
    grads, dx = vjp(g.astype(y.dtype))  # a conv's float32 output takes bf16's gradient
    return y, grads, dx


def ours(layer, x, g):
    """(y, dx, dw, db) of our bf16 layer: input and output gradient rounded to bf16, the
    parameters float32, as in the bf16 train step (kernels/layers.py; a conv's output is
    rounded where the next layer takes it, after pool and ReLU)."""
    import torch

    from alexnet_jax.kernels.layers import Conv, Dense

    w = layer.weight.detach().float().numpy()
    b = layer.bias.detach().float().numpy()
    if isinstance(layer, torch.nn.Conv2d):
        module = Conv(w.shape[0], layer.kernel_size, layer.stride,
                      tuple((p, p) for p in layer.padding), dtype=jnp.bfloat16)
        params = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}
        xj, gj = (t.numpy().transpose(0, 2, 3, 1) for t in (x, g))
    else:
        module = Dense(w.shape[0], dtype=jnp.bfloat16)
        params = {"kernel": w.T, "bias": b}
        xj, gj = x.numpy(), g.numpy()
    xj, gj = jnp.asarray(xj, jnp.bfloat16), jnp.asarray(gj, jnp.bfloat16)
    y, grads, dx = _value_and_grads(module, params, xj, gj)
    to_torch = (lambda a: np.asarray(a, np.float64).transpose(0, 3, 1, 2)) \
        if xj.ndim == 4 else (lambda a: np.asarray(a, np.float64))
    dw = np.asarray(grads["kernel"], np.float64)
    dw = dw.transpose(3, 2, 0, 1) if dw.ndim == 4 else dw.T
    return [to_torch(y), to_torch(dx), dw, np.asarray(grads["bias"], np.float64)]


@pytest.mark.slow
@pytest.mark.torch
def test_each_bf16_layer_against_float64_beside_autocast(test_split, report):
    """Each layer's output and its three gradients on real activations (16 real images,
    Winograd's batch), against float64, within BOUND; PyTorch autocast's error on the same
    inputs is reported beside ours. On the CPU (pinned): these are the CPU's bf16 layers."""
    import torch

    images = d2l_images(test_split, 0, 16)
    rng = np.random.default_rng(7)
    worst = {}
    for i, (layer, x) in enumerate(layer_cases(images)):
        with torch.no_grad():
            out = layer(x)
        g = torch.from_numpy(rng.standard_normal(out.shape)) * out.abs().mean()
        exact = torch_layer(layer, x, g, autocast=False)
        theirs = torch_layer(layer, x.float(), g.float(), autocast=True)
        with jax.default_device(jax.devices("cpu")[0]):
            mine = ours(layer, x.float(), g.float())
        name = f"layer {i} ({type(layer).__name__}"
        for what, a, t, e in zip(("y", "dx", "dw", "db"), mine, theirs, exact):
            if what == "dx" and i == 0:
                continue  # the image's gradient: never used
            err, autocast_err = rel_err(a, e), rel_err(t, e)
            report(f"bf16 layer, {name} {what}) vs float64 (autocast {autocast_err:.2e})",
                   err, BOUND)
            worst[(i, what)] = err
    over = {k: v for k, v in worst.items() if v > BOUND}
    assert not over, over
