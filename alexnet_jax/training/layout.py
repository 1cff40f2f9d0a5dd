"""A work dir's layout: the name of every record a run keeps there, and who writes it.

Everything that reads or writes a work dir takes the names from here, and `train --restart`
sets aside every one of RECORDS (nothing of an earlier run is left to mix with the next).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CONFIG = "config.json"  # run_dir: the settings, package versions and devices
METRICS = "metrics.jsonl"  # metrics_log: d2l's points, one JSON object a line
CURVES = "curves.png"  # loop: d2l's plot, redrawn each epoch
EVENTS = "tensorboard"  # metrics_log, through observe/events: metrics.jsonl's mirror
PROFILE = "profile"  # loop, through observe/profiling: the --profile-steps traces
CHECKPOINTS = "checkpoints"  # checkpoints: orbax's, each with its SHA-256
LEGACY_DIGESTS = "checkpoint_digests"  # earlier versions' digests: read, never written
CORRUPTED = "corrupted_checkpoints"  # checkpoints: proven damaged, set aside by train
DIVERGED = "diverged_checkpoints"  # checkpoints: NaN or inf, set aside by train
RECORDS = (CONFIG, METRICS, CURVES, EVENTS, PROFILE, CHECKPOINTS, LEGACY_DIGESTS, CORRUPTED,
           DIVERGED)

LOCK = "train.lock"  # lock: the train that runs here (stays where it is)
REPLACED = "replaced"  # set_aside (below): each earlier run's RECORDS, in a folder by time


def set_aside(workdir: Path) -> Path | None:
    """`train --restart`: move the run's records to WORKDIR/replaced/TIME/; nothing is lost."""
    present = [workdir / name for name in RECORDS if (workdir / name).exists()]
    aside = workdir / REPLACED / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for path in present:
        aside.mkdir(parents=True, exist_ok=True)
        path.rename(aside / path.name)
    return aside if present else None
