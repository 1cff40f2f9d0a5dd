"""PNG figures: d2l's training curves and predict_ch3's grid of test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(points: list[dict], path: str | Path, num_epochs: int) -> None:
    """d2l's animator: train loss solid, train acc magenta dashed, test acc green dash-dot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    train = [p for p in points if "train_loss" in p]
    test = [p for p in points if p.get("test_acc") is not None]
    ax.plot([p["epoch"] for p in train], [p["train_loss"] for p in train], "-", label="train loss")
    ax.plot([p["epoch"] for p in train], [p["train_acc"] for p in train], "m--",
            label="train acc")
    ax.plot([p["epoch"] for p in test], [p["test_acc"] for p in test], "g-.", label="test acc",
            marker="o" if len(test) == 1 else None,  # one epoch: a line needs two points
            clip_on=False)  # the last point sits on the right edge: never cut in half
    ax.set_xlabel("epoch")
    first = min((p["epoch"] for p in train), default=1.0)
    ax.set_xlim(min(1.0, first), max(num_epochs, 1.0 + 1e-9))  # d2l: [1, num_epochs]
    ax.grid(True)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)  # never leave a half-written plot


# d2l's line style per curve; each run gets its own colour.
CURVES = (("train_loss", "-", "train loss"), ("train_acc", "--", "train acc"),
          ("test_acc", "-.", "test acc"))


def plot_runs(runs: dict[str, list[dict]], path: str | Path):
    """d2l's three curves for several runs in one figure: one colour per run, d2l's line
    style per curve, a legend naming each run and each curve. Returns the figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, points) in enumerate(runs.items()):
        colour = colours[i % len(colours)]
        for key, style, label in CURVES:
            kept = [p for p in points if p.get(key) is not None]
            ax.plot([p["epoch"] for p in kept], [p[key] for p in kept], style, color=colour,
                    label=f"{name}: {label}", marker="o" if len(kept) == 1 else None)
    ax.set_xlabel("epoch")
    ax.grid(True)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig


def plot_predictions(images: np.ndarray, titles: list[str], path: str | Path, wrong=None,
                     value_range=None):
    """A row-wrapped grid of images, each titled (predict: 'true\\npredicted' as in d2l); the
    titles of wrong predictions in red; grey levels over `value_range` (lo, hi) shared by all
    images, or each image's own. Returns the figure."""
    plt = _pyplot()
    n = len(images)
    cols = min(n, 10)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.9 * rows), dpi=100,
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    wrong = np.zeros(n, bool) if wrong is None else np.asarray(wrong)
    for ax, image, title, bad in zip(axes.ravel(), images, titles, wrong):
        lo, hi = value_range or (None, None)
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=8, color="red" if bad else "black")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return fig
