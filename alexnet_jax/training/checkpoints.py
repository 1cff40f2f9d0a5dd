"""Orbax checkpoints of the train state: atomic, asynchronous, the last few kept.

A checkpoint holds the step, params, optimizer state, dropout key and the running sums of
the current epoch's metrics, which is all a resumed run needs to continue bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ..config import D2L
from .layout import CHECKPOINTS, CORRUPTED, DIVERGED, LEGACY_DIGESTS
from .steps import TrainState


class CheckpointError(RuntimeError):
    """No usable checkpoint: the message names the path and what was wrong."""


class CorruptCheckpoint(CheckpointError):
    """Proven damaged on disk, not merely unfit for this model or environment."""


class UnreadableCheckpoint(CheckpointError):
    """Its read failed every time, without proof of damage: the disk, permissions, memory."""


class DivergedCheckpoint(CheckpointError):
    """Sound on disk but holds NaN or infinite values: saved after its run had diverged
    (earlier versions saved such states; this one never does)."""


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).absolute() / CHECKPOINTS


# A checkpoint's two items: the train state, and the SHA-256 of its arrays (written with it,
# so kept, pruned and moved with it). Checkpoints of earlier versions hold only the state,
# their digest in LEGACY_DIGESTS/STEP.sha256 beside checkpoints/.
STATE, DIGEST = "default", "digest"
# tensorstore's status codes (the first word of its errors, all ValueError) for bytes that
# are missing, short or undecodable; anything else (I/O, permissions, memory) is not damage.
DAMAGE_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "FAILED_PRECONDITION", "NOT_FOUND")
# A read that fails is read again after each of these waits before anything is judged: a
# flaky disk or a network file system's hiccup passes, damage repeats (benchmarks/NOTES.md 40).
RETRY_WAITS_SECONDS = (0.5, 2.0)


class Manager(ocp.CheckpointManager):
    """orbax's manager, whose wait for the last save (which its `save` and `close` call too)
    turns a failed write into one line that names the checkpoint kept."""

    def wait_until_finished(self) -> None:
        try:
            super().wait_until_finished()
        except Exception as err:
            self.reload()  # the steps on disk, without the one that failed
            kept = self.latest_step()
            raise CheckpointError(
                f"a checkpoint could not be written in {self.directory} ({_first_line(err)}); "
                + (f"the newest complete one, step {kept}, is kept. " if kept is not None
                   else "no earlier one exists. ")
                + "Free space or fix the folder, then run the same command again") from err


def state_handler() -> ocp.StandardCheckpointHandler:
    """orbax's handler for the state, its arrays written without zstd: float weights shrink
    by only 9% and each save and restore costs twice the CPU (benchmarks/NOTES.md 42). orbax
    has no public switch for it; checkpoints written with zstd (earlier versions) still
    restore, the codec being in each array's metadata."""
    handler = ocp.StandardCheckpointHandler()  # this class: orbax finds it by its args' type
    handler._impl = ocp.PyTreeCheckpointHandler(use_compression=False)
    return handler


def manager(workdir: str | Path, keep: int = D2L.keep_checkpoints,
            read_only: bool = False) -> Manager:
    """The work dir's checkpoints (use it in a `with`: its close waits for the last save)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, create=not read_only,
        read_only=read_only, cleanup_tmp_directories=not read_only,
    )
    handlers = {STATE: state_handler(), DIGEST: ocp.JsonCheckpointHandler()}
    return Manager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


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


def _legacy_digest(mngr: ocp.CheckpointManager, step: int) -> Path:
    return Path(mngr.directory).parent / LEGACY_DIGESTS / f"{step}.sha256"


def save(mngr: ocp.CheckpointManager, step: int, tree: dict[str, Any]) -> None:
    """Start an asynchronous, atomic save (orbax writes a temporary folder, then renames) of
    the state and its SHA-256, one checkpoint. The digest is taken now, from the state as
    it is (0.12 s for 47M parameters, benchmarks/NOTES.md 33); orbax copies the arrays to
    the host before `save` returns, so the next step may reuse their buffers."""
    mngr.wait_until_finished()  # the last save is complete (its errors raise here)
    digest = tree_digest(tree) if jax.process_index() == 0 else None  # the primary writes it
    mngr.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(tree), DIGEST: ocp.args.JsonSave({"sha256": digest})}),
        force=True)
    _prune_legacy_digests(mngr)


def _prune_legacy_digests(mngr: ocp.CheckpointManager) -> None:
    """Drop the digest files of earlier versions' checkpoints that orbax has deleted."""
    folder = Path(mngr.directory).parent / LEGACY_DIGESTS
    if jax.process_index() != 0 or not folder.is_dir():
        return
    kept = set(mngr.all_steps())
    for path in folder.glob("*.sha256"):
        if path.stem.isdigit() and int(path.stem) not in kept:
            path.unlink(missing_ok=True)


