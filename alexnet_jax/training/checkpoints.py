"""Orbax checkpoints of the train state: atomic, asynchronous, the last few kept.

A checkpoint holds the step, params, optimizer state, dropout key and the running sums of
the current epoch's metrics, which is all a resumed run needs to continue bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ..config import D2L

# Where `train` moves checkpoints it cannot resume from (beside checkpoints/).
CORRUPTED, DIVERGED = "corrupted_checkpoints", "diverged_checkpoints"


class CheckpointError(RuntimeError):
    """No usable checkpoint: the message names the path and what was wrong."""


class CorruptCheckpoint(CheckpointError):
    """Proven damaged on disk, not merely unfit for this model or environment."""


class DivergedCheckpoint(CheckpointError):
    """Sound on disk but holds NaN or infinite values: saved after its run had diverged
    (earlier versions saved such states; this one never does)."""


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).absolute() / "checkpoints"


class Manager(ocp.CheckpointManager):
    """orbax's manager, with `finish`: wait for the last save and its digest (`save`)."""

    digesting: threading.Thread | None = None
    digest_error: BaseException | None = None

    def finish(self) -> None:
        """orbax's `wait_until_finished` (which orbax calls itself, so that is left as it is),
        and the digest thread's end."""
        if self.digesting is not None:
            self.digesting.join()
            self.digesting = None
        if self.digest_error is not None:
            err, self.digest_error = self.digest_error, None
            raise CheckpointError(f"the checkpoint's SHA-256 could not be written: {err}")
        super().wait_until_finished()

    def close(self) -> None:
        self.finish()
        super().close()


def manager(workdir: str | Path, keep: int = D2L.keep_checkpoints,
            read_only: bool = False) -> Manager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, create=not read_only,
        read_only=read_only, cleanup_tmp_directories=not read_only,
    )
    return Manager(checkpoint_dir(workdir), options=options)


