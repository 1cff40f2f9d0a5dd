"""The model a run trains: d2l's AlexNet in a --dtype, with the kernels of the backend it runs on.

The one place that says which kernels run where: on the CPU the fast conv, pool and dense of
kernels/; on GPUs and TPUs flax's own layers, so XLA's convolutions
(cuDNN's, the TPU compiler's) and bf16 dots. The caller passes the backend it decided once.
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

# Module-level, so that equal models compare equal under jit.
FAST_CONV = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
# (conv, pool, dense) per compute dtype on the CPU: bfloat16 runs float32 arithmetic on bf16
# activations (kernels/layers.py), never XLA's CPU bf16 convolutions and dots, which convert
# to float32 and back; the bf16-products forms ran slower on every CPU measured (NOTES.md 38, 39).
# The dense layer is kernels/'s in every dtype: its kernel gradient needs no transpose, which
# XLA's CPU could not fold away under data parallelism (kernels/dot.py).
CPU_LAYERS = {"bfloat16": (layers.Conv, max_pool, layers.Dense)}
CPU_DEFAULT = (FAST_CONV, max_pool, layers.Dense)
XLA_LAYERS = (nn.Conv, nn.max_pool, nn.Dense)


@functools.cache
def build_model(dtype: str = D2L.dtype, num_classes: int = D2L.num_classes,
                dropout: float = D2L.dropout, backend: str | None = None) -> AlexNet:
    """d2l's AlexNet in `dtype` (a --dtype name) with the layers for `backend` ("cpu", "gpu",
    "tpu"; by default JAX's default backend): the CPU-fast kernels on "cpu", flax's elsewhere.
    One object per setting, so that a state's apply_fn (its bound method) is the same in
    every run of a process, and jit reuses the steps traced for an earlier run."""
    compute, param = (None if name is None else jnp.dtype(name) for name in DTYPES[dtype])
    backend = backend or jax.default_backend()
    conv, pool, dense = (CPU_LAYERS.get(dtype, CPU_DEFAULT) if backend == "cpu"
                         else XLA_LAYERS)
    return AlexNet(num_classes=num_classes, dropout_rate=dropout, dtype=compute,
                   param_dtype=param, conv=conv, pool=pool, dense=dense)
