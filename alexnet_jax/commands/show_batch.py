"""`show-batch`: a PNG of one training batch exactly as the model receives it."""

from __future__ import annotations

import jax
import numpy as np

from ..data.augment import draw
from ..data.fashion_mnist import CLASS_NAMES, load_split
from ..data.input_pipeline import epoch_order, num_batches
from ..training.run_dir import RunError
from ..training.steps import run_rng, step_input, step_keys
from .evaluate import MAX_SHOWN


def batch_seen_at(rng, step: int, images: np.ndarray, augment: bool):
    """The model's input at global step `step` for these uint8 images (the step's batch), by
    the train step's own `step_input`; and each image's (row shift, column shift, flip,
    scale) for the titles, or None without `augment`."""
    x, _ = jax.jit(step_input, static_argnums=3)(rng, step, images, augment)
    drawn = None
    if augment:
        drawn = jax.jit(draw, static_argnums=1)(step_keys(rng, step)[1], len(images))
        drawn = [np.asarray(d) for d in drawn]
    return np.asarray(x)[..., 0], drawn


def show_batch_command(args) -> None:
    from ..observe.plots import plot_predictions

    if args.step < 0:
        raise RunError(f"--step is a global train step, 0 or more; got {args.step}")
    split = load_split("train", args.source, args.data_dir, args.manual_dir).head(args.limit_train)
    per_epoch = num_batches(len(split), args.batch_size)
    epoch, index = divmod(args.step, per_epoch)
    order = epoch_order(len(split), args.seed, epoch, shuffle=True)
    chosen = order[index * args.batch_size:(index + 1) * args.batch_size]
    x, drawn = batch_seen_at(run_rng(args.seed), args.step, split.images[chosen], args.augment)
    shown = min(len(chosen), args.num, MAX_SHOWN)
    titles = [CLASS_NAMES[split.labels[i]] for i in chosen[:shown]]
    if drawn is not None:
        dy, dx, flip, scale = drawn
        titles = [f"{t}\n{dy[k]:+d},{dx[k]:+d}{' flip' if flip[k] else ''} x{scale[k]:.2f}"
                  for k, t in enumerate(titles)]
    top = max(1.0, float(x.max()))  # one grey scale: black 0, white 1 or the brightest
    plot_predictions(x[:shown], titles, args.out, value_range=(0.0, top))
    what = "augmented as `train --augment` does" if args.augment else "not augmented"
    print(f"wrote {args.out}: {shown} of the {len(chosen)} images of step {args.step} (epoch "
          f"{epoch + 1}, batch {index + 1} of {per_epoch}, seed {args.seed}), 224x224 as the "
          f"model receives them, {what}; pixels {x.min():.3f} to {x.max():.3f} (white: "
          f"{top:.3f})")
