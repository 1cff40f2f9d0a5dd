"""Max-pooling (VALID, square windows) whose gradient on CPU is 9 masked, strided adds.

Why: XLA's CPU backend runs the max-pool gradient (select-and-scatter) slowly, a sizeable part
of the CPU train step (benchmarks/NOTES.md). On CPU the gradient is built from one
comparison per window tap instead; each output's gradient goes to the first maximum of its
window in row-major order, as in PyTorch's max_pool2d. Other backends keep XLA's gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def max_pool(x, window_shape, strides=None, padding="VALID"):
    """Drop-in for `flax.linen.max_pool` with square windows and no padding (d2l's
    MaxPool2d), NHWC."""
    (window, window_w), (stride, stride_w) = window_shape, strides or window_shape
    if window != window_w or stride != stride_w or padding != "VALID":
        raise ValueError(f"max_pool takes square windows and strides with VALID padding, "
                         f"got window {window_shape}, strides {strides}, padding {padding!r}")
    return _max_pool(x, window, stride)


def _xla_max_pool(x, window, stride):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1),
                             (1, stride, stride, 1), "VALID")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, window, stride):
    return _xla_max_pool(x, window, stride)


def _max_pool_fwd(x, window, stride):
    y = _xla_max_pool(x, window, stride)
    return y, (x, y)


def _max_pool_bwd(window, stride, residuals, g):
    x, y = residuals

    def xla_grad(x, g):
        return jax.vjp(lambda x: _xla_max_pool(x, window, stride), x)[1](g)[0]

    def masked_adds(x, g):
        return first_max_grad(x, g, y=y, window=window, stride=stride).astype(x.dtype)

    dx = lax.platform_dependent(x, g, cpu=masked_adds, default=xla_grad)
    return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def first_max_grad(x, g, *, y, window, stride):
    """dL/dx of a max-pool: for each window tap (i, j) in row-major order, the outputs whose
    maximum sits at that tap (and at no earlier one) send their gradient there."""
    _, h, w, _ = x.shape
    _, ho, wo, _ = y.shape
    dx = jnp.zeros_like(x)
    taken = jnp.zeros(y.shape, bool)
    zero = jnp.zeros((), g.dtype)
    for i in range(window):
        for j in range(window):
            tap = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            hit = (tap == y) & ~taken
            taken = taken | hit
            # Back to input positions i + stride * o: interior padding spreads the outputs.
            dx = dx + lax.pad(jnp.where(hit, g, zero), zero,
                              ((0, 0, 0), (i, h - i - stride * (ho - 1) - 1, stride - 1),
                               (j, w - j - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)))
    return dx
