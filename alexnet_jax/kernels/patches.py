"""The kernel gradient of a strided conv with few input channels (conv1) as one matmul.

Why: dL/dw = sum over output positions of each patch times g: one (K x N) @ (N x C_out)
matmul over the patch matrix. Cut out tap by tap (121 strided slices for conv1's 11x11,
stride 4), that matrix took 121 memory passes, about 180 ms of a 2 s step on 2 cores. Here
the image goes through space-to-depth once, channels first (stride x stride pixels per
position), so each patch is ceil(k / stride)^2 blocks and the patch matrix is one
concatenation of as many shifted views, each row contiguous. The kernel is padded to whole
blocks (conv1: 12x12, 144 rows for 121 taps) and the padded taps dropped at the end.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def _blocks(kernel: int, stride: int) -> int:
    return -(-kernel // stride)


def columns(x, kernel, strides, padding):
    """The (K, batch * out_h * out_w) patch matrix of NHWC x, K = blocks x stride x C_in,
    in the row order `rows_to_kernel` undoes."""
    (kh, kw), (sh, sw) = kernel, strides
    (p0, p1), (q0, q1) = padding
    b, h, w, c = x.shape
    oh, ow = (h + p0 + p1 - kh) // sh + 1, (w + q0 + q1 - kw) // sw + 1
    bh, bw = _blocks(kh, sh), _blocks(kw, sw)
    rows, cols = (oh - 1 + bh) * sh, (ow - 1 + bw) * sw  # what the blocks span
    # pad, or crop what no window reads, to exactly rows x cols
    xp = lax.pad(x, jnp.zeros((), x.dtype),
                 ((0, 0, 0), (p0, rows - h - p0, 0), (q0, cols - w - q0, 0), (0, 0, 0)))
    # (sh, sw, c, b, rows / sh, cols / sw), stacked: materialised, not recomputed per view
    s2d = jnp.stack([jnp.moveaxis(xp[:, i::sh, j::sw], 3, 0)
                     for i in range(sh) for j in range(sw)])
    views = [s2d[..., i:i + oh, j:j + ow] for i in range(bh) for j in range(bw)]
    return jnp.stack(views).reshape(bh * bw * sh * sw * c, b * oh * ow)


def rows_to_kernel(rows, kernel_shape, strides):
    """A (K, C_out) result over `columns`' rows as an HWIO kernel, the padded taps dropped."""
    (kh, kw, c, c_out), (sh, sw) = kernel_shape, strides
    bh, bw = _blocks(kh, sh), _blocks(kw, sw)
    wp = rows.reshape(bh, bw, sh, sw, c, c_out).transpose(0, 2, 1, 3, 4, 5)
    return wp.reshape(bh * sh, bw * sw, c, c_out)[:kh, :kw]


def kernel_grad(x, g, kernel_shape, strides, padding, precision=None):
    """dL/dw of the NHWC/HWIO conv from its input x and g = dL/dy: columns @ g."""
    cols = columns(x, kernel_shape[:2], strides, padding)
    dw = lax.dot_general(cols, g.reshape(cols.shape[1], -1), (((1,), (0,)), ((), ())),
                         precision=precision,
                         preferred_element_type=jnp.promote_types(g.dtype, jnp.float32))
    return rows_to_kernel(dw, kernel_shape, strides)
