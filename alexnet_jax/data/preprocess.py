"""d2l's preprocessing, `Resize(224)` then `ToTensor`, bit for bit in JAX or TensorFlow.

d2l resizes with torchvision's `Resize(224)` on the uint8 PIL image, which is Pillow's
`Image.resize(..., BILINEAR)`. Pillow (src/libImaging/Resample.c) resamples in two
separable passes, width then height, with coefficients in 22-bit fixed point, rounding
and clamping to uint8 after each pass. We compute the same integer coefficients and
apply them as a few shifted int32 taps (JAX inside the jitted step, TensorFlow in tf.data),
so every backend gives exactly Pillow's pixels.
For 28 -> 224 each sum is at most 255 * 2**22 + 2**21 < 2**31: int32 is exact.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..config import IMAGE_SIZE

PRECISION_BITS = 32 - 8 - 2  # Pillow's PRECISION_BITS for 8-bit images
_HALF = 1 << (PRECISION_BITS - 1)
_SCALE = 1 << PRECISION_BITS


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


@functools.cache
def pillow_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, int32 weights), each (out_size, ksize): Pillow's precompute_coeffs."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear filter's support is 1
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), np.int32)
    weight = np.zeros((out_size, ksize), np.int32)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_bilinear((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        ww = sum(k)
        for x, w in enumerate(k):
            w = w / ww if ww != 0.0 else w
            fixed = math.trunc(-0.5 + w * _SCALE) if w < 0 else math.trunc(0.5 + w * _SCALE)
            index[xx, x] = xmin + x
            weight[xx, x] = fixed
    return index, weight


# A pass's integer weights (< 2**23) split in two halves of SPLIT_BITS: each product with a
# pixel and each sum of a few is below 2**24, so float32 matmuls compute them exactly.
SPLIT_BITS = 11


@functools.cache
def pass_matrices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's taps as an (in_size, out_size) matrix, split: (high, low) float32 halves with
    weight = high * 2**SPLIT_BITS + low."""
    index, weight = pillow_taps(in_size, out_size)
    full = np.zeros((in_size, out_size), np.int64)
    for t in range(index.shape[1]):
        np.add.at(full, (index[:, t], np.arange(out_size)), weight[:, t])
    high, low = np.divmod(full, 1 << SPLIT_BITS)
    return high.astype(np.float32), low.astype(np.float32)


def _taps_pass_jax(pixels, axis: int, out_size: int):
    """One of Pillow's passes on (B, H, W) pixels along `axis` (-1 or -2), exactly: two
    float32 matmuls at full precision (a gather was recomputed for each of the first
    convolution's reads inside the train step; a matmul's result is kept), summed in int32."""
    import jax.numpy as jnp
    from jax import lax

    high, low = pass_matrices(pixels.shape[axis], out_size)
    spec = "bhw,wo->bho" if axis == -1 else "bhw,ho->bow"
    x = pixels.astype(jnp.float32)
    sums = [jnp.einsum(spec, x, m, precision=lax.Precision.HIGHEST).astype(jnp.int32)
            for m in (high, low)]
    total = (sums[0] << SPLIT_BITS) + sums[1]
    return jnp.clip((total + _HALF) >> PRECISION_BITS, 0, 255)


def resize_uint8_jax(images, size: int = IMAGE_SIZE):
    """Pillow's bilinear resize in int32 JAX ops, for use inside jit; returns uint8."""
    import jax.numpy as jnp

    x = _taps_pass_jax(jnp.asarray(images), -1, size)  # width first, as Pillow
    x = _taps_pass_jax(x, -2, size)
    return x.astype(jnp.uint8)


# ToTensor's uint8 -> float32 division, as a table: XLA rewrites x / 255 as x * (1 / 255),
# which is 1 ulp off for about a third of the levels; a lookup is exact on every backend.
PIXEL_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def to_model_input(resized, xp=np):
    """torchvision's ToTensor on resized uint8 pixels: float32 in [0, 1], NHWC, one channel."""
    return xp.take(xp.asarray(PIXEL_TO_FLOAT), resized.astype(xp.int32), axis=0)[..., None]


def resize_uint8_tf(images, size: int = IMAGE_SIZE):
    """Pillow's bilinear resize in TensorFlow int32 ops (the same taps as JAX), for tf.data."""
    from ..runtime.tf_import import import_quietly

    tf = import_quietly("tensorflow")

    def one_pass(x, axis):
        index, weight = pillow_taps(x.shape[axis], size)
        total = 0
        for t in range(index.shape[1]):
            w = weight[:, t] if axis == -1 else weight[:, t, None]
            total = total + tf.gather(x, index[:, t], axis=axis) * tf.constant(w)
        return tf.clip_by_value(tf.bitwise.right_shift(total + _HALF, PRECISION_BITS), 0, 255)

    x = one_pass(tf.cast(images, tf.int32), -1)  # width first, as Pillow
    return tf.cast(one_pass(x, -2), tf.uint8)


def model_input(images):
    """The model's input from a batch of images, inside jit.

    (B, 28, 28) uint8 is resized here, as d2l's Resize + ToTensor (the device pipeline's
    gather calls it); (B, 224, 224, 1) float32 (what both pipelines deliver) is already
    model input, returned as it is.
    """
    import jax.numpy as jnp

    if images.dtype == jnp.uint8:
        return to_model_input(resize_uint8_jax(images, IMAGE_SIZE), jnp)
    return images


def batch_spec(size: int):
    """Shapes and dtypes of a pipeline's batch of `size` (model input, labels), for compiling
    ahead of time."""
    import jax
    import jax.numpy as jnp

    return (jax.ShapeDtypeStruct((size, IMAGE_SIZE, IMAGE_SIZE, 1), jnp.float32),
            jax.ShapeDtypeStruct((size,), jnp.int32))
