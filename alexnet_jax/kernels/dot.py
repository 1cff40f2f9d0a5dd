"""A dense layer's matmul in bfloat16 on the CPU, without XLA's slow path.

Why: XLA's CPU runs a bf16 x bf16 -> bf16 dot converted to float32 and back (slower than
float32 itself), but a dot on bf16 operands with `preferred_element_type=float32` on its
bf16 kernels (AVX512-BF16, AMX). So `matmul` of bf16 inputs and a float32 kernel is, on the
CPU, a float32 dot (no bf16 units), or with `products` "bfloat16" a dot on bf16 operands
with float32 sums, forward and both gradients; the kernel's gradient comes back in float32.
GPUs and TPUs keep XLA's own bf16 dots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

PLAIN = (((1,), (0,)), ((), ()))  # (batch, in) @ (in, out): nn.Dense on flattened features


def _dot(a, b, dims, precision, products):
    """a . b on `products` operands (float32 when None), summed in float32."""
    kind = products or jnp.float32
    return lax.dot_general(a.astype(kind), b.astype(kind), dims, precision=precision,
                           preferred_element_type=jnp.float32)


def _xla(x, w, precision):
    return lax.dot_general(x, w.astype(x.dtype), PLAIN, precision=precision)


def _forward(x, w, precision, products):
    return lax.platform_dependent(
        x, w, cpu=lambda x, w: _dot(x, w, PLAIN, precision, products).astype(x.dtype),
        default=lambda x, w: _xla(x, w, precision))


matmul = jax.custom_vjp(_forward, nondiff_argnums=(2, 3))
matmul.__doc__ = "x @ w for x (batch, in) and w (in, out), in x's dtype (see the module)."


def _matmul_fwd(x, w, precision, products):
    return _forward(x, w, precision, products), (x, w)


def _matmul_bwd(precision, products, residuals, g):
    x, w = residuals

    def cpu(x, w, g):
        dx = _dot(g, w, (((1,), (1,)), ((), ())), precision, products)
        dw = _dot(x, g, (((0,), (0,)), ((), ())), precision, products)
        return dx.astype(x.dtype), dw.astype(w.dtype)

    def default(x, w, g):
        return jax.vjp(lambda x, w: _xla(x, w, precision), x, w)[1](g)

    return lax.platform_dependent(x, w, g, cpu=cpu, default=default)


matmul.defvjp(_matmul_fwd, _matmul_bwd)
