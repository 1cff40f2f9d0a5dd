"""Padding examples: the contract between the input pipeline, which fills a last partial
batch up to a multiple of the devices with them, and the steps, which leave them out of the
loss, the gradient and the metrics."""

from __future__ import annotations

import math

import numpy as np

# Example index, and label, of a padding example.
PAD = -1


def padded_size(size: int, num_devices: int) -> int:
    """A last partial batch is filled up to a multiple of the devices with padding examples."""
    return math.ceil(size / num_devices) * num_devices


def pad_indices(indices: np.ndarray, num_devices: int) -> np.ndarray:
    """Example indices of one global batch, with PAD for padding examples."""
    pad = padded_size(len(indices), num_devices) - len(indices)
    return np.concatenate([indices, np.full(pad, PAD, indices.dtype)]) if pad else indices


def is_real(indices_or_labels):
    """True for real examples, False for padding (numpy, JAX or TensorFlow arrays)."""
    return indices_or_labels != PAD
