"""alexnet_jax.kernels.conv and .pool: the CPU kernels compute what XLA's (and PyTorch's) do."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import d2l_images, rel_err
from jax import lax

from alexnet_jax import AlexNet, init_params
from alexnet_jax.kernels import patches
from alexnet_jax.kernels.conv import NHWC, WINOGRAD_MIN_BATCH, conv_general_dilated, winograd_tile
from alexnet_jax.kernels.pool import max_pool

pytestmark = pytest.mark.slow  # float64 gradients of every AlexNet layer


@pytest.fixture(autouse=True)
def on_the_cpu():
    """Pinned to the CPU: these check the CPU's kernels (kernels/), which only the CPU's model
    runs, against XLA's own ops there; on a GPU host they still run on its CPU."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield

# (input HxW, C_in, C_out, kernel, stride, pad): AlexNet's convs (conv1: strided, one channel)
LAYERS = {"conv1": (224, 1, 96, 11, 4, 1), "conv2": (26, 96, 256, 5, 1, 2),
          "conv3": (12, 256, 384, 3, 1, 1), "conv4": (12, 384, 384, 3, 1, 1),
          "conv5": (12, 384, 256, 3, 1, 1)}


@partial(jax.jit, static_argnums=(0, 4, 5))
def conv_value_and_grads(conv, x, w, g, stride, pad):
    """y, dL/dx, dL/dw of sum(conv(x, w) * g), as one program (one compile, not one per op)."""
    def loss(x, w):
        y = conv(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                 dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, NHWC))
        return jnp.sum(y * g), y

    (_, y), (dx, dw) = jax.value_and_grad(loss, (0, 1), has_aux=True)(x, w)
    return y, dx, dw


# conv4 is conv3's geometry (12x12, 3x3, pad 1) with as many channels out as in: conv3
# (256 -> 384) and conv5 (384 -> 256) would also catch the channels swapped, which it cannot.
CASES = [("conv1", 2)] + [(name, batch) for name in ("conv2", "conv3", "conv5")
                          for batch in (2, WINOGRAD_MIN_BATCH)]
# Random cases at a sixteenth of the channels (no kernel's code depends on the channel
# counts; in and out still differ): exactness is the same at any width, and float64 convs of
# the full widths were a minute of the suite. The real widths run in float32 below.
NARROW = 16


