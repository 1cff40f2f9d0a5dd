"""`lax.conv_general_dilated` with faster CPU kernels, XLA's own on GPU and TPU.

Why: XLA's CPU convolutions are compute-bound and most of the step (on AVX-512 CPUs slower
than oneDNN's), and its kernel gradient (the backward-filter conv) several times slower still.
On CPU, chosen per backend with `lax.platform_dependent`: the stride-1 convs (conv2-5) run by
Winograd's minimal filtering (`winograd.py`: the forward pass keeps its transformed input, from
which the backward pass takes both gradients through the transforms), and conv1's kernel
gradient (11x11, stride 4) as one matmul over its patches (`patches.py`).
bfloat16 on the CPU (XLA converts its bf16 convolutions to float32 and back) runs the same
kernels in float32 on widened inputs, or, asked for bf16 products, on bf16 operands with
float32 sums: F(2x2, 3x3) for 3x3, patch matmuls for the rest. GPUs and TPUs keep XLA's
convolutions, where cuDNN and the TPU compiler pick their own algorithms. Figures:
benchmarks/NOTES.md.
"""

from __future__ import annotations

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


# With bfloat16 products (a CPU with bf16 units): F(2x2, 3x3), whose transforms (entries 0
# and +-1) keep the error of bf16 operands within twice a direct conv's, where F(4x4) and any
# tile for 5x5 multiply it by 9-15 (benchmarks/NOTES.md): 5x5 runs as direct patch matmuls.
BF16_WINOGRAD_TILE = {3: 2}


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, products=None, wide_out=False, **kwargs):
    """Drop-in for `lax.conv_general_dilated` (flax's `nn.Conv(conv_general_dilated=...)`).

    bfloat16 inputs on the CPU are computed in float32 and stored back in bfloat16; with
    `products` "bfloat16" (a CPU with bf16 units) every product inside runs on bf16
    operands with float32 sums instead; `wide_out`: their output in float32 (kernels/layers.py
    rounds it to bf16 after the bias, pool and ReLU). GPUs and TPUs take their own bf16
    convolutions."""
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
    low = lhs.dtype == jnp.bfloat16
    return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision,
                 products if low else None, wide_out and low)


def _xla_conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w.astype(x.dtype), strides, padding,
                                    dimension_numbers=NHWC, precision=precision)


def winograd_tile(x, w, strides, products=None) -> int | None:
    """The Winograd output tile m of F(m x m, r x r) for this conv on CPU, or None: no
    Winograd. From WINOGRAD_MIN_BATCH images up: below it the transforms cost more than they
    save. bfloat16 inputs are transformed in float32 (in bf16 the transforms' rounding would
    swamp the result); bf16 products take the smaller, better conditioned tile."""
    kh, kw = w.shape[:2]
    if (kh != kw or tuple(strides) != (1, 1) or x.shape[0] < WINOGRAD_MIN_BATCH
            or w.dtype not in (jnp.float32, jnp.float64, jnp.bfloat16)):
        return None
    return (WINOGRAD_TILE if products is None else BF16_WINOGRAD_TILE).get(kh)


def _wide(x):
    """bfloat16 computed in float32 on the CPU; other dtypes as they are."""
    return x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x


def _out(x, wide):
    return jnp.float32 if wide else x.dtype


def _cpu_forward(x, w, strides, padding, precision, products, m, wide):
    """The CPU's conv: (y in x's dtype, or float32 when `wide`; Winograd's V or None)."""
    if m is not None:
        y, v = winograd.conv_and_transforms(_wide(x), _wide(w), padding, m, precision,
                                            products)
        return y.astype(_out(x, wide)), v
    if products is not None:  # conv1 and conv2: their patches, one bf16 matmul
        return patches.conv(x, w, strides, padding, products).astype(_out(x, wide)), None
    return _xla_conv(_wide(x), _wide(w), strides, padding, precision).astype(_out(x, wide)), \
        None


def _forward(x, w, strides, padding, precision, products, wide):
    m = winograd_tile(x, w, strides, products)
    return lax.platform_dependent(
        x, w,
        cpu=lambda x, w: _cpu_forward(x, w, strides, padding, precision, products, m, wide)[0],
        default=lambda x, w: _xla_conv(x, w, strides, padding, precision).astype(_out(x, wide)))


_conv = jax.custom_vjp(_forward, nondiff_argnums=(2, 3, 4, 5, 6))


