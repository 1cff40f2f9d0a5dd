"""The model a run trains: d2l's AlexNet in a --dtype, with the CPU-fast conv, pool and dense.

bfloat16 on a CPU: float32 arithmetic with the activations stored in bf16, or (asked for)
products on bf16 operands with float32 sums; either way never XLA's CPU bf16 convolutions
and dots, which convert to float32 and back.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..config import D2L, DTYPES
from ..kernels import layers
from ..kernels.conv import conv_general_dilated
from ..kernels.pool import max_pool
from .alexnet import AlexNet

# On CPU their gradients are several times faster than XLA's (benchmarks/NOTES.md); on GPU
# and TPU they are XLA's own. Module-level, so that equal models compare equal under jit.
FAST_CONV = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
FAST_POOL = max_pool
# bfloat16 on the CPU, by its products' operands: float32 (no bf16 units) or bfloat16.
BF16_LAYERS = {products: (functools.partial(layers.Conv, products=products),
                          functools.partial(layers.Dense, products=products))
               for products in (None, "bfloat16")}


def build_model(dtype: str = D2L.dtype, num_classes: int = D2L.num_classes,
                dropout: float = D2L.dropout, bf16_products: bool = False,
                for_cpu: bool | None = None) -> AlexNet:
    """d2l's AlexNet in `dtype` (a --dtype name), with the CPU-fast conv and pool.

    bfloat16 `for_cpu` (by default: when JAX's default backend is the CPU) takes the layers
    of kernels/layers.py; GPUs and TPUs keep flax's, with XLA's bf16 convolutions.
    `bf16_products`: there, products on bf16 operands with float32 sums (what bf16 units are
    for), else float32 arithmetic on the bf16 activations. Off by default: on an AVX512-BF16
    CPU the bf16 forms ran 1.5-2.5x slower than float32's Winograd (benchmarks/NOTES.md, 38);
    benchmark's jax-bf16-products row measures them elsewhere."""
    compute, param = (None if name is None else jnp.dtype(name) for name in DTYPES[dtype])
    conv, dense = FAST_CONV, nn.Dense
    if dtype == "bfloat16" and (jax.default_backend() == "cpu" if for_cpu is None else for_cpu):
        conv, dense = BF16_LAYERS["bfloat16" if bf16_products else None]
    return AlexNet(num_classes=num_classes, dropout_rate=dropout, dtype=compute,
                   param_dtype=param, conv=conv, pool=FAST_POOL, dense=dense)