def tree_digest(tree: dict[str, Any]) -> str:
    """SHA-256 over every array's path, dtype, shape and bytes: catches bit rot on disk."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree)):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(a)  # its buffer as it is: the bytes of a.tobytes(), without that copy
    return h.hexdigest()


@jax.jit
def _finite_leaves(tree):
    """Per leaf: True when every value is finite (non-float leaves are)."""
    return jax.tree.map(lambda x: jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.inexact)
                        else jnp.bool_(True), tree)


def non_finite(tree) -> list[str]:
    """Paths of the leaves of `tree` that hold a NaN or an infinity (on device, in one pass)."""
    finite = jax.device_get(_finite_leaves(tree))
    return [jax.tree_util.keystr(path)
            for path, ok in jax.tree_util.tree_leaves_with_path(finite) if not ok]


def _digest_path(mngr: ocp.CheckpointManager, step: int) -> Path:
    return Path(mngr.directory).parent / "checkpoint_digests" / f"{step}.sha256"


def save(mngr: Manager, step: int, tree: dict[str, Any]) -> None:
    """Start an asynchronous, atomic save (orbax writes a temporary folder, then renames),
    and its SHA-256 digest on a thread, from a host copy of the state taken now (the next
    step reuses the state's buffers). Hashing 47M parameters takes 0.12 s of a CPU core that
    the step would otherwise wait for (benchmarks/NOTES.md 33). A process killed after orbax
    finalizes but before the digest lands leaves a checkpoint without one: it restores
    unverified, as checkpoints of versions before digests do."""
    mngr.finish()  # the last save's digest and files are complete
    if jax.process_index() == 0:  # orbax's primary host; every process saves its shards
        host = jax.tree.map(lambda a: np.array(a, copy=True), jax.device_get(tree))
        _prune_digests(mngr, step)
        mngr.digesting = threading.Thread(target=_write_digest, args=(mngr, step, host),
                                          name=f"checkpoint {step} digest", daemon=True)
        mngr.digesting.start()
    mngr.save(step, args=ocp.args.StandardSave(tree), force=True)


def _write_digest(mngr: Manager, step: int, host_tree: dict[str, Any]) -> None:
    try:
        digest = _digest_path(mngr, step)
        digest.parent.mkdir(parents=True, exist_ok=True)
        tmp = digest.with_suffix(".tmp")
        tmp.write_text(tree_digest(host_tree) + "\n")
        os.replace(tmp, digest)
    except BaseException as err:  # raised by the next Manager.finish
        mngr.digest_error = err


def _prune_digests(mngr: ocp.CheckpointManager, step: int) -> None:
    """Drop the digests of checkpoints orbax has already deleted (max_to_keep)."""
    kept = set(mngr.all_steps()) | {step}
    for path in _digest_path(mngr, step).parent.glob("*.sha256"):
        if path.stem.isdigit() and int(path.stem) < min(kept):
            path.unlink(missing_ok=True)


def _layout(tree) -> dict[str, tuple[str, tuple[int, ...]]]:
    """keystr path -> (dtype, shape) of every array in `tree` (arrays or orbax metadata)."""
    return {jax.tree_util.keystr(path): (str(np.dtype(leaf.dtype)), tuple(leaf.shape))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_fits(path: Path, target: dict[str, Any]) -> None:
    """Raise CheckpointError (not corruption) when the saved tree cannot fill `target`."""
    try:
        metadata = ocp.StandardCheckpointer().metadata(path / "default")
        saved = _layout(getattr(metadata, "item_metadata", metadata).tree)
    except Exception as err:  # orbax raises many types for a damaged metadata file
        raise CorruptCheckpoint(f"its metadata cannot be read ({type(err).__name__}: {err})") \
            from err
    wanted = _layout(target)
    if saved == wanted:
        return
    if not jax.config.jax_enable_x64 and any(d == "float64" for d, _ in saved.values()):
        raise CheckpointError(f"checkpoint {path} holds float64 arrays (a --dtype float64 run): "
                              "set JAX_ENABLE_X64=1 to read it")
    diffs = [f"{k}: saved {saved.get(k)}, expected {wanted.get(k)}"
             for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    raise CheckpointError(f"checkpoint {path} does not fit this model and settings: "
                          + "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else ""))


def _restore_one(mngr: ocp.CheckpointManager, step: int, target: dict[str, Any]):
    path = Path(mngr.directory) / str(step)
    _check_fits(path, target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        tree = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # its layout fits, so the bytes themselves are unreadable
        raise CorruptCheckpoint(f"its arrays cannot be read ({type(err).__name__}: {err})") \
            from err
    digest = _digest_path(mngr, step)
    if digest.is_file() and digest.read_text().strip() != tree_digest(tree):
        raise CorruptCheckpoint("its arrays do not match the SHA-256 recorded when it was saved "
                                f"({digest})")
    if bad := non_finite(tree):
        raise DivergedCheckpoint(f"it holds NaN or infinite values in {', '.join(bad[:3])}: its "
                                 "run had diverged when it was saved")
    return tree


def restore_latest(mngr: ocp.CheckpointManager, target: dict[str, Any], *,
                   quarantine: bool = False, strict: bool = False, step: int | None = None):
    """(step, tree) of the newest checkpoint that restores cleanly, or (None, None) if none.

    A checkpoint proven corrupt (unreadable bytes or metadata, a SHA-256 other than the one
    recorded at save) or diverged (NaN or infinite values) is reported with its path and
    skipped; with `quarantine` (only `train` asks) it is moved to corrupted_checkpoints/ or
    diverged_checkpoints/. With `strict`, or a `step` asked for, it stops instead. A
    checkpoint that is sound but does not fit this model or environment raises
    CheckpointError and is never moved: not its fault.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint at step {step} in {mngr.directory}; there are {sorted(steps)}")
        steps = [step]
    for s in steps:
        path = Path(mngr.directory) / str(s)
        try:
            return s, _restore_one(mngr, s, target)
        except (CorruptCheckpoint, DivergedCheckpoint) as err:
            diverged = isinstance(err, DivergedCheckpoint)
            message = f"checkpoint {path} is {'diverged' if diverged else 'corrupted'}: {err}"
            if strict or step is not None:
                raise CheckpointError(message) from err
            if quarantine:
                aside = DIVERGED if diverged else CORRUPTED
                message += f"; moved it to {_quarantine(mngr, path, aside)}"
            print(f"warning: {message}; trying an earlier checkpoint", flush=True)
    return None, None


def none_usable(workdir: Path, saved: list[int]) -> str:
    """What to say when every one of the `saved` checkpoints was moved aside."""
    where = checkpoint_dir(workdir)
    if all((Path(workdir) / DIVERGED / str(s)).is_dir() for s in saved):
        return (f"every checkpoint in {where} holds NaN or infinite values (moved to {DIVERGED}/):"
                " the run had diverged by its first one, so nothing was retrained; start over "
                "with a smaller --lr and --restart")
    return (f"every checkpoint in {where} is corrupted or diverged (moved to {CORRUPTED}/ or "
            f"{DIVERGED}/), so nothing was retrained; run the same command with --restart to "
            "start this run over")


def _quarantine(mngr: ocp.CheckpointManager, path: Path, folder: str) -> Path:
    """Move a corrupt or diverged checkpoint out of orbax's way, kept for inspection; every
    process of a multi-process run reloads only once process 0 has moved it."""
    aside = Path(mngr.directory).parent / folder / path.name
    if jax.process_index() == 0:
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"alexnet-jax quarantine {path}")
    mngr.reload()
    return aside
