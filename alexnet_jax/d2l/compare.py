"""`alexnet-jax compare-torch`: d2l's PyTorch train_ch6 and our `train`, side by side.

Both start from the same weights (d2l's init of the seed, converted) and see the same batches
in the same order (our epoch order, as d2l's DataLoader with our sampler); d2l's side gets
its own preprocessing (Pillow's bilinear Resize, ToTensor). With dropout off in float64 the
two curves coincide; with dropout on they differ by the masks' randomness alone. With
several seeds it reports the spread of the final test accuracy of each framework.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from ..data.fashion_mnist import Split, load_split
from ..data.input_pipeline import epoch_order, num_batches
from ..observe.progress import Progress
from ..training import layout
from ..training.loop import train_and_evaluate
from ..training.metrics_log import read_points
from ..training.run_dir import RunError, TrainConfig, write_atomic
from ..training.saved_state import start_from

FRAMEWORKS = ("d2l (PyTorch)", "alexnet-jax")
CURVES = ("train_loss", "train_acc", "test_acc")


class D2lLoader:
    """What d2l's DataLoader hands train_ch6: Resize(224) + ToTensor batches of `split`,
    in our pipeline's order for (seed, epoch); each pass over it is the next epoch."""

    def __init__(self, split: Split, batch_size: int, seed: int, shuffle: bool, dtype,
                 progress: Progress | None = None):
        self.split, self.batch_size, self.seed, self.shuffle = split, batch_size, seed, shuffle
        self.dtype, self.epoch, self.progress = dtype, 0, progress

    def __len__(self) -> int:
        return num_batches(len(self.split), self.batch_size)

    def __iter__(self):
        import torch

        from .pillow import pillow_resize

        order = epoch_order(len(self.split), self.seed, self.epoch, self.shuffle)
        self.epoch += 1
        for b in range(len(self)):
            rows = order[b * self.batch_size:(b + 1) * self.batch_size]
            pixels = pillow_resize(self.split.images[rows])
            x = torch.from_numpy(pixels[:, None].astype(np.float32) / np.float32(255.0))
            yield x.to(self.dtype), torch.from_numpy(self.split.labels[rows].astype(np.int64))
            if self.progress:  # the step on this batch is done
                self.progress.update(1)


def check_settings(args, train_size: int) -> None:
    """d2l's train_ch6 logs every num_batches // 5 steps: it needs 5 batches per epoch."""
    if num_batches(train_size, args.batch_size) < 5:
        raise RunError(f"d2l's train_ch6 needs at least 5 batches per epoch (it plots every "
                       f"num_batches // 5 steps); {train_size} train images at batch "
                       f"{args.batch_size} make {num_batches(train_size, args.batch_size)}: "
                       "raise --limit-train or lower --batch-size")


def train_torch(args, seed: int, net, train: Split, test: Split, folder: Path, out) -> list:
    """d2l's train_ch6 on `net`; its points and final weights saved in `folder`."""
    import torch

    from .reference import train_ch6

    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = num_batches(len(train), args.batch_size) * args.epochs
    progress = Progress("d2l train", steps, out=out)
    points = train_ch6(net, D2lLoader(train, args.batch_size, seed, True, dtype, progress),
                       D2lLoader(test, args.batch_size, seed, False, dtype), args.epochs,
                       args.lr, device, out=out)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "final_state_dict.pt")
    write_atomic(folder / layout.METRICS, "".join(json.dumps(p) + "\n" for p in points))
    return points


def run_seed(args, seed: int, train: Split, test: Split) -> dict[str, list]:
    """Both frameworks from d2l's init of `seed`; each framework's points (reused if done)."""
    import torch

    from .reference import d2l_net
    from .torch_weights import params_from_torch

    folder = Path(args.out) / f"seed{seed}"
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    net = d2l_net(seed, dtype, args.dropout)
    initial = params_from_torch(net.state_dict())
    runs = {}
    torch_points = folder / "torch" / layout.METRICS
    print(f"seed {seed}, {FRAMEWORKS[0]}:")
    if torch_points.is_file():
        runs[FRAMEWORKS[0]] = read_points(torch_points)
        print(f"  done before: {torch_points}")
    else:
        runs[FRAMEWORKS[0]] = train_torch(args, seed, net, train, test, folder / "torch",
                                          lambda line: print("  " + line))
    print(f"seed {seed}, {FRAMEWORKS[1]}:")
    config = TrainConfig(workdir=str(folder / "jax"), epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=seed, source=args.source,
                         data_dir=args.data_dir, manual_dir=args.manual_dir,
                         limit_train=args.limit_train, limit_test=args.limit_test,
                         dtype=args.dtype, dropout=args.dropout)
    if not (folder / "jax" / layout.CONFIG).is_file():
        start_from(config, initial, f"d2l_net(seed={seed})")
    train_and_evaluate(config, out=lambda line: print("  " + line))
    runs[FRAMEWORKS[1]] = read_points(folder / "jax" / layout.METRICS)
    return runs


