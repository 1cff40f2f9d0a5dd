"""The two input pipelines: the same batches, computed on the host or on the device.

Both order an epoch by `epoch_order(seed, epoch)` and keep d2l's last partial batch, so for
the same (seed, epoch) they give the same examples in the same order with the same pixels
(Pillow's bilinear resize, exactly), and a run can switch between them.

- host: tf.data over the tfds arrays; parallel resize to 224x224 float32; prefetch; numpy out.
- device: the uint8 split lives on the devices; each step sends only the example indices and
  a jitted gather resizes the batch there (`model_input`), so the host moves 4 bytes per
  image, not 200 KB. The resize is its own computation, not part of the train step's: inside
  the step it made the step 5-7% slower on a CPU (benchmarks/NOTES.md, section 30).

Both deliver the model's input: (B, 224, 224, 1) float32.

With several devices a batch is sharded over them; a last partial batch that they cannot share
equally is filled up with padding examples (padding.PAD), which the steps leave out of the loss
and the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ..config import IMAGE_SIZE, PIPELINES
from ..runtime.parallel import batch_sharding, global_array, make_mesh, process_rows
from ..runtime.tf_import import import_quietly
from .fashion_mnist import Split
from .padding import PAD, is_real, pad_indices, padded_size
from .preprocess import PIXEL_TO_FLOAT, model_input, resize_uint8_tf


def epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The example order of one epoch: a fresh permutation per (seed, epoch) when shuffling."""
    if not shuffle:
        return np.arange(num_examples)
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def num_batches(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


@dataclass
class Batch:
    images: jax.Array  # (B, 224, 224, 1) float32 model input, sharded over the `data` axis
    labels: jax.Array  # (B,) int32; PAD marks padding examples
    size: int  # number of real examples (the last batch of an epoch is smaller)


class InputPipeline:
    """What both pipelines share: the epoch's batches of example indices, padded for the mesh."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int,
                 mesh: Mesh | None = None):
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.mesh = mesh if mesh is not None else make_mesh()
        self.sharding = batch_sharding(self.mesh)

    def __len__(self) -> int:
        return num_batches(len(self.split), self.batch_size)

    def batch_sizes(self) -> set[int]:
        """The batch shapes an epoch delivers: full, and the padded last partial one."""
        last = padded_size(len(self.split) % self.batch_size, self.mesh.size)
        return {self.batch_size, last} - {0}

    def batch_indices(self, epoch: int, start_batch: int) -> list[np.ndarray]:
        """Global example indices of each batch from `start_batch` on (PAD: padding)."""
        order = epoch_order(len(self.split), self.seed, epoch, self.shuffle).astype(np.int32)
        return [pad_indices(order[b * self.batch_size : (b + 1) * self.batch_size],
                            self.mesh.size) for b in range(start_batch, len(self))]


class HostPipeline(InputPipeline):
    """tf.data: gather, resize (exact Pillow, parallel), prefetch; each process loads only
    the rows of every global batch that its own devices hold."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int,
                 mesh: Mesh | None = None):
        tf = import_quietly("tensorflow")
        super().__init__(split, batch_size, shuffle, seed, mesh)
        tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take GPU memory
        self._tf = tf
        self._images = tf.constant(split.images)
        self._labels = tf.constant(split.labels)

    def _load(self, indices):
        tf = self._tf
        real = is_real(indices)
        indices = tf.where(real, indices, 0)
        images = resize_uint8_tf(tf.gather(self._images, indices), IMAGE_SIZE)
        images = tf.gather(PIXEL_TO_FLOAT, tf.cast(images, tf.int32))[..., None]
        labels = tf.where(real, tf.gather(self._labels, indices), PAD)
        return images, labels

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        tf = self._tf
        batches = self.batch_indices(epoch, start_batch)
        if not batches:
            return
        local = [b[process_rows(self.sharding, len(b))] for b in batches]
        # Every batch has the same length but the last: one tensor dataset each.
        same = len(local) if len(local[-1]) == len(local[0]) else len(local) - 1
        ds = tf.data.Dataset.from_tensor_slices(np.stack(local[:same]))
        if same < len(local):
            ds = ds.concatenate(tf.data.Dataset.from_tensor_slices(local[-1][None]))
        ds = ds.map(self._load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.prefetch(tf.data.AUTOTUNE)
        for indices, (images, labels) in zip(batches, ds.as_numpy_iterator()):
            yield Batch(global_array(self.sharding, images, len(indices)),
                        global_array(self.sharding, labels, len(indices)),
                        int(np.sum(is_real(indices))))


def _gather(images, labels, indices):
    """A batch's model input (d2l's Resize + ToTensor of the gathered uint8 images), labels."""
    real = is_real(indices)
    indices = jnp.where(real, indices, 0)
    return model_input(images[indices]), jnp.where(real, labels[indices], PAD)


class DevicePipeline(InputPipeline):
    """The uint8 split lives on the devices, sharded over them (one copy in all, not one per
    device); each batch is a device-side gather of its indices, resized there and delivered
    sharded."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool, seed: int,
                 mesh: Mesh | None = None):
        super().__init__(split, batch_size, shuffle, seed, mesh)
        stored = padded_size(len(split), self.mesh.size)  # a sharded array splits evenly
        self._images = self._put(split.images, stored)
        self._labels = self._put(split.labels, stored)
        self._gather = jax.jit(_gather, out_shardings=(self.sharding, self.sharding))

    def _put(self, array: np.ndarray, stored: int) -> jax.Array:
        padded = np.zeros((stored, *array.shape[1:]), array.dtype)
        padded[: len(array)] = array
        return jax.make_array_from_callback(padded.shape, self.sharding, lambda i: padded[i])

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        for indices in self.batch_indices(epoch, start_batch):
            images, labels = self._gather(self._images, self._labels, indices)
            yield Batch(images, labels, int(np.sum(is_real(indices))))


def make_pipeline(kind: str, split: Split, batch_size: int, shuffle: bool, seed: int,
                  mesh: Mesh | None = None):
    if kind == "host":
        try:
            return HostPipeline(split, batch_size, shuffle, seed, mesh)
        except ImportError as err:
            raise RuntimeError(
                f"the host pipeline runs on tf.data, which needs TensorFlow ({err}); "
                "use --pipeline device"
            ) from err
    if kind == "device":
        return DevicePipeline(split, batch_size, shuffle, seed, mesh)
    raise ValueError(f"pipeline must be one of {PIPELINES}, got {kind!r}")
