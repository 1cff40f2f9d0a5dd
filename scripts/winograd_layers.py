"""Each stride-1 conv of AlexNet alone on this device: XLA's conv (forward, input gradient),
the matmul kernel gradient, Winograd F(m, r) for each, and PyTorch's (oneDNN) for reference.

    python scripts/winograd_layers.py --batch-size 128 --tiles 2 4 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_conv_grads import layer_shapes, median_seconds  # this folder's conv timings
from jax import lax

from alexnet_jax.kernels import winograd
from alexnet_jax.kernels.conv import NHWC, kernel_grad_matmuls
from alexnet_jax.runtime.fast_malloc import allocator, choose_allocator

# name: (input HxW, C_in, C_out, kernel, pad) of the stride-1 convs, conv2-5
LAYERS = {name: (size, c_in, c_out, kernel, pad)
          for name, size, c_in, c_out, kernel, stride, pad in layer_shapes() if stride == 1}


def input_grad(g, w, padding, m: int, precision=None):
    """dL/dx of `conv(x, w, padding)` given g = dL/dy: a convolution with the flipped kernel."""
    r = w.shape[0]
    (p0, p1), (q0, q1) = padding
    flipped = jnp.swapaxes(w[::-1, ::-1], 2, 3)
    pads = ((r - 1 - p0, r - 1 - p1), (r - 1 - q0, r - 1 - q1))
    return winograd.conv(g, flipped, pads, m, precision)


def kernel_grad(x, g, padding, r: int, m: int, precision=None):
    """dL/dw of `conv(x, w, padding)` for an r x r kernel: sum over the batch of the
    correlation of x with g, by F(r x r, m x m) over m x m tiles of g."""
    at, gt, bt = winograd.matrices(r, m)
    (p0, p1), (q0, q1) = padding
    _, oh, ow, _ = g.shape
    th, tw = -(-oh // m), -(-ow // m)
    gp = jnp.pad(g, ((0, 0), (0, th * m - oh), (0, tw * m - ow), (0, 0)))
    xp = jnp.pad(x, ((0, 0), (p0, p1 + th * m - oh), (q0, q1 + tw * m - ow), (0, 0)))
    v = winograd._tiles(xp, bt, m, (th, tw))
    u = winograd._tiles(gp, gt, m, (th, tw))
    out_type = jnp.promote_types(g.dtype, jnp.float32)
    prod = lax.dot_general(v, u, (((1,), (1,)), ((0,), (0,))), precision=precision,
                           preferred_element_type=out_type)
    dw = winograd._untile_matmul(at, prod, precision)  # (col j, row i, c_in, c_out)
    return dw.transpose(1, 0, 2, 3)


def torch_times(x, w, g, pad, repeats):
    """PyTorch's (oneDNN's) forward, input gradient and kernel gradient, each op alone."""
    import torch

    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
    wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()
    gt = torch.from_numpy(np.array(g)).permute(0, 3, 1, 2).contiguous()
    ops = (lambda: torch.nn.functional.conv2d(xt, wt, padding=pad),
           lambda: torch.nn.grad.conv2d_input(xt.shape, wt, gt, padding=pad),
           lambda: torch.nn.grad.conv2d_weight(xt, wt.shape, gt, padding=pad))
    times = []
    with torch.no_grad():
        for op in ops:
            op()
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                op()
                runs.append(time.perf_counter() - start)
            times.append(statistics.median(runs))
    return times


def rel_err(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def time_layer(name, batch, tiles, repeats, with_torch):
    """Rows of the table for one layer: each op by XLA (or the matmuls), each F(m, r), torch."""
    size, c_in, c_out, r, p = LAYERS[name]
    pads = ((p, p), (p, p))
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, size, size, c_in))
    w = jax.random.normal(kw, (r, r, c_in, c_out)) * (2 / (r * r * c_in)) ** 0.5
    g = jax.random.normal(kg, (batch, size, size, c_out))

    def xla(x, w, precision=None):
        return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=NHWC,
                                        precision=precision)

    _, vjp = jax.vjp(lambda x, w: xla(x, w, "highest"), x, w)
    exact = (xla(x, w, "highest"), *vjp(g))
    ops = (  # (op, its baseline, inputs, Winograd for tile m)
        ("forward", "XLA", xla, (x, w), lambda m: lambda x, w: winograd.conv(x, w, pads, m)),
        ("input grad", "XLA", lambda g, w: jax.vjp(lambda x: xla(x, w), x)[1](g)[0], (g, w),
         lambda m: lambda g, w: input_grad(g, w, pads, m)),
        ("kernel grad", "matmuls",
         lambda x, g: kernel_grad_matmuls(x, g, kernel=(r, r), padding=pads), (x, g),
         lambda m: lambda x, g: kernel_grad(x, g, pads, r, m)),
    )
    reference = torch_times(x, w, g, p, repeats) if with_torch else None
    for i, (op, label, base, inputs, make) in enumerate(ops):
        base = jax.jit(base)
        t0 = median_seconds(base, inputs, repeats)
        print(f"| {name} | {op} | {label} | {t0:.3f} | 1.00 | "
              f"{rel_err(base(*inputs), exact[i]):.1e} |", flush=True)
        for m in tiles:
            fn = jax.jit(make(m))
            t = median_seconds(fn, inputs, repeats)
            print(f"| {name} | {op} | F({m}, {r}) | {t:.3f} | {t0 / t:.2f} | "
                  f"{rel_err(fn(*inputs), exact[i]):.1e} |", flush=True)
        if reference is not None:
            print(f"| {name} | {op} | PyTorch | {reference[i]:.3f} | {t0 / reference[i]:.2f} | |")


def main():
    choose_allocator()  # as the `alexnet-jax` command does: big buffers kept, not re-faulted
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--tiles", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--layers", nargs="+", default=sorted(LAYERS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    print(f"{jax.devices()[0].device_kind}, malloc {allocator()}, batch "
          f"{args.batch_size}, seconds (median of "
          f"{args.repeats}); error: float32 relative to XLA's float32 at highest precision")
    print("| layer | op | kernel | s | vs XLA | error |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.layers:
        time_layer(name, args.batch_size, args.tiles, args.repeats, not args.no_torch)


if __name__ == "__main__":
    main()
