"""`convert`: a work dir's weights to d2l's PyTorch state dict, or a state dict into a work dir."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import jax

from ..data.fashion_mnist import CLASS_NAMES
from ..training.run_dir import RunError, TrainConfig, cannot_write
from ..training.saved_state import load_state, start_from


def convert_command(args) -> None:
    from ..d2l.torch_weights import params_from_torch, params_to_torch

    try:
        import torch
    except ImportError as err:
        raise RunError(f"convert reads and writes PyTorch files, and PyTorch is not installed "
                       f"({err}): pip install torch") from err
    if args.to_torch:
        state, step = load_state(args.workdir, args.step)
        save_atomic(torch, params_to_torch(jax.device_get(state.params)), Path(args.to_torch))
        print(f"wrote the checkpoint at step {step} of {args.workdir} to {args.to_torch}; "
              "load it with net.load_state_dict(torch.load(FILE))")
        return
    source = Path(args.from_torch)
    if not source.is_file():
        raise RunError(f"{source} does not exist")
    try:
        state_dict = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RunError(f"{source} is not a PyTorch state dict saved with torch.save "
                       f"({type(err).__name__}: {err})") from err
    params = params_from_torch(state_dict)
    classes = params["fc3"]["bias"].shape[0]
    if classes != len(CLASS_NAMES):
        raise RunError(f"{source} has a {classes}-class head ('20.bias' of shape ({classes},)); "
                       f"Fashion-MNIST has {len(CLASS_NAMES)} classes, so it cannot be evaluated "
                       "or trained here")
    config = TrainConfig(workdir=args.workdir, num_classes=classes)
    start_from(config, params, source)
    print(f"converted {source} into a checkpoint at step 0 in {args.workdir}")


def save_atomic(torch, state_dict, path: Path) -> None:
    """torch.save into `path`, or (a full disk, a read-only folder) `path` left as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:  # to a file object, a failed write raises the OSError
            torch.save(state_dict, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise cannot_write(path, err) from err
