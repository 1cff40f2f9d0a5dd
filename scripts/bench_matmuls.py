"""This CPU's matmul ceiling, and the Winograd kernel gradient's dot in each operand layout.

    LD_PRELOAD=libtcmalloc_minimal.so.4 python scripts/bench_matmuls.py

(tcmalloc, as the `alexnet-jax` command preloads it: without it each call's fresh output pages
fault in, and the forward dot of conv2 took twice as long here.)
Square GEMMs by XLA and by PyTorch, float32 and bf16 (bf16 operands, float32 sums), give the
rate no matmul of the step can beat; then
dU = V^T Z of conv2-5 at batch 128 (the transposed operand that `winograd.conv_grads` runs),
the same with V transposed in the graph, and the forward V U. Medians of timed calls after
a warm-up, each ended by block_until_ready (see benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_conv_grads import median_seconds  # this folder's timings
from jax import lax


def batched(lhs: int, rhs: int):
    """A dot over a leading batch axis, contracting lhs's axis `lhs` with rhs's axis `rhs`."""
    return lambda a, b: lax.dot_general(a, b, (((lhs,), (rhs,)), ((0,), (0,))))


def torch_seconds(t, repeats: int) -> float:
    """Median seconds of PyTorch's t @ t after a warm-up."""
    t @ t
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        t @ t
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for n in (1024, 2048, 4096):
        a = jnp.ones((n, n), jnp.float32)
        s = median_seconds(jax.jit(lambda a: a @ a), (a,), args.repeats)
        # bf16 operands summed in float32: the dot a CPU's bf16 units (AMX, AVX512-BF16) run
        bf16 = jax.jit(lambda a: lax.dot(a, a, preferred_element_type=jnp.float32))
        s16 = median_seconds(bf16, (a.astype(jnp.bfloat16),), args.repeats)
        line = f"GEMM {n}^3: XLA {2 * n**3 / s / 1e9:.0f}, bf16 {2 * n**3 / s16 / 1e9:.0f} GFLOP/s"
        try:
            import torch

            line += ", PyTorch " + ", bf16 ".join(
                f"{2 * n**3 / torch_seconds(torch.ones(n, n, dtype=dtype), args.repeats) / 1e9:.0f}"
                for dtype in (torch.float32, torch.bfloat16)) + " GFLOP/s"
        except ImportError:
            pass
        print(line, flush=True)
    rng = np.random.default_rng(0)
    # (layer, a*a tile positions, tiles at batch 128, C_in, C_out): F(4x4, 5x5) and F(4x4, 3x3)
    for name, a2, tiles, c_in, c_out in [("conv2", 64, 128 * 49, 96, 256),
                                         ("conv3", 36, 128 * 9, 256, 384),
                                         ("conv4", 36, 128 * 9, 384, 384),
                                         ("conv5", 36, 128 * 9, 384, 256)]:
        v = jnp.asarray(rng.standard_normal((a2, tiles, c_in)), jnp.float32)
        z = jnp.asarray(rng.standard_normal((a2, tiles, c_out)), jnp.float32)
        u = jnp.asarray(rng.standard_normal((a2, c_in, c_out)), jnp.float32)
        gflop = 2 * a2 * tiles * c_in * c_out / 1e9
        rows = {"dU = V^T Z (as the step runs it)": (batched(1, 1), v, z),
                "dU = swapaxes(V) Z": (lambda v, z: batched(2, 1)(jnp.swapaxes(v, 1, 2), z),
                                       v, z),
                "forward V U": (batched(2, 1), v, u)}
        for what, (f, *operands) in rows.items():
            s = median_seconds(jax.jit(f), operands, args.repeats)
            print(f"{name} {what:34s} {s * 1e3:7.1f} ms {gflop / s:6.0f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