def _layout(tree) -> dict[str, tuple[str, tuple[int, ...]]]:
    """keystr path -> (dtype, shape) of every array in `tree` (arrays or orbax metadata)."""
    return {jax.tree_util.keystr(path): (str(np.dtype(leaf.dtype)), tuple(leaf.shape))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_fits(mngr: ocp.CheckpointManager, step: int, target: dict[str, Any]) -> None:
    """Raise CheckpointError (not corruption) when the saved tree cannot fill `target`."""
    path = Path(mngr.directory) / str(step)
    metadata = mngr.item_metadata(step)[STATE]
    if metadata is None:  # orbax's answer when the state's metadata file is gone or unread
        file = path / STATE / "_METADATA"
        if not file.exists():
            raise MissingFile(f"the metadata of {path / STATE} ({file.name}) is missing")
        raise OSError(f"the metadata of {path / STATE} ({file.name}) could not be read")
    saved = _layout(getattr(metadata, "tree", metadata))
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


class MissingFile(FileNotFoundError):
    """A file the checkpoint needs is not in its folder (seen in the listing, not a failed
    read): proof at once, nothing to read again."""


def _read(mngr: ocp.CheckpointManager, step: int, target: dict[str, Any]):
    """(tree, the SHA-256 recorded at save or None) of the checkpoint at `step`."""
    path = Path(mngr.directory) / str(step)
    if not (path / STATE).is_dir():
        raise MissingFile(f"its {STATE}/ folder is missing")
    _check_fits(mngr, step, target)
    items = {STATE: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                          target))}
    if (path / DIGEST).is_dir():
        items[DIGEST] = ocp.args.JsonRestore()
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
    if DIGEST in items:
        return restored[STATE], restored[DIGEST]["sha256"]
    legacy = _legacy_digest(mngr, step)
    return restored[STATE], legacy.read_text().strip() if legacy.is_file() else None


def damage(path: Path, err: BaseException) -> str | None:
    """What is proven wrong with the bytes of checkpoint `path`, given the error its read
    raised; None when the error is not proof (the disk, permissions, memory, a library).

    Proof needs both: every file of the checkpoint reads to its end (so the disk and the
    permissions are sound), and the error is one for missing, short or undecodable bytes.
    """
    if not path.is_dir():  # gone with its work dir (or renamed): nothing to prove on
        return None
    try:
        for file in sorted(path.rglob("*")):
            if file.is_file():
                with file.open("rb") as f:
                    while f.read(1 << 24):
                        pass
    except OSError:
        return None
    for cause in _causes(err):  # orbax wraps tensorstore's errors in its own
        if isinstance(cause, (json.JSONDecodeError, UnicodeDecodeError)):
            return f"its metadata is not valid JSON ({cause})"
        if isinstance(cause, FileNotFoundError):
            return f"a file of it is missing ({cause})"
        if isinstance(cause, ValueError) and str(cause).split(":", 1)[0] in DAMAGE_CODES:
            return f"its arrays cannot be read ({_first_line(cause)})"
    return None


def _causes(err: BaseException):
    """`err` and the errors it was raised from, outermost first."""
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _first_line(err: BaseException) -> str:
    """The innermost error's type and first line: what a user can act on."""
    root = list(_causes(err))[-1]
    text = str(root).strip().splitlines()[0][:1000] if str(root).strip() else ""
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


def _restore_one(mngr: ocp.CheckpointManager, step: int, target: dict[str, Any]):
    """The tree of the checkpoint at `step`, read again after a failure (RETRY_WAITS_SECONDS)
    before it is judged (a file missing from its folder is judged at once): CorruptCheckpoint
    on proof, else UnreadableCheckpoint."""
    path = Path(mngr.directory) / str(step)
    for wait in (*RETRY_WAITS_SECONDS, None):
        try:
            tree, recorded = _read(mngr, step, target)
            break
        except CheckpointError:
            raise
        except Exception as err:
            if wait is not None and not isinstance(err, MissingFile):
                time.sleep(wait)
                continue
            if proven := damage(path, err):
                raise CorruptCheckpoint(proven) from err
            raise UnreadableCheckpoint(
                f"checkpoint {path} cannot be read now ({_first_line(err)}; "
                f"{len(RETRY_WAITS_SECONDS) + 1} tries); nothing was moved or deleted. Fix the "
                "cause (the disk, its permissions, free memory) and run the same command "
                "again: it resumes from this checkpoint") from err
    if recorded is not None and recorded != tree_digest(tree):
        raise CorruptCheckpoint("its arrays do not match the SHA-256 recorded when it was saved")
    if bad := non_finite(tree):
        raise DivergedCheckpoint(f"it holds NaN or infinite values in {', '.join(bad[:3])}: its "
                                 "run had diverged when it was saved")
    return tree


