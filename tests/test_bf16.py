"""bfloat16 on the CPU: the step's structure, whatever this machine's CPU has."""

from __future__ import annotations

import math
import re
from collections import Counter

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import d2l_images, rel_err

from alexnet_jax.model.build import build_model
from alexnet_jax.runtime.cpu import bf16_units
from alexnet_jax.runtime.parallel import make_mesh
from alexnet_jax.training.steps import create_train_state, empty_metrics, jit_steps

DOT = re.compile(r"stablehlo\.dot_general .*?: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> "
                 r"tensor<([^>]*)>")
LARGE = 65536  # elements: every activation and kernel of the net but fc3's and conv1's


def dtype_and_size(tensor: str) -> tuple[str, int]:
    *dims, dtype = tensor.split("x")
    return dtype, math.prod(int(d) for d in dims)


def step_dots(bf16_products: bool, batch: int = 32) -> tuple[str, Counter]:
    """The CPU train step's StableHLO, and its dots by (operand dtypes, result dtype, both
    operands large)."""
    state = jax.eval_shape(lambda: create_train_state(
        build_model("bfloat16", bf16_products=bf16_products), 0, 0.01))
    text = jit_steps(make_mesh()).train.lower(
        state, jax.ShapeDtypeStruct((batch, 224, 224, 1), jnp.float32),
        jax.ShapeDtypeStruct((batch,), jnp.int32), empty_metrics(state)).as_text()
    dots = Counter()
    for match in DOT.finditer(text):
        (a, na), (b, nb), (out, _) = (dtype_and_size(t) for t in match.groups())
        dots[(a, b, out, na >= LARGE and nb >= LARGE)] += 1
    return text, dots


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's step")
def test_the_step_for_a_cpu_with_bf16_units_is_bf16_dots():
    """No convolution; 23 dots on bf16 operands with float32 sums (conv1's forward and kernel
    gradient; conv2's forward, input and kernel gradients by patches; conv3-5's three
    Winograd products each; three per dense layer); no bf16 result and no float32 dot
    between two large operands (the Winograd transforms' dots have a small constant one)."""
    text, dots = step_dots(bf16_products=True)
    assert "stablehlo.convolution" not in text
    assert sum(n for (a, b, out, _), n in dots.items()
               if (a, b, out) == ("bf16", "bf16", "f32")) == 23, dots
    assert not [k for k in dots if k[2] == "bf16"], dots
    assert not [k for k in dots if k[0] == k[1] == "f32" and k[3]], dots


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's step")
def test_without_bf16_units_the_step_is_float32_arithmetic():
    """XLA's bf16 convolutions (converted to float32 and back) are never used: conv1's
    forward is float32's XLA conv, as in the float32 step; the large products are float32
    dots on widened operands."""
    text, dots = step_dots(bf16_products=False)
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert len(convs) == 1 and "bf16" not in convs[0], convs
    assert not [k for k in dots if "bf16" in k[:3]], dots
    assert sum(n for k, n in dots.items() if k[3]) >= 15, dots


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
# it errs by at most u = 2^-8 relative. The bf16 step rounds a layer's input, its output
# gradient and its output once each (the kernel stays float32 unless the products are bf16,
# which round it once more, after Winograd's kernel transform); float32 sums add nothing
# comparable. Each rounding adds at most u to the relative error of a product, so a layer's
# output and gradients err by at most 3u (4u with bf16 products) times how much the sums
# cancel; ReLU activations and Xavier weights cancel little: BOUND = 4u, and twice that for
# Winograd's bf16 products, whose transforms add and subtract up to 6 terms per value
# (F(2x2, 3x3)'s B^T and A^T have entries 0 and +-1).
U = 2.0 ** -8
BOUND = {"direct": 4 * U, "winograd-bf16": 8 * U}


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


