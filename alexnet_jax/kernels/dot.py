"""The CPU model's dense matmul, for every dtype: XLA's slow bf16 path avoided, and the
kernel's gradient computed in the kernel's own layout.

Why: XLA's CPU runs a bf16 x bf16 -> bf16 dot converted to float32 and back (slower than
float32 itself). So `matmul` of bf16 inputs and a float32 kernel is a float32 dot, forward
and both gradients, its output and the input's gradient stored in bf16, the kernel's
gradient in float32; float32 and float64 compute in their own dtype. And JAX's own rule
computes the kernel's gradient as g^T x, then transposes it: with the batch split over
several devices, the gradients' all-reduce lands between the two, and every step transposed
fc1's and fc2's gradients (172 MB) with a strided copy, which made a 2-device step take 0.73
s instead of 0.34 (NOTES.md 44). Only `model/build.py`'s CPU model takes it: GPUs and TPUs
keep XLA's own dots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

PLAIN = (((1,), (0,)), ((), ()))  # (batch, in) @ (in, out): nn.Dense on flattened features


def _dot(a, b, dims, precision):
    """a . b in float32 arithmetic at least (bf16 operands promoted, float64 kept)."""
    t = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
    return lax.dot_general(a.astype(t), b.astype(t), dims, precision=precision,
                           preferred_element_type=t)


def _forward(x, w, precision):
    return _dot(x, w, PLAIN, precision).astype(x.dtype)


matmul = jax.custom_vjp(_forward, nondiff_argnums=(2,))
matmul.__doc__ = "x @ w for x (batch, in) and w (in, out), in x's dtype (see the module)."


def _matmul_fwd(x, w, precision):
    return _forward(x, w, precision), (x, w)


def _matmul_bwd(precision, residuals, g):
    x, w = residuals
    dx = _dot(g, w, (((1,), (1,)), ((), ())), precision)
    dw = _dot(x, g, (((0,), (0,)), ((), ())), precision)  # (in, out): no transpose after it
    return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)
