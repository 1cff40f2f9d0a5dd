"""Conv and Dense layers of `model/build.py`'s CPU model: `nn.Conv`'s and `nn.Dense`'s
parameters and signatures. Dense, in every dtype, computes by kernels/dot.py (which says why);
Conv is bfloat16's. Both take the kernel in its own dtype and sum the bias's gradient in float32
at least.
Conv's output stays float32 through the bias, max-pool and ReLU, and is rounded to bf16 as
the next layer's input (the activation a step stores); bf16 pooling ran 3x slower.

Why: flax's layers cast the float32 kernel to bf16 (and its gradient back, two passes over
fc1's 26M weights a step) and add the bias in bf16, whose gradient is then a bf16 reduction
that XLA's CPU runs as a slow windowed sum (190 ms of a batch-128 step, NOTES.md).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import dot
from .conv import NHWC, conv_general_dilated


@jax.custom_vjp
def add_bias(y, b):
    """y + b over y's last axis, in y's dtype; b's gradient summed in float32 at least."""
    return y + b.astype(y.dtype)


def _add_bias_fwd(y, b):
    return add_bias(y, b), b


def _add_bias_bwd(b, g):
    sums = jnp.sum(g.astype(jnp.promote_types(g.dtype, jnp.float32)),
                   axis=tuple(range(g.ndim - 1)))
    return g, sums.astype(b.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv(nn.Module):
    """nn.Conv (NHWC, explicit padding) computing in `dtype` by kernels/conv.py."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Any = ((0, 0), (0, 0))
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init,
                            (*self.kernel_size, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x = x.astype(self.dtype or x.dtype)
        y = conv_general_dilated(x, kernel, self.strides, self.padding, dimension_numbers=NHWC,
                                 wide_out=True)
        return add_bias(y, bias)  # float32: the next layer stores its input in `dtype`


class Dense(nn.Module):
    """nn.Dense on (batch, features) computing in `dtype` by kernels/dot.py."""

    features: int
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x = x.astype(self.dtype or x.dtype)
        return add_bias(dot.matmul(x, kernel, None), bias)
