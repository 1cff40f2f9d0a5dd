"""A run's settings: checked before anything is written, kept in config.json, compared when
the run continues; and the one safe way to write a record (whole, or as it was).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import jax
import numpy as np

from ..config import DTYPES, TrainConfig
from ..runtime.versions import package_versions
from . import layout

# Settings that define a run: a work dir refuses to continue with other values.
RUN_DEFINING = ("batch_size", "lr", "seed", "dtype", "limit_train", "limit_test", "num_classes",
                "dropout", "augment")
class RunError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


def x64_missing(dtype: str) -> bool:
    """Whether a --dtype needs JAX's 64-bit mode and this process runs without it."""
    return np.dtype(DTYPES[dtype][1]).itemsize == 8 and not jax.config.jax_enable_x64


def check_config(config: TrainConfig) -> None:
    """Refuse, before anything is written, settings that cannot give the run they describe."""
    if not str(config.workdir).strip():
        raise ValueError("--workdir must name a folder; got an empty string")
    for name in ("epochs", "batch_size", "keep_checkpoints", "checkpoint_every_steps",
                 "limit_train", "limit_test"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if not 0 <= config.dropout < 1:
        raise ValueError(f"--dropout is a probability from 0 to below 1, got {config.dropout}")
    if config.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {config.dtype}")
    if x64_missing(config.dtype):
        raise ValueError("--dtype float64 needs JAX's 64-bit mode: set JAX_ENABLE_X64=1")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"--lr must be a positive number, got {config.lr}")
    limits = np.finfo(np.dtype(DTYPES[config.dtype][1]))
    if not limits.tiny <= config.lr <= limits.max:
        raise ValueError(
            f"--lr {config.lr} is {'0' if config.lr < limits.tiny else 'inf'} in the "
            f"{limits.dtype} parameters (XLA flushes subnormals to 0), so the run would not "
            f"train; use an lr from {limits.tiny:.3g} to {limits.max:.3g}")
    if not 0 <= config.seed < 2**63:
        raise ValueError(f"--seed must be from 0 to 2**63 - 1 (what JAX's and NumPy's random "
                         f"generators take), got {config.seed}")


def read_config(workdir: str | Path) -> dict:
    """The record in a work dir's config.json."""
    path = Path(workdir) / layout.CONFIG
    if not Path(workdir).is_dir():
        raise RunError(f"work dir {workdir} does not exist; train or convert into it first")
    if not path.is_file():
        raise RunError(f"{path} is missing: {workdir} is not a work dir of alexnet-jax")
    try:
        record = json.loads(path.read_text())
        if isinstance(record, dict) and isinstance(record.get("settings"), dict):
            return record
        problem = "it holds no settings"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"{type(err).__name__}: {err}"
    raise RunError(f"{path} cannot be read ({problem}); it records the run's settings: restore "
                   "it, or start the run over with `train --restart` (the old records are kept)")


def saved_config(workdir: str | Path) -> TrainConfig:
    """The TrainConfig recorded in a work dir (a converted one records fewer settings)."""
    return TrainConfig.from_dict(read_config(workdir)["settings"])


def continued_records(config: TrainConfig) -> dict:
    """Check that the work dir's config.json (if any) describes this same run.

    Returns what it records besides the settings that a new config.json must keep (where a
    converted checkpoint came from).
    """
    workdir = Path(config.workdir)
    if not (workdir / layout.CONFIG).exists():
        return {}
    record = read_config(workdir)
    saved = record["settings"]
    conflicts = [f"{k}={saved[k]!r} in {workdir / layout.CONFIG}, {getattr(config, k)!r} now"
                 for k in RUN_DEFINING if k in saved and saved[k] != getattr(config, k)]
    if conflicts:
        raise RunError(
            "these settings conflict with the run in this work dir: " + "; ".join(conflicts)
            + ". Use another --workdir, the saved settings to continue that run, or --restart "
            "to start it over (its records are kept aside)."
        )
    return {k: v for k, v in record.items() if k == "converted_from"}


def write_config(workdir: Path, config: TrainConfig, only=None, extra=None) -> None:
    """config.json: the settings (or `only` those), package versions and devices (one process
    of a run writes it)."""
    settings = dataclasses.asdict(config)
    record = {
        "settings": {k: settings[k] for k in only} if only else settings,
        **(extra or {}),
        "versions": package_versions(),
        "devices": [str(d) for d in jax.devices()],
        "num_processes": jax.process_count(),
        "device_kind": jax.devices()[0].device_kind,
        "python": sys.version.split()[0],
    }
    write_atomic(workdir / layout.CONFIG, json.dumps(record, indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """`path` holds `text`, or (a full disk, a read-only folder) what it held before."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise cannot_write(path, err) from err


def cannot_write(path: Path, err: OSError) -> RunError:
    """One line for a write that failed: the path and the system's reason."""
    return RunError(f"cannot write {path}: {err.strerror or err}. Nothing saved before was "
                    "lost: free space or fix the folder, then run the same command again")