def _conv_fwd(x, w, strides, padding, precision, products, wide):
    m = winograd_tile(x, w, strides, products)
    if m is None:
        return _forward(x, w, strides, padding, precision, products, wide), (x, w, None)

    def xla(x, w):  # with zeros where Winograd's V goes: unused, and dropped by XLA
        v = jax.eval_shape(lambda x, w: _cpu_forward(x, w, strides, padding, precision,
                                                     products, m, wide)[1], x, w)
        return _xla_conv(x, w, strides, padding, precision).astype(_out(x, wide)), \
            jnp.zeros(v.shape, v.dtype)

    y, v = lax.platform_dependent(
        x, w, cpu=lambda x, w: _cpu_forward(x, w, strides, padding, precision, products, m,
                                            wide),
        default=xla)
    return y, (x, w, v)


def _conv_bwd(strides, padding, precision, products, wide, residuals, g):
    x, w, v = residuals
    _, vjp = jax.vjp(lambda x, w: _xla_conv(x, w, strides, padding, precision).astype(
        _out(x, wide)), x, w)
    m = winograd_tile(x, w, strides, products)
    if m is None:
        def cpu(x, w, g):
            if products is not None:  # one patch matmul each, bf16 operands
                dw = patches.kernel_grad(x, g, w.shape, strides, padding, precision, products)
                if strides == (1, 1):
                    return _input_grad_by_patches(g, w, padding, products).astype(x.dtype), \
                        dw.astype(w.dtype)
            else:
                dw = kernel_grad_matmuls(_wide(x), _wide(g), kernel=w.shape, strides=strides,
                                         padding=padding, precision=precision)
            # conv1's dx is never used (its input is the image): XLA drops it
            _, wide_vjp = jax.vjp(lambda x, w: _xla_conv(x, w, strides, padding, precision),
                                  _wide(x), _wide(w))
            return wide_vjp(_wide(g))[0].astype(x.dtype), dw.astype(w.dtype)

        return lax.platform_dependent(x, w, g, cpu=cpu, default=lambda x, w, g: vjp(g))

    def cpu(g, v, w):
        dx, dw = winograd.conv_grads(_wide(g), v, _wide(w), x.shape, padding, m, precision,
                                     products)
        return dx.astype(x.dtype), dw.astype(w.dtype)

    return lax.platform_dependent(g, v, w, cpu=cpu, default=lambda g, v, w: vjp(g))


_conv.defvjp(_conv_fwd, _conv_bwd)


def _input_grad_by_patches(g, w, padding, products):
    """dL/dx of a stride-1 conv: g convolved with the kernel flipped and its channels swapped,
    padded by k - 1 - p, as one patch matmul."""
    kh, kw = w.shape[:2]
    flipped = jnp.swapaxes(w[::-1, ::-1], 2, 3)
    back = ((kh - 1 - padding[0][0], kh - 1 - padding[0][1]),
            (kw - 1 - padding[1][0], kw - 1 - padding[1][1]))
    return patches.conv(g, flipped, (1, 1), back, products)


def kernel_grad_matmuls(x, g, *, kernel, strides=(1, 1), padding, precision=None,
                        products=None):
    """dL/dw of an NHWC conv: sum over batch and positions of the input window at each kernel
    tap (i, j) times g.

    Many input channels (conv2-5): one (B*H*W x C_in)^T @ (B*H*W x C_out) matmul per tap.
    Few (conv1's one): a per-tap product would be a matrix-vector product, so all taps go
    into one matmul over the patch matrix (`patches.py`)."""
    c_in = x.shape[-1]
    if c_in < FEW_CHANNELS:
        return patches.kernel_grad(x, g, kernel, strides, padding, precision, products)
    if products is not None:
        x, g = x.astype(products), g.astype(products)
    kh, kw = kernel[:2]
    sh, sw = strides
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    b, h, w, c_out = g.shape
    g2 = g.reshape(b * h * w, c_out)  # 2-D operands: faster than a 4-D einsum (NOTES.md)
    out_type = jnp.float32 if products is not None else jnp.promote_types(g.dtype,
                                                                            jnp.float32)

    def window(i, j):  # the inputs tap (i, j) meets, one row per output position
        return xp[:, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw, :].reshape(-1, c_in)

    def tap(i, j):
        return lax.dot_general(window(i, j), g2, (((0,), (0,)), ((), ())),
                               precision=precision, preferred_element_type=out_type)

    return jnp.stack([jnp.stack([tap(i, j) for j in range(kw)]) for i in range(kh)])