def _is_orphaned_read(exc, origin) -> bool:
    """An error of one of orbax's concurrent array reads after another read failed: their
    event loop is closed, or their coroutine is dropped. The failed read is reported itself."""
    return (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed") or \
        "orbax" in getattr(getattr(origin, "cr_code", None), "co_filename", "")


class _OrphanedReads(logging.Filter):
    """asyncio's line for a task or future that ended in an error nobody awaited: an orphaned
    read when orbax ran it, or when its error is tensorstore's failed read of an array."""

    def filter(self, record) -> bool:
        if not record.getMessage().startswith(("Task exception was never retrieved",
                                               "Future exception was never retrieved")):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        read_error = isinstance(exc, ValueError) and "Error reading " in str(exc)
        return not (read_error or "orbax" in str(record.exc_info or record.getMessage()))


def _quiet_orphaned_reads() -> None:
    """Keep the tracebacks of orbax's orphaned reads (`_is_orphaned_read`: Python prints them
    as unraisable, and asyncio logs the tasks and futures when it collects them, which may be
    later) off the terminal, where a failed read is one line; every other error still prints.
    Once a process."""
    hook = sys.unraisablehook
    if getattr(hook, "drops_orphaned_reads", False):
        return

    def drop_orphaned(args):
        if not _is_orphaned_read(args.exc_value, args.object):
            hook(args)

    drop_orphaned.drops_orphaned_reads = True
    sys.unraisablehook = drop_orphaned
    logging.getLogger("asyncio").addFilter(_OrphanedReads())


# What a process found of a checkpoint, the mildest first: the processes of a run take the
# worst any of them found, so that all move it aside, or all stop, or all go on from it.
VERDICTS = ("sound", "corrupted", "diverged", "unfit", "unreadable")


def _verdict(err: CheckpointError | None) -> str:
    if err is None:
        return "sound"
    return {CorruptCheckpoint: "corrupted", DivergedCheckpoint: "diverged",
            UnreadableCheckpoint: "unreadable"}.get(type(err), "unfit")


def _agreed(verdict: str) -> str:
    """The worst verdict of every process (each has finished reading the checkpoint)."""
    if jax.process_count() == 1:
        return verdict
    codes = multihost_utils.process_allgather(np.int32(VERDICTS.index(verdict)))
    return VERDICTS[int(np.max(codes))]


def restore_latest(mngr: ocp.CheckpointManager, target: dict[str, Any], *,
                   quarantine: bool = False, strict: bool = False, step: int | None = None,
                   out=print):
    """(step, tree) of the newest checkpoint that restores cleanly, or (None, None) if none.

    A checkpoint proven corrupt (`damage`: missing, short or undecodable bytes on a disk that
    reads, again after a pause; a SHA-256 other than the one recorded at save) or diverged
    (NaN or infinite values) is reported with its path and skipped; with `quarantine` (only
    `train` asks) it is moved to corrupted_checkpoints/ or diverged_checkpoints/. With
    `strict`, or a `step` asked for, it stops instead. Any other error (a checkpoint that does
    not fit this model or environment, a disk or permission error, memory) raises
    CheckpointError and moves nothing. The processes of a run agree on each verdict first.
    """
    _quiet_orphaned_reads()
    steps = sorted(mngr.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint at step {step} in {mngr.directory}; there are {sorted(steps)}")
        steps = [step]
    for s in steps:
        path = Path(mngr.directory) / str(s)
        try:
            tree, err = _restore_one(mngr, s, target), None
        except CheckpointError as found:
            tree, err = None, found
        verdict = _agreed(_verdict(err))
        if verdict == "sound":
            return s, tree
        why = err if _verdict(err) == verdict else \
            f"another process of this run found it {verdict}"
        if verdict in ("unfit", "unreadable"):
            raise err if why is err else CheckpointError(
                f"checkpoint {path}: {why}; nothing was moved or deleted") from None
        message = f"checkpoint {path} is {verdict}: {why}"
        if strict or step is not None:
            raise CheckpointError(message) from err
        if quarantine:
            aside = CORRUPTED if verdict == "corrupted" else DIVERGED
            message += f"; moved it to {_quarantine(mngr, path, aside)}"
        out(f"warning: {message}; trying an earlier checkpoint")
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
    """Move a corrupt or diverged checkpoint out of orbax's way, kept for inspection. Every
    process has read it and agreed (`_agreed`) before process 0 moves it, and reloads only
    once it has."""
    aside = Path(mngr.directory).parent / folder / path.name
    if jax.process_index() == 0:
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
        legacy = _legacy_digest(mngr, int(path.name))
        if legacy.is_file():
            legacy.rename(aside / f"{LEGACY_DIGESTS}.sha256")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"alexnet-jax quarantine {path}")
    mngr.reload()
    return aside


def empty_totals() -> dict[str, np.ndarray]:
    """A run's running totals over all its epochs (d2l's examples/sec and the wall time)."""
    return {"train_seconds": np.float64(0.0), "train_examples": np.int64(0),
            "wall_seconds": np.float64(0.0)}


def checkpoint_tree(state: TrainState, epoch_metrics, totals) -> dict:
    """What a checkpoint holds: the state, this epoch's metric sums so far, the totals."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "rng": state.rng, "epoch_metrics": epoch_metrics,
            "totals": {k: np.asarray(v) for k, v in totals.items()}}


def state_from_tree(state: TrainState, tree: dict) -> TrainState:
    """`state` with what a restored checkpoint tree holds."""
    return state.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"],
                         rng=tree["rng"])
