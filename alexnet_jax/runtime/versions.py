"""Installed package versions, recorded beside every run and benchmark."""

from __future__ import annotations

import contextlib
from importlib import metadata


def package_versions(names=("alexnet-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
                            "tensorflow-datasets", "tensorflow", "tensorflow-cpu", "numpy",
                            "torch")) -> dict[str, str]:
    """Installed versions of `names` (those not installed are left out)."""
    versions = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions
