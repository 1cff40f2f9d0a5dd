"""`evaluate` and `predict`: a trained work dir's checkpoint on the test images."""

from __future__ import annotations

import jax
import numpy as np

from ..data.fashion_mnist import CLASS_NAMES, load_split
from ..data.input_pipeline import make_pipeline
from ..data.preprocess import model_input
from ..observe.progress import Progress
from ..training.run_dir import saved_config
from ..training.saved_state import load_state
from ..training.steps import TrainState, evaluate

PREDICT_BATCH = 128  # images per forward pass: bounds predict's memory whatever --num is


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
    from ..observe.plots import plot_predictions

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
