"""Images/s each input pipeline delivers on this machine, median of several runs.

    python scripts/bench_input.py --manual-dir ../shared/data/fashion-mnist [--batches 40]

Rows: the host pipeline alone (tf.data, numpy out); the host pipeline into device arrays;
the device pipeline (its gather resizes to model input; block_until_ready).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import jax

from alexnet_jax.data.fashion_mnist import load_split
from alexnet_jax.data.input_pipeline import DevicePipeline, HostPipeline


def time_batches(batches, consume, n: int) -> float:
    """Images per second over n batches, the first batch (warm-up) not counted."""
    it = iter(batches)
    consume(next(it))
    t0, images = time.perf_counter(), 0
    for batch in itertools.islice(it, n):
        consume(batch)
        images += batch.size
    return images / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", required=True)
    parser.add_argument("--source", default="idx", choices=("auto", "tfds", "idx"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    split = load_split("train", args.source, manual_dir=args.manual_dir)
    host = HostPipeline(split, args.batch_size, True, 0)
    device = DevicePipeline(split, args.batch_size, True, 0)
    rows = {
        "host pipeline alone (tf.data -> numpy)": (host, lambda b: b.images),
        "host pipeline -> device arrays": (
            host, lambda b: jax.block_until_ready(jax.device_put(b.images))),
        "device pipeline incl. resize (jit)": (device, lambda b: jax.block_until_ready(b.images)),
    }
    print(f"device {jax.devices()[0].device_kind}, batch {args.batch_size}, "
          f"{args.batches} batches x {args.repeats} runs, median images/s")
    print(f"| {'pipeline':<40} | {'images/s':>10} |\n|{'-' * 42}|{'-' * 12}|")
    for name, (pipe, consume) in rows.items():
        runs = [time_batches(pipe.epoch(r), consume, args.batches) for r in range(args.repeats)]
        print(f"| {name:<40} | {statistics.median(runs):>10.0f} |")


if __name__ == "__main__":
    main()
