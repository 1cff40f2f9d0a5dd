"""alexnet_jax.conv: the CPU kernel-gradient matmuls compute what XLA's conv gradient does."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import rel_err
from jax import lax

from alexnet_jax.conv import NHWC, conv_general_dilated

# (input HxW, C_in, C_out, kernel, stride, pad): AlexNet's convs (conv1 takes XLA's path)
LAYERS = {"conv1": (224, 1, 96, 11, 4, 1), "conv2": (26, 96, 256, 5, 1, 2),
          "conv3": (12, 256, 384, 3, 1, 1), "conv5": (12, 384, 256, 3, 1, 1)}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_conv_value_and_grads_equal_xla(name, report):
    size, c_in, c_out, k, stride, pad = LAYERS[name]
    kx, kw, kg = jax.random.split(jax.random.key(sorted(LAYERS).index(name)), 3)
    with jax.enable_x64(True):
        x = jax.random.normal(kx, (2, size, size, c_in), jnp.float64)
        w = jax.random.normal(kw, (k, k, c_in, c_out), jnp.float64)

        def loss(conv, x, w):
            y = conv(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                     dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, NHWC))
            return jnp.sum(y * jax.random.normal(kg, y.shape, y.dtype)), y

        (_, y_ours), (dx_ours, dw_ours) = jax.value_and_grad(
            lambda x, w: loss(conv_general_dilated, x, w), (0, 1), has_aux=True)(x, w)
        (_, y_xla), (dx_xla, dw_xla) = jax.value_and_grad(
            lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1), has_aux=True)(x, w)
    assert rel_err(y_ours, y_xla) == 0.0  # the forward pass is XLA's own
    assert rel_err(dx_ours, dx_xla) == 0.0  # so is the input gradient
    err = rel_err(dw_ours, dw_xla)
    report(f"conv kernel gradient float64, {name}: ours vs XLA's", err, 1e-12)
    assert err < 1e-12