@pytest.mark.parametrize(("name", "batch"), CASES)
def test_conv_value_and_grads_equal_xla(name, batch, report):
    """float64, random inputs: every CPU kernel computes what XLA's convolution and its
    gradients compute. From WINOGRAD_MIN_BATCH images the stride-1 convs run by Winograd
    (all three ops); below it, and for conv1, only the kernel gradient differs (matmuls)."""
    size, c_in, c_out, k, stride, pad = LAYERS[name]
    c_in, c_out = -(-c_in // NARROW), c_out // NARROW
    out = (size + 2 * pad - k) // stride + 1
    kx, kw, kg = jax.random.split(jax.random.key(sorted(LAYERS).index(name)), 3)
    with jax.enable_x64(True):
        x = jax.random.normal(kx, (batch, size, size, c_in), jnp.float64)
        w = jax.random.normal(kw, (k, k, c_in, c_out), jnp.float64)
        g = jax.random.normal(kg, (batch, out, out, c_out), jnp.float64)
        ours = conv_value_and_grads(conv_general_dilated, x, w, g, stride, pad)
        xla = conv_value_and_grads(lax.conv_general_dilated, x, w, g, stride, pad)
    winograd = winograd_tile(x, w, (stride, stride))
    assert (winograd is not None) == (name != "conv1" and batch >= WINOGRAD_MIN_BATCH)
    kernels = (f"F({winograd}x{winograd},{k}x{k})",) * 3 if winograd else ("XLA", "XLA",
                                                                          "matmuls")
    for what, kernel, a, b in zip(("forward", "input grad", "kernel grad"), kernels, ours, xla):
        err = rel_err(a, b)
        if kernel == "XLA":
            assert err == 0.0, (what, err)  # XLA's own op
            continue
        report(f"{name} {what} float64, batch {batch}, {kernel} vs XLA", err, 1e-12)
        assert 0.0 < err < 1e-12, (what, err)  # > 0: not XLA's own op


@pytest.fixture(scope="module")
def trunk_inputs(test_split):
    """d2l's init and the input of each conv layer for WINOGRAD_MIN_BATCH real test images:
    the stock-Flax AlexNet (XLA's convs) in float64, each conv's input recorded on the way."""
    params = init_params(AlexNet(), jax.random.key(0))
    inputs = {}

    def record(call, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            inputs[context.module.name] = args[0]
        return call(*args, **kwargs)

    with jax.enable_x64(True), nn.intercept_methods(record):
        params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(d2l_images(test_split, 0, WINOGRAD_MIN_BATCH), jnp.float64)
        AlexNet(param_dtype=jnp.float64).apply({"params": params64}, x, train=False)
    return params, inputs


@pytest.mark.parametrize("name", ["conv2", "conv3", "conv4", "conv5"])
def test_winograd_float32_error_on_real_activations(name, trunk_inputs, report):
    """float32 Winograd against float64 XLA on what each layer really sees (real images
    through d2l's init), beside XLA's own float32 error on the same inputs."""
    _, _, _, k, stride, pad = LAYERS[name]
    params, inputs = trunk_inputs
    x = inputs[name]
    with jax.enable_x64(True):
        w = jnp.asarray(params[name]["kernel"], jnp.float64)
        y_shape = (x.shape[0], x.shape[1], x.shape[2], w.shape[-1])  # stride 1, "same"
        g = jax.random.normal(jax.random.key(1), y_shape, jnp.float64)
        exact = conv_value_and_grads(lax.conv_general_dilated, x, w, g, stride, pad)
    f32 = [a.astype(jnp.float32) for a in (x, w, g)]
    m = winograd_tile(*f32[:2], (stride, stride))
    assert m is not None
    ours = conv_value_and_grads(conv_general_dilated, *f32, stride, pad)
    xla = conv_value_and_grads(lax.conv_general_dilated, *f32, stride, pad)
    for what, a, b, e in zip(("forward", "input grad", "kernel grad"), ours, xla, exact):
        err, xla_err = rel_err(a, e), rel_err(b, e)
        report(f"{name} {what} float32 F({m}x{m},{k}x{k}), real activations", err, 1e-5)
        report(f"{name} {what} float32 XLA's conv, same inputs", xla_err)
        assert err < 1e-5, (what, err, xla_err)


def test_conv1_kernel_grad_float32_error_on_real_images(trunk_inputs, report):
    """conv1's kernel gradient (one matmul over the space-to-depth patches) in float32 on
    real images against float64 XLA, beside XLA's own float32 error on the same inputs."""
    _, _, _, k, stride, pad = LAYERS["conv1"]
    params, inputs = trunk_inputs
    x = inputs["conv1"]
    with jax.enable_x64(True):
        w = jnp.asarray(params["conv1"]["kernel"], jnp.float64)
        out = (x.shape[1] + 2 * pad - k) // stride + 1
        g = jax.random.normal(jax.random.key(2), (x.shape[0], out, out, w.shape[-1]),
                              jnp.float64)
        exact = conv_value_and_grads(lax.conv_general_dilated, x, w, g, stride, pad)[2]
    f32 = [a.astype(jnp.float32) for a in (x, w, g)]
    ours = conv_value_and_grads(conv_general_dilated, *f32, stride, pad)[2]
    xla = conv_value_and_grads(lax.conv_general_dilated, *f32, stride, pad)[2]
    err, xla_err = rel_err(ours, exact), rel_err(xla, exact)
    report("conv1 kernel grad float32 patch matmul, real images", err, 1e-5)
    report("conv1 kernel grad float32 XLA's conv, same inputs", xla_err)
    assert err < 1e-5, (err, xla_err)


@pytest.mark.parametrize(("size", "c_in", "k", "stride", "pad"),
                         [(23, 3, 5, 2, 2), (20, 1, 4, 4, 0), (17, 2, 3, 1, 1), (31, 1, 11, 4, 1)])
def test_patch_kernel_grad_equals_xla(size, c_in, k, stride, pad):
    """float64: the patch-matmul kernel gradient of few-channel convs is XLA's, for kernels
    that do and do not fill whole stride x stride blocks and windows that do and do not
    reach the padded input's last rows."""
    kx, kw, kg = jax.random.split(jax.random.key(size), 3)
    out = (size + 2 * pad - k) // stride + 1
    with jax.enable_x64(True):
        x = jax.random.normal(kx, (2, size, size + 1, c_in), jnp.float64)
        w = jax.random.normal(kw, (k, k, c_in, 5), jnp.float64)
        g = jax.random.normal(kg, (2, out, (size + 1 + 2 * pad - k) // stride + 1, 5),
                              jnp.float64)
        padding = ((pad, pad), (pad, pad))

        @jax.jit
        def both(x, w, g):  # one program each side: one compile, not one per op
            dw = patches.kernel_grad(x, g, w.shape, (stride, stride), padding)
            _, vjp = jax.vjp(lambda w: lax.conv_general_dilated(
                x, w, (stride, stride), padding, dimension_numbers=NHWC), w)
            return dw, vjp(g)[0]

        assert rel_err(*both(x, w, g)) < 1e-12


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(2, 54, 54, 96), (2, 26, 26, 256), (2, 12, 12, 256),
                                   (2, 13, 13, 3), (2, 13, 13, 1)])
def test_max_pool_grad_equals_xla_and_torch(shape, report):
    """Random inputs (no ties): equal to XLA's gradient. Coarsely rounded inputs (many ties
    in each window): equal to PyTorch's max_pool2d, which sends the gradient to the first
    maximum of a window. AlexNet's three pools, and channel counts that do not halve."""
    import torch

    kx, kg = jax.random.split(jax.random.key(shape[1]))
    with jax.enable_x64(True):
        x = jax.random.normal(kx, shape, jnp.float64)
        out_hw = (shape[1] - 3) // 2 + 1
        g = jax.random.normal(kg, (shape[0], out_hw, out_hw, shape[3]), jnp.float64)

        @partial(jax.jit, static_argnums=0)
        def grad(pool, x, g):
            y, vjp = jax.vjp(pool, x)
            return y, vjp(g)[0]

        def ours(x):
            return max_pool(x, (3, 3), (2, 2))

        def xla(x):
            return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")

        y_ours, dx_ours = grad(ours, x, g)
        y_xla, dx_xla = grad(xla, x, g)
        assert rel_err(y_ours, y_xla) == 0.0
        err = rel_err(dx_ours, dx_xla)
        report(f"max-pool gradient float64 {shape[1:]}: ours vs XLA's", err, 1e-15)
        assert err < 1e-15

        tied = jnp.round(x)  # values in {-3, ..., 3}: most windows hold their maximum twice
        _, dx_tied = grad(ours, tied, g)
    xt = torch.from_numpy(np.array(tied)).permute(0, 3, 1, 2).requires_grad_()
    torch.nn.functional.max_pool2d(xt, 3, 2).backward(
        torch.from_numpy(np.array(g)).permute(0, 3, 1, 2))
    theirs = xt.grad.permute(0, 2, 3, 1).numpy()
    err = rel_err(dx_tied, theirs)
    report(f"max-pool gradient with ties {shape[1:]}: ours vs PyTorch", err, 1e-15)
    assert err < 1e-15


@pytest.mark.torch
def test_max_pool_nan_wins_as_in_torch():
    """A NaN in a window is its maximum and takes its gradient, as in PyTorch's max_pool2d
    (the last NaN of the window where it holds several); the other windows are unchanged."""
    import torch

    x = np.array(jax.random.normal(jax.random.key(3), (2, 13, 13, 4)))
    x[0, 1, 1, 0] = x[1, 5, 6, 2] = x[1, 6, 6, 2] = np.nan  # one window with two NaNs
    g = np.array(jax.random.normal(jax.random.key(4), (2, 6, 6, 4)))
    y, vjp = jax.vjp(lambda x: max_pool(x, (3, 3), (2, 2)), jnp.asarray(x))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, 3, 2)
    yt.backward(torch.from_numpy(g).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().permute(0, 2, 3, 1).numpy())
    assert np.isnan(np.asarray(y)).sum() == 5  # 1 window over (1, 1), 4 over the pair
    dx, dx_torch = np.asarray(vjp(jnp.asarray(g))[0]), xt.grad.permute(0, 2, 3, 1).numpy()
    assert dx[1, 5, 6, 2] == dx_torch[1, 5, 6, 2] == 0.0  # the pair's last NaN takes it
    assert dx[1, 6, 6, 2] != 0.0 and dx[0, 1, 1, 0] == dx_torch[0, 1, 1, 0] != 0.0
    # Elsewhere only the order of the sums over overlapping windows differs.
    np.testing.assert_allclose(dx, dx_torch, rtol=1e-6, atol=1e-6)


