"""The two input pipelines: the same batches, computed on the host or on the device.

Both order an epoch by `epoch_order(seed, epoch)` and keep d2l's last partial batch, so for
the same (seed, epoch) they give the same examples in the same order with the same pixels
(Pillow's bilinear resize, exactly), and a run can switch between them.

- host: tf.data over the tfds arrays; parallel resize to 224x224 float32; prefetch; numpy out.
- device: the uint8 split lives on the device; each step sends only the example indices and
  the jitted step resizes (`model_input`), so the host moves 4 bytes per image, not 200 KB.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .fashion_mnist import Split
from .resize import PIXEL_TO_FLOAT, resize_uint8_jax, resize_uint8_tf, to_model_input

IMAGE_SIZE = 224
PIPELINES = ("device", "host")


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The example order of one epoch: a fresh permutation per (seed, epoch) when shuffling."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def num_batches(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def batch_spec(kind: str, size: int):
    """Shapes and dtypes of a batch from pipeline `kind`, for compiling ahead of time."""
    shape, dtype = ((size, 28, 28), jnp.uint8) if kind == "device" else \
        ((size, IMAGE_SIZE, IMAGE_SIZE, 1), jnp.float32)
    return jax.ShapeDtypeStruct(shape, dtype), jax.ShapeDtypeStruct((size,), jnp.int32)


def model_input(images):
    """Model input from what a pipeline delivers, traced inside the jitted steps.

    (B, 28, 28) uint8 (device pipeline) is resized here, as d2l's Resize + ToTensor;
    (B, 224, 224, 1) float32 (host pipeline) is already model input.
    """
    if images.dtype == jnp.uint8:
        return to_model_input(resize_uint8_jax(images, IMAGE_SIZE), jnp)
    return images


@dataclass
class Batch:
    images: object  # what `model_input` takes
    labels: object  # (B,) int32
    size: int  # number of examples (the last batch of an epoch is smaller)


class HostPipeline:
    """tf.data: gather, resize (exact Pillow, parallel), prefetch, numpy batches."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take GPU memory
        self._tf = tf
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self._images = tf.constant(split.images)
        self._labels = tf.constant(split.labels)

    def __len__(self) -> int:
        return num_batches(len(self.split), self.batch_size)

    def _load(self, indices):
        tf = self._tf
        images = resize_uint8_tf(tf.gather(self._images, indices), IMAGE_SIZE)
        images = tf.gather(PIXEL_TO_FLOAT, tf.cast(images, tf.int32))[..., None]
        return images, tf.gather(self._labels, indices)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        tf = self._tf
        order = epoch_order(len(self.split), self.seed, epoch, self.shuffle)
        ds = tf.data.Dataset.from_tensor_slices(order[start_batch * self.batch_size :])
        ds = ds.batch(self.batch_size, drop_remainder=False)
        ds = ds.map(self._load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.prefetch(tf.data.AUTOTUNE)
        for images, labels in ds.as_numpy_iterator():
            yield Batch(images, labels, len(labels))


@jax.jit
def _gather(images, labels, indices):
    return images[indices], labels[indices]


class DevicePipeline:
    """The uint8 split on the device; each batch is a device-side gather of its indices."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int,
                 sharding: jax.sharding.Sharding | None = None):
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self._images = jax.device_put(split.images, sharding)
        self._labels = jax.device_put(split.labels, sharding)

    def __len__(self) -> int:
        return num_batches(len(self.split), self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        order = epoch_order(len(self.split), self.seed, epoch, self.shuffle).astype(np.int32)
        for b in range(start_batch, len(self)):
            indices = order[b * self.batch_size : (b + 1) * self.batch_size]
            images, labels = _gather(self._images, self._labels, indices)
            yield Batch(images, labels, len(indices))


def make_pipeline(kind: str, split: Split, batch_size: int, shuffle: bool, seed: int):
    if kind == "host":
        try:
            return HostPipeline(split, batch_size, shuffle, seed)
        except ImportError as err:
            raise RuntimeError(
                f"the host pipeline runs on tf.data, which needs TensorFlow ({err}); "
                "use --pipeline device"
            ) from err
    if kind == "device":
        return DevicePipeline(split, batch_size, shuffle, seed)
    raise ValueError(f"pipeline must be one of {PIPELINES}, got {kind!r}")
