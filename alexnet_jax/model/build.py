"""The model a run trains: d2l's AlexNet in a --dtype, with the CPU-fast conv and pool."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from ..config import D2L, DTYPES
from ..kernels.conv import conv_general_dilated
from ..kernels.pool import max_pool
from .alexnet import AlexNet

# On CPU their gradients are several times faster than XLA's (benchmarks/NOTES.md); on GPU
# and TPU they are XLA's own. Module-level, so that equal models compare equal under jit.
FAST_CONV = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
FAST_POOL = max_pool


def build_model(dtype: str = D2L.dtype, num_classes: int = D2L.num_classes,
                dropout: float = D2L.dropout) -> AlexNet:
    """d2l's AlexNet in `dtype` (a --dtype name), with the CPU-fast conv and pool."""
    compute, param = (None if name is None else jnp.dtype(name) for name in DTYPES[dtype])
    return AlexNet(num_classes=num_classes, dropout_rate=dropout, dtype=compute,
                   param_dtype=param, conv=FAST_CONV, pool=FAST_POOL)
