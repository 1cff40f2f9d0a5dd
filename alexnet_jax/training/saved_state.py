"""A work dir's train state read back from its checkpoints, or written from given weights."""

from __future__ import annotations

from pathlib import Path

from ..model.build import build_model
from ..runtime.parallel import is_primary, make_mesh, platform, put_replicated
from . import checkpoints
from .checkpoints import checkpoint_tree, empty_totals, state_from_tree
from .run_dir import RunError, TrainConfig, saved_config, write_config, x64_missing
from .steps import TrainState, create_train_state, empty_metrics


def load_state(workdir: str | Path, step: int | None = None) -> tuple[TrainState, int]:
    """The train state of a work dir's checkpoint (the latest when step is None)."""
    config = saved_config(workdir)
    if x64_missing(config.dtype):  # before building the model, which JAX would warn about
        raise RunError(f"{workdir} is a --dtype float64 run: set JAX_ENABLE_X64=1 to read it")
    mesh = make_mesh()
    model = build_model(config.dtype, config.num_classes, backend=platform(mesh))
    state = put_replicated(create_train_state(model, config.seed, config.lr), mesh)
    with checkpoints.manager(workdir, read_only=True) as mngr:
        if not mngr.all_steps():
            raise RunError(f"no checkpoint in {checkpoints.checkpoint_dir(workdir)}")
        target = checkpoint_tree(state, empty_metrics(state), empty_totals())
        found, tree = checkpoints.restore_latest(mngr, target, step=step)
    if tree is None:
        raise RunError(f"no readable checkpoint in {checkpoints.checkpoint_dir(workdir)}")
    return state_from_tree(state, tree), found


def start_from(config: TrainConfig, params, source) -> None:
    """A new work dir whose checkpoint at step 0 holds `params` (Flax numpy arrays, from
    `source`): `train` on it starts from those weights instead of d2l's random init."""
    workdir = Path(config.workdir)
    if checkpoints.checkpoint_dir(workdir).exists() and any(
            checkpoints.checkpoint_dir(workdir).iterdir()):
        raise RunError(f"{workdir} already holds checkpoints; convert into a new work dir")
    state = create_train_state(build_model(config.dtype, config.num_classes), config.seed,
                               config.lr, params=params)
    workdir.mkdir(parents=True, exist_ok=True)
    if is_primary():  # one process writes the record
        write_config(workdir, config, only=("num_classes", "dtype"),
                     extra={"converted_from": str(source)})
    with checkpoints.manager(workdir) as mngr:  # its close waits for the save
        checkpoints.save(mngr, 0, checkpoint_tree(state, empty_metrics(state), empty_totals()))
