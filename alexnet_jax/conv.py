"""`lax.conv_general_dilated`, with the kernel gradient of stride-1 convs done as matmuls on CPU.

Why: XLA's CPU backend computes a conv's kernel gradient (the backward-filter conv) several
times slower than the same sum written as one matmul per kernel tap; for AlexNet's conv2
(96 -> 256, 5x5, 26x26) that one gradient was the costliest op of the CPU train step
(benchmarks/NOTES.md). Per backend: `lax.platform_dependent` picks the matmuls on CPU and
XLA's own gradient everywhere else (GPU, TPU), where it is fast. Forward pass and input
gradient are XLA's on every backend.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
    """Drop-in for `lax.conv_general_dilated` (flax's `nn.Conv(conv_general_dilated=...)`)."""
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    plain = (
        dimension_numbers is not None
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
        and all(s == 1 for s in window_strides)
        and all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
        and feature_group_count == 1
        and not isinstance(padding, str)
        and not kwargs
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision, **kwargs)
    return _conv(lhs, rhs, tuple(tuple(p) for p in padding), precision)


def _xla_conv(x, w, padding, precision):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC,
                                    precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, padding, precision):
    return _xla_conv(x, w, padding, precision)


def _conv_fwd(x, w, padding, precision):
    return _xla_conv(x, w, padding, precision), (x, w)


def _conv_bwd(padding, precision, residuals, g):
    x, w = residuals
    _, vjp = jax.vjp(lambda x, w: _xla_conv(x, w, padding, precision), x, w)
    (dx, _) = vjp(g)  # XLA drops the unused kernel gradient
    def matmuls(x, g):
        return kernel_grad_matmuls(x, g, kernel=w.shape, padding=padding,
                                   precision=precision).astype(w.dtype)

    dw = lax.platform_dependent(x, g, cpu=matmuls, default=lambda x, g: vjp(g)[1])
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def kernel_grad_matmuls(x, g, *, kernel, padding, precision=None):
    """dL/dw of a stride-1 NHWC conv: for each tap (i, j), x shifted by (i, j) times g,
    contracted over batch and positions: one (B*H*W x C_in)^T @ (B*H*W x C_out) matmul."""
    kh, kw = kernel[:2]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    b, h, w, c_out = g.shape
    g2 = g.reshape(b * h * w, c_out)  # 2-D operands: 1.6x faster than a 4-D einsum here

    def tap(i, j):
        x2 = xp[:, i:i + h, j:j + w, :].reshape(b * h * w, x.shape[-1])
        return lax.dot_general(x2, g2, (((0,), (0,)), ((), ())), precision=precision,
                               preferred_element_type=jnp.promote_types(g.dtype, jnp.float32))

    return jnp.stack([jnp.stack([tap(i, j) for j in range(kw)]) for i in range(kh)])
