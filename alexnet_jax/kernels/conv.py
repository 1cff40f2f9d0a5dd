"""`lax.conv_general_dilated` for the CPU, with faster kernels than XLA's CPU convolutions.

Why: XLA's CPU convolutions are compute-bound and most of the step (on AVX-512 CPUs slower
than oneDNN's), and its kernel gradient (the backward-filter conv) several times slower still.
The stride-1 convs (conv2-5) run by Winograd's minimal filtering (`winograd.py`: the forward
pass keeps its transformed input, from which the backward pass takes both gradients through
the transforms), and conv1's kernel gradient (11x11, stride 4) as one matmul over its patches
(`patches.py`). bfloat16 inputs run the same kernels in float32 on widened inputs (XLA's CPU
converts its bf16 convolutions to float32 and back, slower than float32 itself). Only
`model/build.py`'s CPU model takes it: GPUs and TPUs keep XLA's convolutions, where cuDNN and
the TPU compiler pick their own algorithms. Figures: benchmarks/NOTES.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from . import patches, winograd

NHWC = ("NHWC", "HWIO", "NHWC")
FEW_CHANNELS = 8  # below this many input channels the taps share one matmul
# Winograd's output tile per kernel size (stride-1, square kernels): F(4x4, 3x3) and
# F(4x4, 5x5), measured per layer against XLA's convs (benchmarks/NOTES.md).
WINOGRAD_TILE = {3: 4, 5: 4}
WINOGRAD_MIN_BATCH = 16  # at 8 images conv3-4 ran slower than XLA's, at 16 every layer faster


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, wide_out=False, **kwargs):
    """Drop-in for `lax.conv_general_dilated` (flax's `nn.Conv(conv_general_dilated=...)`).

    bfloat16 inputs are computed in float32 and stored back in bfloat16, or with `wide_out`
    returned in float32 (kernels/layers.py rounds it to bf16 after the bias, pool and ReLU)."""
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
    return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision,
                 wide_out and lhs.dtype == jnp.bfloat16)


def _xla_conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w.astype(x.dtype), strides, padding,
                                    dimension_numbers=NHWC, precision=precision)


def winograd_tile(x, w, strides) -> int | None:
    """The Winograd output tile m of F(m x m, r x r) for this conv, or None: no Winograd.
    From WINOGRAD_MIN_BATCH images up: below it the transforms cost more than they save.
    bfloat16 inputs are transformed in float32 (in bf16 the transforms' rounding would swamp
    the result)."""
    kh, kw = w.shape[:2]
    if (kh != kw or tuple(strides) != (1, 1) or x.shape[0] < WINOGRAD_MIN_BATCH
            or w.dtype not in (jnp.float32, jnp.float64, jnp.bfloat16)):
        return None
    return WINOGRAD_TILE.get(kh)


def _wide(x):
    """bfloat16 computed in float32; other dtypes as they are."""
    return x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x


def _out(x, wide):
    return jnp.float32 if wide else x.dtype


def _forward_and_transforms(x, w, strides, padding, precision, wide):
    """(y in x's dtype, or float32 when `wide`; Winograd's V, or None without Winograd)."""
    m = winograd_tile(x, w, strides)
    if m is None:
        return _xla_conv(_wide(x), _wide(w), strides, padding, precision).astype(
            _out(x, wide)), None
    y, v = winograd.conv_and_transforms(_wide(x), _wide(w), padding, m, precision)
    return y.astype(_out(x, wide)), v


def _forward(x, w, strides, padding, precision, wide):
    return _forward_and_transforms(x, w, strides, padding, precision, wide)[0]


_conv = jax.custom_vjp(_forward, nondiff_argnums=(2, 3, 4, 5))


def _conv_fwd(x, w, strides, padding, precision, wide):
    y, v = _forward_and_transforms(x, w, strides, padding, precision, wide)
    return y, (x, w, v)


def _conv_bwd(strides, padding, precision, wide, residuals, g):
    x, w, v = residuals
    m = winograd_tile(x, w, strides)
    if m is not None:
        dx, dw = winograd.conv_grads(_wide(g), v, _wide(w), x.shape, padding, m, precision)
        return dx.astype(x.dtype), dw.astype(w.dtype)
    dw = kernel_grad_matmuls(_wide(x), _wide(g), kernel=w.shape, strides=strides,
                             padding=padding, precision=precision)
    # conv1's dx is never used (its input is the image): XLA drops it
    _, wide_vjp = jax.vjp(lambda x, w: _xla_conv(x, w, strides, padding, precision),
                          _wide(x), _wide(w))
    return wide_vjp(_wide(g))[0].astype(x.dtype), dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def kernel_grad_matmuls(x, g, *, kernel, strides=(1, 1), padding, precision=None):
    """dL/dw of an NHWC conv: sum over batch and positions of the input window at each kernel
    tap (i, j) times g.

    Many input channels (conv2-5): one (B*H*W x C_in)^T @ (B*H*W x C_out) matmul per tap.
    Few (conv1's one): a per-tap product would be a matrix-vector product, so all taps go
    into one matmul over the patch matrix (`patches.py`)."""
    c_in = x.shape[-1]
    if c_in < FEW_CHANNELS:
        return patches.kernel_grad(x, g, kernel, strides, padding, precision)
    kh, kw = kernel[:2]
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    b, h, w, c_out = g.shape
    g2 = g.reshape(b * h * w, c_out)  # 2-D operands: faster than a 4-D einsum (NOTES.md)
    out_type = jnp.promote_types(g.dtype, jnp.float32)

    def window(i, j):  # the inputs tap (i, j) meets, one row per output position
        return xp[:, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw, :].reshape(-1, c_in)

    def tap(i, j):
        return lax.dot_general(window(i, j), g2, (((0,), (0,)), ((), ())),
                               precision=precision, preferred_element_type=out_type)

    return jnp.stack([jnp.stack([tap(i, j) for j in range(kw)]) for i in range(kh)])