def curve_values(points: list[dict]) -> dict[float, dict]:
    """epoch -> the curves' values there (d2l plots test acc as its own point)."""
    merged: dict[float, dict] = {}
    for p in points:
        values = merged.setdefault(round(p["epoch"], 9), {})
        values.update({k: p[k] for k in CURVES if p.get(k) is not None})
    return merged


def largest_differences(a: list[dict], b: list[dict]) -> dict[str, float]:
    """Per curve, the largest |a - b| / |b| over the points both have."""
    va, vb = curve_values(a), curve_values(b)
    worst = dict.fromkeys(CURVES, 0.0)
    for epoch in va.keys() & vb.keys():
        for k in va[epoch].keys() & vb[epoch].keys():
            x, y = va[epoch][k], vb[epoch][k]
            worst[k] = max(worst[k], abs(x - y) / abs(y) if y else abs(x - y))
    return worst


def final_test_acc(points: list[dict]) -> float:
    return [p["test_acc"] for p in points if p.get("test_acc") is not None][-1]


def spread_summary(results: dict[int, dict[str, float]]) -> list[str]:
    """Mean and spread of each framework's final test accuracy over the seeds, and whether
    their difference is within twice its standard error."""
    lines = ["| seed | " + " | ".join(FRAMEWORKS) + " |", "| --- | --- | --- |"]
    lines += [f"| {s} | " + " | ".join(f"{r[f]:.4f}" for f in FRAMEWORKS) + " |"
              for s, r in results.items()]
    accs = {f: [r[f] for r in results.values()] for f in FRAMEWORKS}
    if len(results) > 1:
        means = {f: statistics.mean(v) for f, v in accs.items()}
        sds = {f: statistics.stdev(v) for f, v in accs.items()}
        for f in FRAMEWORKS:
            lines.append(f"| mean ± sd | {f}: {means[f]:.4f} ± {sds[f]:.4f} | |")
        diff = means[FRAMEWORKS[1]] - means[FRAMEWORKS[0]]
        se = math.sqrt(sum(sd**2 for sd in sds.values()) / len(results))
        verdict = "within" if abs(diff) <= 2 * se else "NOT within"
        lines.append(f"\nalexnet-jax minus d2l: {diff:+.4f}; standard error of the difference "
                     f"{se:.4f}: {verdict} two standard errors (seed-to-seed spread).")
    return lines


def compare_command(args) -> None:
    import jax

    from ..observe.plots import plot_runs

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # this process exists for the comparison
    train = load_split("train", args.source, args.data_dir, args.manual_dir).head(
        args.limit_train)
    test = load_split("test", args.source, args.data_dir, args.manual_dir).head(args.limit_test)
    check_settings(args, len(train))
    finals = {}
    for seed in args.seeds:
        runs = run_seed(args, seed, train, test)
        png = Path(args.out) / f"seed{seed}" / "compare.png"
        plot_runs(runs, png)
        worst = largest_differences(runs[FRAMEWORKS[1]], runs[FRAMEWORKS[0]])
        print(f"seed {seed}: largest relative difference between the curves: "
              + ", ".join(f"{k.replace('_', ' ')} {v:.2e}" for k, v in worst.items())
              + f"; both curves in {png}")
        finals[seed] = {f: final_test_acc(points) for f, points in runs.items()}
    summary = spread_summary(finals)
    write_atomic(Path(args.out) / "summary.md", "\n".join(summary) + "\n")
    print("final test accuracy:\n" + "\n".join(summary))
