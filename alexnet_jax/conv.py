"""`lax.conv_general_dilated`, with the kernel gradient done as matmuls on CPU.

Why: XLA's CPU backend computes a conv's kernel gradient (the backward-filter conv) several
times slower than the same sum written as matmuls over the kernel taps; for AlexNet's conv2
(96 -> 256, 5x5, 26x26) that one gradient was the costliest op of the CPU train step, and
conv1's (1 -> 96, 11x11, stride 4) cost more than its whole forward pass (figures in
benchmarks/NOTES.md). Per backend: `lax.platform_dependent` picks the matmuls on CPU and
XLA's own gradient everywhere else (GPU, TPU), where it is fast. Forward pass and input
gradient are XLA's on every backend.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
FEW_CHANNELS = 8  # below this many input channels the taps share one matmul


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
    """Drop-in for `lax.conv_general_dilated` (flax's `nn.Conv(conv_general_dilated=...)`)."""
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    plain = (
        dimension_numbers is not None
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
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
    return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision)


def _xla_conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC,
                                    precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
    return _xla_conv(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
    return _xla_conv(x, w, strides, padding, precision), (x, w)


def _conv_bwd(strides, padding, precision, residuals, g):
    x, w = residuals
    _, vjp = jax.vjp(lambda x, w: _xla_conv(x, w, strides, padding, precision), x, w)
    (dx, _) = vjp(g)  # XLA drops what is not used: this kernel gradient, conv1's dx

    def matmuls(x, g):
        return kernel_grad_matmuls(x, g, kernel=w.shape, strides=strides, padding=padding,
                                   precision=precision).astype(w.dtype)

    dw = lax.platform_dependent(x, g, cpu=matmuls, default=lambda x, g: vjp(g)[1])
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def kernel_grad_matmuls(x, g, *, kernel, strides=(1, 1), padding, precision=None):
    """dL/dw of an NHWC conv: sum over batch and positions of the input window at each kernel
    tap (i, j) times g.

    Many input channels (conv2-5): one (B*H*W x C_in)^T @ (B*H*W x C_out) matmul per tap.
    Few (conv1's one): a per-tap product would be a matrix-vector product, so the taps are
    stacked into one (taps*C_in x B*H*W) @ (B*H*W x C_out) matmul instead."""
    kh, kw = kernel[:2]
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    b, h, w, c_out = g.shape
    c_in = x.shape[-1]
    g2 = g.reshape(b * h * w, c_out)  # 2-D operands: faster than a 4-D einsum (NOTES.md)
    out_type = jnp.promote_types(g.dtype, jnp.float32)

    def window(i, j):  # the inputs tap (i, j) meets, one row per output position
        return xp[:, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw, :].reshape(-1, c_in)

    if c_in < FEW_CHANNELS:
        taps = jnp.stack([window(i, j) for i in range(kh) for j in range(kw)])
        taps = jnp.moveaxis(taps, 2, 1).reshape(kh * kw * c_in, b * h * w)
        dw = lax.dot_general(taps, g2, (((1,), (0,)), ((), ())), precision=precision,
                             preferred_element_type=out_type)
        return dw.reshape(kh, kw, c_in, c_out)

    def tap(i, j):
        return lax.dot_general(window(i, j), g2, (((0,), (0,)), ((), ())),
                               precision=precision, preferred_element_type=out_type)

    return jnp.stack([jnp.stack([tap(i, j) for j in range(kw)]) for i in range(kh)])
