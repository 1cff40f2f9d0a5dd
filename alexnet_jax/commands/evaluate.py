"""`evaluate` and `predict`: a trained work dir's checkpoint on the test images."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from ..data.fashion_mnist import CLASS_NAMES, load_split
from ..data.input_pipeline import make_pipeline
from ..data.preprocess import model_input
from ..observe.progress import Progress
from ..runtime import memory
from ..runtime.parallel import make_mesh
from ..training.run_dir import saved_config, write_atomic
from ..training.saved_state import load_state
from ..training.steps import TrainState, check_eval_fits, evaluate

PREDICT_BATCH = 128  # images per forward pass: bounds predict's memory whatever --num is
MAX_SHOWN = 100  # images in predict's picture: 10 rows of 10 stay readable


def evaluate_command(args) -> None:
    state, step = load_state(args.workdir, args.step)
    limit = args.limit_test or saved_config(args.workdir).limit_test  # the run's own, by default
    split = load_split("test", args.source, args.data_dir, args.manual_dir).head(limit)
    batch = 256
    progress = Progress("evaluate", len(split), unit="images") if len(split) > batch else None
    mesh = make_mesh()
    pipeline = make_pipeline(args.pipeline, split, batch, False, 0, mesh)
    check_eval_fits(state, pipeline, mesh, "evaluate's batch")
    result = evaluate(state, pipeline, mesh, progress)
    print(f"checkpoint step {step}: test loss {result['loss']:.4f}, test acc "
          f"{result['acc']:.4f} on {result['count']} test images")


def predict_classes(state: TrainState, images: np.ndarray, batch: int = PREDICT_BATCH):
    """Predicted classes of uint8 28x28 `images`, `batch` at a time (bounded memory)."""
    classify = jax.jit(lambda params, x: jax.numpy.argmax(
        state.apply_fn({"params": params}, model_input(x), train=False), -1))
    full = classify.lower(state.params, images[:batch]).compile()  # checked, then called
    memory.check_fits(full, "predict's batch", min(batch, len(images)), jax.local_devices())
    progress = Progress("predict", len(images), unit="images") if len(images) > batch else None
    classes = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        step = full if len(chunk) == len(images[:batch]) else classify  # the last, smaller
        classes.append(np.asarray(step(state.params, chunk)))
        if progress:
            progress.update(len(classes[-1]))
    return np.concatenate(classes)


def shown_in_picture(wrong: np.ndarray, wrong_first: bool, limit: int):
    """Indices of the images the grid shows: the first `limit`, or wrong ones first."""
    order = np.arange(len(wrong))
    if wrong_first:
        order = np.concatenate([order[wrong], order[~wrong]])
    return order[:limit]


def write_csv(path: str | Path, labels, predicted) -> None:
    """index,true,predicted (class names) for every predicted image, written atomically."""
    rows = ["index,true,predicted"] + [f"{i},{CLASS_NAMES[t]},{CLASS_NAMES[p]}"
                                       for i, (t, p) in enumerate(zip(labels, predicted))]
    write_atomic(Path(path), "\n".join(rows) + "\n")


def predict_command(args) -> None:
    from ..observe.plots import plot_predictions

    state, step = load_state(args.workdir, args.step)
    split = load_split("test", args.source, args.data_dir, args.manual_dir)
    if args.num > len(split):
        print(f"note: --num {args.num} is more than the {len(split)} test images; "
              f"predicting all {len(split)}")
    split = split.head(args.num)
    predicted = predict_classes(state, split.images)
    wrong = split.labels != predicted
    shown = shown_in_picture(wrong, args.wrong_first, MAX_SHOWN)
    titles = [f"{CLASS_NAMES[split.labels[i]]}\n{CLASS_NAMES[predicted[i]]}" for i in shown]
    plot_predictions(split.images[shown], titles, args.out, wrong=wrong[shown])
    print(f"checkpoint step {step}: {int((~wrong).sum())} of {len(split)} right "
          f"({1 - wrong.mean():.4f})")
    if args.csv:
        write_csv(args.csv, split.labels, predicted)
        print(f"every prediction written to {args.csv}")
    else:
        print("true -> predicted:")
        for i, (t, p) in enumerate(zip(split.labels, predicted)):
            mark = "" if t == p else "   (wrong)"
            print(f"{i:4d}  {CLASS_NAMES[t]:>12} -> {CLASS_NAMES[p]}{mark}")
    which = "wrong ones first" if args.wrong_first else "the first ones"
    print(f"grid of {len(shown)} images ({which}) written to {args.out}")