def test_bfloat16_grads_run_and_match_xla():
    """Mixed precision (--dtype bfloat16): both CPU gradients keep the operands' dtype."""
    kx, kw = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (2, 26, 26, 96), jnp.bfloat16)
    w = (0.05 * jax.random.normal(kw, (5, 5, 96, 256))).astype(jnp.bfloat16)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)

    def loss(conv, pool, x, w):
        y = pool(conv(x, w, (1, 1), ((2, 2), (2, 2)), dimension_numbers=dn))
        return jnp.sum(y.astype(jnp.float32) ** 2)

    xla_pool = lambda y: lax.reduce_window(y, -jnp.inf, lax.max, (1, 3, 3, 1),  # noqa: E731
                                           (1, 2, 2, 1), "VALID")
    our_pool = lambda y: max_pool(y, (3, 3), (2, 2))  # noqa: E731
    ours = jax.jit(jax.grad(lambda x, w: loss(conv_general_dilated, our_pool, x, w),
                            (0, 1)))(x, w)
    xla = jax.jit(jax.grad(lambda x, w: loss(lax.conv_general_dilated, xla_pool, x, w),
                           (0, 1)))(x, w)
    for a, b in zip(ours, xla):
        assert a.dtype == b.dtype == jnp.bfloat16
        assert rel_err(a, b) < 2e-2  # bfloat16 has 8 bits of mantissa
