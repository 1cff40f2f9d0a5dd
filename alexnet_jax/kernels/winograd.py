"""Winograd's minimal filtering (Lavin and Gray, 2016) for stride-1 NHWC convolutions.

Why: on the CPU the convolutions are compute-bound and most of the training step, so the way
to a faster step is fewer multiplications. F(m x m, r x r) computes an m x m output tile
from an a x a input tile (a = m + r - 1) with a*a products instead of m*m*r*r; across channels
those products are a*a batched matmuls. The input and kernel transforms are unrolled
multiply-adds with constant coefficients, which XLA fuses into a few memory-bound loops; the
transforms of whole products (A^T M A, the output gradient's A g A^T, B dV B^T) are single
matmuls with the Kronecker product of the constant matrix with itself (`_untile_matmul`,
`_grad_tiles`): one streaming pass each, at matmul speed.

The train step runs `conv_and_transforms` forward and `conv_grads` backward: both gradients
go back through Winograd's own stages, from the forward pass's transformed input and one
transform of the output gradient (scripts/winograd_layers.py also times each gradient alone,
as another Winograd convolution).
"""

from __future__ import annotations

import functools
import operator

import jax.numpy as jnp
import numpy as np
from jax import lax

POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0)  # interpolation points, then infinity


@functools.cache
def matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A^T (m x a), G (a x r), B^T (a x a) of F(m, r): y = A^T [(G g) * (B^T d)], float64."""
    a = m + r - 1
    p = np.array(POINTS[:a - 1])
    at = np.zeros((m, a))
    at[:, :-1] = p[None, :] ** np.arange(m)[:, None]
    at[-1, -1] = 1.0
    f = np.array([np.prod([pj - pk for pk in p if pk != pj]) for pj in p])
    g = np.zeros((a, r))
    g[:-1] = p[:, None] ** np.arange(r)[None, :] / f[:, None]
    g[-1, -1] = 1.0
    # B^T is what makes y_i = sum_k g_k d_(i+k) hold for every d and g: linear in B^T, solved.
    coef = np.einsum("ij,jk->ikj", at, g).reshape(m * r, a)  # (i, k) x j
    target = np.zeros((m * r, a))
    for i in range(m):
        for k in range(r):
            target[i * r + k, i + k] = 1.0
    bt, *_ = np.linalg.lstsq(coef, target, rcond=None)
    bt = np.round(bt, 12) + 0.0  # exact small rationals; + 0.0 turns -0.0 into 0.0
    assert np.abs(coef @ bt - target).max() < 1e-9, (m, r)
    return at, g, bt


def _mix(t: np.ndarray, parts: list):
    """sum_i t[:, i] (outer) parts[i], as one fused elementwise loop: a new leading axis of
    size len(t). One loop writes the whole result, so no stacking copy follows."""
    shape = (t.shape[0],) + (1,) * parts[0].ndim
    terms = [jnp.asarray(t[:, i].reshape(shape), p.dtype) * p
             for i, p in enumerate(parts) if t[:, i].any()]
    return functools.reduce(operator.add, terms)


def _stacked(t: np.ndarray, parts: list):
    """What `_mix` computes, one output row at a time with its non-zero terms only, stacked.
    The stack is materialised: fused into the next stage, `_mix` would be recomputed for
    each of that stage's strided reads (5x slower, measured)."""
    rows = []
    for row in t:
        terms = [p if c == 1 else -p if c == -1 else p * jnp.asarray(c, p.dtype)
                 for c, p in zip(row, parts) if c != 0]
        rows.append(functools.reduce(operator.add, terms))
    return jnp.stack(rows)


def _tiles(x, t: np.ndarray, step: int, count: tuple[int, int]):
    """t X t^T for every tile X of x (NHWC) of t's width, tiles `step` apart: an array of
    shape (a*a, batch * tiles high * tiles wide, channels)."""
    n = t.shape[1]

    def along(x, axis, count):
        return [lax.slice_in_dim(x, i, i + step * (count - 1) + 1, step, axis) for i in range(n)]

    rows = _stacked(t, along(x, 1, count[0]))  # (a, batch, tiles high, W, C)
    both = _mix(t, along(rows, 3, count[1]))  # (a, a, batch, tiles high, tiles wide, C)
    return both.reshape(t.shape[0] ** 2, -1, x.shape[-1])


def _untile_matmul(t: np.ndarray, prod, precision=None):
    """t M t^T for every tile M of a product of shape (a*a, tiles, c): (n, n, tiles, c) for
    t of shape (n, a), the first axis the tile's column, as one matmul with the constant
    kron(t, t) (n*n x a*a). One streaming read of the product at matmul speed, where two
    stacked stages read and write it twice (conv2 at batch 128, alone: the output transform
    42 against 83 ms, the input gradient's 43 against 70 ms with its overlap-add, measured)."""
    n, a = t.shape
    y = lax.dot_general(jnp.asarray(np.kron(t, t), prod.dtype), prod.reshape(a * a, -1),
                        (((1,), (0,)), ((), ())), precision=precision)
    return y.reshape((n, n) + prod.shape[1:])


