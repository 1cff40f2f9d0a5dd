"""`lax.conv_general_dilated` with faster CPU kernels, XLA's own on GPU and TPU.

Why: XLA's CPU convolutions are compute-bound and most of the step (on AVX-512 CPUs slower
than oneDNN's), and its kernel gradient (the backward-filter conv) several times slower still.
On CPU, chosen per backend with `lax.platform_dependent`: the stride-1 convs (conv2-5) run by
Winograd's minimal filtering (`winograd.py`: the forward pass keeps its transformed input, from
which the backward pass takes both gradients through the transforms), and conv1's kernel
gradient (11x11, stride 4) as one matmul over its patches (`patches.py`).
GPUs and TPUs keep XLA's convolutions, where cuDNN and the TPU compiler pick their own
algorithms. Figures: benchmarks/NOTES.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from . import patches, winograd

NHWC = ("NHWC", "HWIO", "NHWC")
FEW_CHANNELS = 8  # below this many input channels the taps share one matmul
# Winograd's output tile per kernel size (stride-1, square kernels) on CPU: F(4x4, 3x3) and
# F(4x4, 5x5), measured per layer against XLA's convs (benchmarks/NOTES.md).
WINOGRAD_TILE = {3: 4, 5: 4}
WINOGRAD_MIN_BATCH = 16  # at 8 images conv3-4 ran slower than XLA's, at 16 every layer faster


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


def winograd_tile(x, w, strides) -> int | None:
    """The Winograd output tile m of F(m x m, r x r) for this conv on CPU, or None: XLA's.
    float32 and float64 only: in bfloat16 the transforms' rounding would swamp the result.
    From WINOGRAD_MIN_BATCH images up: below it the transforms cost more than they save."""
    kh, kw = w.shape[:2]
    if (kh != kw or tuple(strides) != (1, 1) or x.shape[0] < WINOGRAD_MIN_BATCH
            or w.dtype not in (jnp.float32, jnp.float64)):
        return None
    return WINOGRAD_TILE.get(kh)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
    m = winograd_tile(x, w, strides)
    if m is None:
        return _xla_conv(x, w, strides, padding, precision)
    return lax.platform_dependent(
        x, w, cpu=lambda x, w: winograd.conv(x, w, padding, m, precision),
        default=lambda x, w: _xla_conv(x, w, strides, padding, precision))


def _conv_fwd(x, w, strides, padding, precision):
    m = winograd_tile(x, w, strides)
    if m is None:
        return _xla_conv(x, w, strides, padding, precision), (x, w, None)

    def xla(x, w):  # with zeros where Winograd's V goes: unused, and dropped by XLA
        v = jax.eval_shape(lambda x, w: winograd.conv_and_transforms(x, w, padding, m), x, w)[1]
        return _xla_conv(x, w, strides, padding, precision), jnp.zeros(v.shape, v.dtype)

    y, v = lax.platform_dependent(
        x, w, cpu=lambda x, w: winograd.conv_and_transforms(x, w, padding, m, precision),
        default=xla)
    return y, (x, w, v)


def _conv_bwd(strides, padding, precision, residuals, g):
    x, w, v = residuals
    _, vjp = jax.vjp(lambda x, w: _xla_conv(x, w, strides, padding, precision), x, w)
    m = winograd_tile(x, w, strides)
    if m is None:
        (dx, _) = vjp(g)  # XLA drops what is not used: this kernel gradient, conv1's dx

        def cpu_dw(x, g):
            return kernel_grad_matmuls(x, g, kernel=w.shape, strides=strides,
                                       padding=padding, precision=precision).astype(w.dtype)

        dw = lax.platform_dependent(x, g, cpu=cpu_dw, default=lambda x, g: vjp(g)[1])
        return dx, dw

    def cpu(g, v, w):
        dx, dw = winograd.conv_grads(g, v, w, x.shape, padding, m, precision)
        return dx.astype(x.dtype), dw.astype(w.dtype)

    return lax.platform_dependent(g, v, w, cpu=cpu, default=lambda g, v, w: vjp(g))


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
