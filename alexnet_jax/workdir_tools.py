"""evaluate, predict, convert and plot: what the CLI does with a work dir's records."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from . import checkpoints
from .fashion_mnist import CLASS_NAMES, load_split
from .input_pipeline import make_pipeline
from .parallel import make_mesh, put_replicated
from .preprocess import model_input
from .progress import Progress
from .run_dir import (
    RunError,
    TrainConfig,
    build_model,
    checkpoint_tree,
    empty_totals,
    read_points,
    saved_config,
    state_from_tree,
    write_config,
)
from .steps import TrainState, create_train_state, empty_metrics, evaluate

PREDICT_BATCH = 128  # images per forward pass: bounds predict's memory whatever --num is


def load_state(workdir: str | Path, step: int | None = None) -> tuple[TrainState, int]:
    """The train state of a work dir's checkpoint (the latest when step is None)."""
    config = saved_config(workdir)
    model = build_model(config.dtype, config.num_classes)
    state = put_replicated(create_train_state(model, config.seed, config.lr), make_mesh())
    mngr = checkpoints.manager(workdir, read_only=True)
    try:
        if not mngr.all_steps():
            raise RunError(f"no checkpoint in {checkpoints.checkpoint_dir(workdir)}")
        target = checkpoint_tree(state, empty_metrics(state), empty_totals())
        found, tree = checkpoints.restore_latest(mngr, target, step=step)
    finally:
        mngr.close()
    if tree is None:
        raise RunError(f"no readable checkpoint in {checkpoints.checkpoint_dir(workdir)}")
    return state_from_tree(state, tree), found


def evaluate_command(args) -> None:
    state, step = load_state(args.workdir, args.step)
    limit = args.limit_test or saved_config(args.workdir).limit_test  # the run's own, by default
    split = load_split("test", args.source, args.data_dir, args.manual_dir).head(limit)
    batch = 256
    progress = Progress("evaluate", len(split), unit="images") if len(split) > batch else None
    result = evaluate(state, make_pipeline(args.pipeline, split, batch, False, 0), progress)
    print(f"checkpoint step {step}: test loss {result['loss']:.4f}, test acc "
          f"{result['acc']:.4f} on {result['count']} test images")


def predict_classes(state: TrainState, images: np.ndarray, batch: int = PREDICT_BATCH):
    """Predicted classes of uint8 28x28 `images`, `batch` at a time (bounded memory)."""
    classify = jax.jit(lambda params, x: jax.numpy.argmax(
        state.apply_fn({"params": params}, model_input(x), train=False), -1))
    progress = Progress("predict", len(images), unit="images") if len(images) > batch else None
    classes = []
    for i in range(0, len(images), batch):
        classes.append(np.asarray(classify(state.params, images[i:i + batch])))
        if progress:
            progress.update(len(classes[-1]))
    return np.concatenate(classes)


def predict_command(args) -> None:
    from .plots import plot_predictions

    state, step = load_state(args.workdir, args.step)
    split = load_split("test", args.source, args.data_dir, args.manual_dir).head(args.num)
    predicted = predict_classes(state, split.images)
    titles = [f"{CLASS_NAMES[t]}\n{CLASS_NAMES[p]}" for t, p in zip(split.labels, predicted)]
    plot_predictions(split.images, titles, args.out, wrong=split.labels != predicted)
    print(f"checkpoint step {step}; true -> predicted for the first {len(titles)} test images:")
    for i, (t, p) in enumerate(zip(split.labels, predicted)):
        mark = "" if t == p else "   (wrong)"
        print(f"{i:4d}  {CLASS_NAMES[t]:>12} -> {CLASS_NAMES[p]}{mark}")
    print(f"grid written to {args.out}")


def convert_command(args) -> None:
    from .torch_compat import params_from_torch, params_to_torch

    if args.to_torch:
        import torch

        state, step = load_state(args.workdir, args.step)
        torch.save(params_to_torch(jax.device_get(state.params)), args.to_torch)
        print(f"wrote the checkpoint at step {step} of {args.workdir} to {args.to_torch}; "
              "load it with net.load_state_dict(torch.load(FILE))")
        return
    import torch

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
    write_config(workdir, config, only=("num_classes", "dtype"),
                 extra={"converted_from": str(source)})
    mngr = checkpoints.manager(workdir)
    checkpoints.save(mngr, 0, checkpoint_tree(state, empty_metrics(state), empty_totals()))
    mngr.wait_until_finished()
    mngr.close()


def plot_command(args) -> None:
    from .plots import plot_runs

    runs = {}
    for run in args.runs:
        path = Path(run) / "metrics.jsonl"
        if not path.is_file():
            raise RunError(f"{path} is missing: {run} is not a work dir that has trained")
        points = read_points(path, out=lambda *args: None)
        name = Path(run).name if sum(Path(r).name == Path(run).name for r in args.runs) == 1 \
            else str(run)
        runs[name] = points
    plot_runs(runs, args.out)
    print(f"wrote {args.out}: {len(runs)} runs, train loss, train acc and test acc of each")