def _grad_tiles(gp, at: np.ndarray, precision=None):
    """A g A^T for every m x m tile of gp (NHWC, whole tiles): (a*a, tiles, channels), the
    order `_tiles` makes, as one matmul with kron(A, A) (a*a x m*m) over g's tiles (they do
    not overlap: a reordering of g). conv2 at batch 128, alone: 64-68 ms with g's tiles by
    a transpose, against 122-133 ms as two stages; the stack below is faster still."""
    m, a = at.shape
    c = gp.shape[-1]
    # (col, row) of each tile: a stack of strided slices, twice as fast as XLA's transpose
    tiles = jnp.stack([gp[:, i::m, j::m] for j in range(m) for i in range(m)])
    z = lax.dot_general(jnp.asarray(np.kron(at.T, at.T), gp.dtype), tiles.reshape(m * m, -1),
                        (((1,), (0,)), ((), ())), precision=precision)
    return z.reshape(a * a, -1, c)


BATCHED = (((2,), (1,)), ((0,), (0,)))  # (a*a, tiles, c) @ (a*a, c, c'): one matmul per point


def conv(x, w, padding, m: int, precision=None):
    """Stride-1 NHWC/HWIO convolution (XLA's cross-correlation) by F(m x m, r x r)."""
    return conv_and_transforms(x, w, padding, m, precision)[0]


def conv_and_transforms(x, w, padding, m: int, precision=None):
    """`conv`, and the transformed input that `conv_grads` takes: (y, V)."""
    r = w.shape[0]
    a = m + r - 1
    at, gm, bt = matrices(m, r)
    (p0, p1), (q0, q1) = padding
    b, h, wd, c_in = x.shape
    oh, ow = h + p0 + p1 - r + 1, wd + q0 + q1 - r + 1
    th, tw = -(-oh // m), -(-ow // m)
    xp = jnp.pad(x, ((0, 0), (p0, p1 + th * m - oh), (q0, q1 + tw * m - ow), (0, 0)))
    v = _tiles(xp, bt, m, (th, tw))
    u = _tiles(w.reshape(1, r, r, -1), gm, 1, (1, 1)).reshape(a * a, c_in, -1)  # G w G^T
    prod = lax.dot_general(v, u, BATCHED, precision=precision)
    y = _untile_matmul(at, prod, precision).reshape(m, m, b, th, tw, -1)  # (col, row, ...)
    y = y.transpose(2, 3, 1, 4, 0, 5).reshape(b, th * m, tw * m, -1)
    return y[:, :oh, :ow], v


def conv_grads(g, v, w, x_shape, padding, m: int, precision=None):
    """(dL/dx, dL/dw) of `conv` from g = dL/dy and the forward pass's V: the gradient of
    Winograd's own three stages. Z = A g A^T (m x m tiles of g, non-overlapping) is shared:
    dL/dU = V^T Z and dL/dV = Z U^T are the matmuls, dw = G^T dU G, and each tile's
    B dV B^T is added into the (overlapping) input window it came from. Against the
    gradients as two more convolutions, neither g nor x is transformed a second time.
    U^T is transformed from the transposed kernel (cheap): a matmul with a transposed
    operand ran at half speed (XLA's CPU dot, measured)."""
    r = w.shape[0]
    a = m + r - 1
    at, gm, bt = matrices(m, r)
    (p0, _), (q0, _) = padding
    b, h, wd, c_in = x_shape
    _, oh, ow, c_out = g.shape
    th, tw = -(-oh // m), -(-ow // m)
    gp = jnp.pad(g, ((0, 0), (0, th * m - oh), (0, tw * m - ow), (0, 0)))
    z = _grad_tiles(gp, at, precision)  # (a*a, tiles, c_out)
    out_type = jnp.promote_types(g.dtype, jnp.float32)
    du = lax.dot_general(v, z.astype(v.dtype), (((1,), (1,)), ((0,), (0,))),
                         precision=precision, preferred_element_type=out_type)
    dw = _untile_matmul(gm.T, du, precision).transpose(1, 0, 2, 3)
    ut = _tiles(jnp.swapaxes(w, 2, 3).reshape(1, r, r, -1), gm, 1, (1, 1))
    dv = lax.dot_general(z, ut.reshape(a * a, c_out, c_in), BATCHED, precision=precision)
    dd = _untile_matmul(bt.T, dv, precision).reshape(a, a, b, th, tw, c_in)  # (col, row, ...)
    dxp = _overlap_add(dd, m)
    return dxp[:, p0:p0 + h, q0:q0 + wd], dw


def _overlap_add(dd, m: int):
    """Sum each a x a tile (dd: (col, row, b, th, tw, c), tiles m apart, a <= 2m) into the
    window it covers: (b, (th + 1) * m, (tw + 1) * m, c). Stacked by row, so materialised
    (fused into a consumer that reads it several times, it would be recomputed each time)."""
    a, _, b, th, tw, c = dd.shape
    dd = jnp.pad(dd, ((0, 2 * m - a), (0, 2 * m - a)) + ((0, 0),) * 4)
    halves = dd.reshape(2, m, 2, m, b, th, tw, c)  # (col half, col, row half, row, ...)
    rows = []
    for row in range(m):
        total = 0
        for sh in range(2):
            for sw in range(2):
                part = halves[sw, :, sh, row].transpose(1, 2, 3, 0, 4)  # (b, th, tw, col, c)
                total = total + jnp.pad(part, ((0, 0), (sh, 1 - sh), (sw, 1 - sw), (0, 0),
                                               (0, 0)))
        rows.append(total)
    return jnp.stack(rows, axis=2).reshape(b, (th + 1) * m, (tw + 1) * m, c)