def ours(layer, x, g, products):
    """(y, dx, dw, db) of our bf16 layer: input and output gradient rounded to bf16, the
    parameters float32, as in the bf16 train step (kernels/layers.py; a conv's output is
    rounded where the next layer takes it, after pool and ReLU)."""
    import torch

    from alexnet_jax.kernels.layers import Conv, Dense

    w = layer.weight.detach().float().numpy()
    b = layer.bias.detach().float().numpy()
    if isinstance(layer, torch.nn.Conv2d):
        module = Conv(w.shape[0], layer.kernel_size, layer.stride,
                      tuple((p, p) for p in layer.padding), dtype=jnp.bfloat16,
                      products=products)
        params = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}
        xj, gj = (t.numpy().transpose(0, 2, 3, 1) for t in (x, g))
    else:
        module = Dense(w.shape[0], dtype=jnp.bfloat16, products=products)
        params = {"kernel": w.T, "bias": b}
        xj, gj = x.numpy(), g.numpy()
    xj, gj = jnp.asarray(xj, jnp.bfloat16), jnp.asarray(gj, jnp.bfloat16)
    y, vjp = jax.vjp(lambda p, x: module.apply({"params": p}, x), params, xj)
    grads, dx = vjp(gj.astype(y.dtype))  # a conv's float32 output takes bf16's gradient
    to_torch = (lambda a: np.asarray(a, np.float64).transpose(0, 3, 1, 2)) \
        if xj.ndim == 4 else (lambda a: np.asarray(a, np.float64))
    dw = np.asarray(grads["kernel"], np.float64)
    dw = dw.transpose(3, 2, 0, 1) if dw.ndim == 4 else dw.T
    return [to_torch(y), to_torch(dx), dw, np.asarray(grads["bias"], np.float64)]


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("products", [None, "bfloat16"], ids=["float32-arithmetic",
                                                                "bf16-products"])
def test_each_bf16_layer_against_float64_beside_autocast(test_split, products, report):
    """Each layer's output and its three gradients on real activations (16 real images,
    Winograd's batch), against float64, within BOUND; PyTorch autocast's error on the same
    inputs is reported beside ours."""
    import torch

    from alexnet_jax.kernels.conv import BF16_WINOGRAD_TILE

    images = d2l_images(test_split, 0, 16)
    rng = np.random.default_rng(7)
    worst = {}
    for i, (layer, x) in enumerate(layer_cases(images)):
        with torch.no_grad():
            out = layer(x)
        g = torch.from_numpy(rng.standard_normal(out.shape)) * out.abs().mean()
        exact = torch_layer(layer, x, g, autocast=False)
        theirs = torch_layer(layer, x.float(), g.float(), autocast=True)
        mine = ours(layer, x.float(), g.float(), products)
        name = f"layer {i} ({type(layer).__name__}"
        k = getattr(layer, "kernel_size", (0,))[0]
        kind = "winograd-bf16" if products and k in BF16_WINOGRAD_TILE else "direct"
        for what, a, t, e in zip(("y", "dx", "dw", "db"), mine, theirs, exact):
            if what == "dx" and i == 0:
                continue  # the image's gradient: never used
            err, autocast_err = rel_err(a, e), rel_err(t, e)
            report(f"bf16 {products or 'float32'} products, {name} {what}) vs float64 "
                   f"(autocast {autocast_err:.2e})", err, BOUND[kind])
            worst[(i, what)] = (err, BOUND[kind])
    over = {k: v for k, v in worst.items() if v[0] > v[1]}
    assert not over, over


def test_gpus_and_tpus_keep_flaxs_bf16_layers():
    """The CPU's bf16 layers are for the CPU: elsewhere XLA's bf16 convolutions stay."""
    from alexnet_jax.kernels import layers
    from alexnet_jax.model.build import FAST_CONV

    elsewhere = build_model("bfloat16", for_cpu=False)
    assert elsewhere.conv is FAST_CONV and elsewhere.dense is flax.linen.Dense
    on_cpu = build_model("bfloat16", for_cpu=True)
    assert on_cpu.conv.func is layers.Conv and on_cpu.dense.func is layers.Dense
    assert build_model("float32", for_cpu=True).conv is FAST_CONV
