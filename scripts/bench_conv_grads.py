"""Time each conv's kernel gradient: XLA's own vs alexnet_jax.kernels.conv's matmuls.

Medians of --repeats timed calls after a warm-up, each ended by block_until_ready. This is
the evidence for alexnet_jax/kernels/conv.py (see benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from alexnet_jax.kernels.conv import NHWC, kernel_grad_matmuls
from alexnet_jax.model.alexnet import CONV_LAYERS, conv_out


def layer_shapes(image_size: int = 224):
    """(name, input HxW, C_in, C_out, kernel, stride, pad) of each conv."""
    size, c_in, shapes = image_size, 1, []
    for name, c_out, kernel, stride, pad, pool in CONV_LAYERS:
        shapes.append((name, size, c_in, c_out, kernel, stride, pad))
        size = conv_out(size, kernel, stride, pad)
        if pool:
            size = conv_out(size, 3, 2, 0)
        c_in = c_out
    return shapes


def median_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    key = jax.random.key(0)
    print("| layer | x shape | XLA kernel grad (s) | matmuls (s) | ratio | rel. diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, size, c_in, c_out, k, stride, pad in layer_shapes():
        kx, kw, kg = jax.random.split(key, 3)
        x = jax.random.normal(kx, (args.batch_size, size, size, c_in))
        w = jax.random.normal(kw, (k, k, c_in, c_out))
        out = conv_out(size, k, stride, pad)
        g = jax.random.normal(kg, (args.batch_size, out, out, c_out))
        padding = ((pad, pad), (pad, pad))

        @jax.jit
        def xla(x, g, w=w, strides=(stride, stride), padding=padding):
            _, vjp = jax.vjp(lambda w: lax.conv_general_dilated(
                x, w, strides, padding, dimension_numbers=NHWC), w)
            return vjp(g)[0]

        ours = jax.jit(lambda x, g, w=w, strides=(stride, stride), padding=padding:
                       kernel_grad_matmuls(x, g, kernel=w.shape, strides=strides,
                                           padding=padding))
        t_xla = median_seconds(xla, (x, g), args.repeats)
        t_ours = median_seconds(ours, (x, g), args.repeats)
        a, b = ours(x, g), xla(x, g)
        diff = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
        print(f"| {name} | {x.shape} | {t_xla:.3f} | {t_ours:.3f} | {t_xla / t_ours:.2f} | "
              f"{diff:.1e} |")


if __name__ == "__main__":
    main()
