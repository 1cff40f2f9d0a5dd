"""A dense layer's matmul for bfloat16 activations on the CPU, without XLA's slow path.

Why: XLA's CPU runs a bf16 x bf16 -> bf16 dot converted to float32 and back (slower than
float32 itself). So `matmul` of bf16 inputs and a float32 kernel is a float32 dot, forward
and both gradients, its output and the input's gradient stored in bf16, the kernel's
gradient in float32. Only `model/build.py`'s CPU model takes it: GPUs and TPUs keep XLA's
own bf16 dots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

PLAIN = (((1,), (0,)), ((), ()))  # (batch, in) @ (in, out): nn.Dense on flattened features


def _dot(a, b, dims, precision):
    """a . b in float32 arithmetic."""
    return lax.dot_general(a.astype(jnp.float32), b.astype(jnp.float32), dims,
                           precision=precision, preferred_element_type=jnp.float32)


def _forward(x, w, precision):
    return _dot(x, w, PLAIN, precision).astype(x.dtype)


matmul = jax.custom_vjp(_forward, nondiff_argnums=(2,))
matmul.__doc__ = "x @ w for x (batch, in) and w (in, out), in x's dtype (see the module)."


def _matmul_fwd(x, w, precision):
    return _forward(x, w, precision), (x, w)


def _matmul_bwd(precision, residuals, g):
    x, w = residuals
    dx = _dot(g, w, (((1,), (1,)), ((), ())), precision)
    dw = _dot(x, g, (((0,), (0,)), ((), ())), precision)
    return dx.astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)
