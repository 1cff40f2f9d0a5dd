"""Max-pooling (VALID, square windows) for the CPU that records each window's winner for its
gradient.

Why: XLA's CPU max-pool gradient (select-and-scatter) and the gradient by comparing every
window tap with the maximum both read and write the full-size input many times over: 13%
of the CPU train step at batch 128 (benchmarks/NOTES.md). Here the forward pass walks the
window's taps once, keeping the maximum and the (int8) index of the tap that gave it: the
first maximum in row-major order, as PyTorch's max_pool2d, and a NaN wins as there. The
gradient is then one pass that writes each input position once: positions of the same
residue modulo the stride form a grid that only a few taps reach, each a shifted copy of
the output gradient masked by the winner index. Only `model/build.py`'s CPU model takes it:
other backends keep flax's max_pool.
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


def _winner_dtype(window):
    return jnp.int8 if window * window <= 127 else jnp.int32


def max_and_winner(x, window, stride):
    """(the max-pool of x, the row-major index of the tap that holds each window's maximum):
    the first maximum, or the last NaN where the window holds one (PyTorch's rule)."""
    _, h, w, _ = x.shape
    ho, wo = (h - window) // stride + 1, (w - window) // stride + 1
    best = winner = None
    for i in range(window):
        for j in range(window):
            tap = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            if best is None:
                best, winner = tap, jnp.zeros(tap.shape, _winner_dtype(window))
                continue
            better = (tap > best) | jnp.isnan(tap)
            best = jnp.where(better, tap, best)
            winner = jnp.where(better, jnp.asarray(i * window + j, winner.dtype), winner)
    return best, winner


def winner_grad(winner, g, *, input_shape, window, stride):
    """dL/dx of a max-pool from its winner indices: input row stride*q + d (and likewise for
    columns) is reached by the taps d, d + stride, ... of outputs q, q - 1, ...; each of the
    stride x stride residue grids is summed from those shifted, masked copies of g, and the
    grids are interleaved into x's shape in one write."""
    _, h, w, c = input_shape
    b, ho, wo, _ = g.shape
    qh, qw = -(-h // stride), -(-w // stride)
    zero = jnp.zeros((), g.dtype)
    grid_rows = []
    for dh in range(stride):
        grids = []
        for dw in range(stride):
            grid = jnp.zeros((b, qh, qw, c), g.dtype)
            for i in range(dh, window, stride):
                for j in range(dw, window, stride):
                    kh, kw = i // stride, j // stride
                    sent = jnp.where(winner == i * window + j, g, zero)
                    grid = grid + lax.pad(sent, zero, ((0, 0, 0), (kh, qh - ho - kh, 0),
                                                       (kw, qw - wo - kw, 0), (0, 0, 0)))
            grids.append(grid)
        grid_rows.append(jnp.stack(grids, axis=3))  # (b, qh, qw, dw, c)
    dx = jnp.stack(grid_rows, axis=2).reshape(b, qh * stride, qw * stride, c)
    return dx[:, :h, :w]


def _max_and_winner_by_halves(x, window, stride):
    """(max-pool, winner indices), the winners computed once and stored."""
    if x.dtype == jnp.bfloat16:  # compared in float32 (XLA's CPU loops on bf16 are slow);
        y, winner = _max_and_winner_by_halves(x.astype(jnp.float32), window, stride)
        return y.astype(x.dtype), winner  # the maximum itself is exact either way
    # By channel halves, concatenated: XLA fuses a concatenation's operands into it but not
    # the concatenation into its consumers, so the winners are computed once and stored.
    # Computed whole, they were fused into each of the gradient's 4 reads and recomputed
    # there, 9 taps each time (pool1's gradient 78 -> 16 ms at batch 128, NOTES.md).
    half = x.shape[-1] // 2
    if not half:
        return max_and_winner(x, window, stride)
    low, high = (max_and_winner(part, window, stride) for part in (x[..., :half], x[..., half:]))
    return tuple(jnp.concatenate(pair, axis=-1) for pair in zip(low, high))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, window, stride):
    return _max_and_winner_by_halves(x, window, stride)[0]


def _max_pool_fwd(x, window, stride):
    y, winner = _max_and_winner_by_halves(x, window, stride)
    return y, (x, winner)


def _max_pool_bwd(window, stride, residuals, g):
    x, winner = residuals
    # bfloat16 summed in float32: XLA's CPU loops on bf16 ran 3-5x slower (NOTES.md)
    wide = g.astype(jnp.float32) if g.dtype == jnp.bfloat16 else g
    return (winner_grad(winner, wide, input_shape=x.shape, window=window,
                        stride=stride).astype(x.dtype),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
