"""`alexnet-jax benchmark`: training-step throughput of JAX variants and d2l's PyTorch step.

Step rows: inputs already on the device, rotated among 4 batches, dropout on, warm-up steps
first, each timed step ended by block_until_ready (JAX) or a device synchronize (PyTorch),
then the median, p10 and p90 step time (latency); then the same steps dispatched back to back
with one wait at the end (throughput: `pipelined_images_per_sec`). Both frameworks run in the
same process on the same device. FLOPs per image: XLA's count of the compiled step where it
counts the convolutions, the analytic count otherwise (cuDNN's convolutions are custom calls
XLA does not count), each row saying which. TFLOP/s and MFU count the model's analytic FLOPs
(what the step must compute, the usual definition of MFU), so a kernel that needs fewer
operations, such as Winograd's on the CPU, shows as more FLOP/s, not fewer; MFU is that over
the device's peak for the arithmetic the row runs in (TF32 for float32 at the default
precision on NVIDIA GPUs), and a row whose MFU would exceed 1 is an error, not a figure. Peak
memory per row: XLA's memory analysis of that row's compiled step (JAX), PyTorch's peak reset
per row (CUDA). Epoch rows (`--epoch-images`): d2l's epoch end to end, input pipeline
included.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from ..config import IMAGE_SIZE
from ..model.build import build_model
from ..observe.chips import chip_by_kind
from ..observe.profiling import StepTracer
from ..observe.progress import Progress
from ..runtime import memory
from ..runtime.cpu import bf16_units
from ..runtime.fast_malloc import allocator, allocator_note
from ..runtime.parallel import batch_sharding, make_mesh, put_replicated
from ..runtime.parallel import platform as platform_of
from ..runtime.versions import package_versions
from ..training.run_dir import write_atomic
from ..training.steps import compile_steps, create_train_state, empty_metrics, jit_steps
from .benchmark_table import markdown
from .summary import forward_flops

JAX_VARIANTS = {  # name: (--dtype, matmul precision, --augment)
    "jax-f32-default": ("float32", "default", False),
    "jax-f32-highest": ("float32", "highest", False),
    "jax-bf16": ("bfloat16", "default", False),
    "jax-f32-augment": ("float32", "default", True),
}


# The arithmetic each row's products run in: the peak its MFU is taken against. float32 at the
# frameworks' default precision is TF32 on NVIDIA GPUs (XLA's convolutions and dots, cuDNN's
# convolutions in PyTorch) and bf16 passes on TPUs; "highest" is full float32.
ARITHMETIC = {"jax-f32-default": "f32-default", "jax-f32-augment": "f32-default",
              "jax-f32-highest": "f32-highest", "jax-bf16": "bf16", "torch-eager": "f32-default",
              "torch-compile": "f32-default", "torch-bf16": "bf16"}


def peak_flops(device_kind: str, arithmetic: str) -> float | None:
    """The chip's dense peak for the arithmetic a row runs in (ARITHMETIC), for MFU; None
    where the chip or its peak for that arithmetic is not known (CPUs, a TPU's float32)."""
    chip = chip_by_kind(device_kind)
    if chip is None:
        return None
    return {"bf16": chip.bf16_flops, "f32-default": chip.f32_default_flops,
            "f32-highest": chip.f32_flops}[arithmetic]


def counted_flops(xla_flops: float, hlo_text: str, analytic: float) -> tuple[float, str]:
    """(FLOPs per image, "xla" or "analytic"): XLA's count of the compiled step where it
    counts the convolutions, else the model's analytic count. XLA's cost analysis skips
    custom calls, and on NVIDIA GPUs the convolutions are cuDNN's custom calls (0.1 of 5.63
    GFLOP counted on an H200); on the CPU XLA counts what runs (fewer than the analytic
    count, by Winograd)."""
    if "cudnn$conv" in hlo_text or not xla_flops:
        return analytic, "analytic"
    return xla_flops, "xla"


class ImpossibleFigure(ValueError):
    """A figure the hardware cannot reach (an MFU above 1): the peak or the count is wrong."""


def summarize(times: list[float], batch: int) -> dict:
    q = np.percentile(times, [10, 50, 90])
    return {"step_ms": [round(1e3 * t, 3) for t in times],
            "step_ms_median": 1e3 * statistics.median(times), "step_ms_p10": 1e3 * q[0],
            "step_ms_p90": 1e3 * q[2], "images_per_sec": batch / statistics.median(times)}


def bench_jax(variant: str, batch: int, steps: int, warmup: int, mesh, profile=None) -> dict:
    dtype, precision, augment = JAX_VARIANTS[variant]
    with jax.default_matmul_precision(precision):
        state = put_replicated(create_train_state(
            build_model(dtype, backend=platform_of(mesh)), 0, 0.01), mesh)
        sharding = batch_sharding(mesh)
        spec = (jax.ShapeDtypeStruct((batch, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32,
                                     sharding=sharding),
                jax.ShapeDtypeStruct((batch,), np.int32, sharding=sharding))
        step = jit_steps(mesh, augment).train  # the step `train` runs
        t0 = time.perf_counter()
        compiled = step.lower(state, *spec, empty_metrics()).compile()
        compile_s = time.perf_counter() - t0
        memory.check_fits(compiled, f"{variant} at batch", batch, jax.local_devices(),
                          mesh.size)
        peak = memory.peak_bytes(compiled)
        rng = np.random.default_rng(0)
        batches = [jax.device_put((rng.random((batch, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32),
                                   rng.integers(0, 10, batch).astype(np.int32)), sharding)
                   for _ in range(4)]
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
        hlo_text = compiled.as_text()
        if profile:  # a jax.profiler trace of the timed steps (compiled and warmed up)
            compiled = StepTracer(compiled, warmup + 1, warmup + steps, 0,
                                  Path(profile) / f"{variant}-batch{batch}")
        times = []
        try:
            for i in range(warmup + steps):
                images, labels = batches[i % len(batches)]
                t0 = time.perf_counter()
                state, metrics = compiled(state, images, labels, empty_metrics())
                jax.block_until_ready(metrics)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            # Throughput: the same steps dispatched back to back, one wait at the end.
            t0 = time.perf_counter()
            for i in range(steps):
                images, labels = batches[i % len(batches)]
                state, metrics = compiled(state, images, labels, empty_metrics())
            jax.block_until_ready(metrics)
            pipelined = batch * steps / (time.perf_counter() - t0)
        finally:
            if profile:  # a trace still open (a step that failed) ends with the row
                compiled.close()
    return {"framework": "jax", "variant": variant, "batch": batch, "compile_s": compile_s,
            # XLA counts one device's program (its share of the batch): all devices' work
            "xla_flops_per_image": xla_flops * mesh.size / batch, "hlo_text": hlo_text,
            "peak_memory_bytes": peak, "peak_memory_source": "XLA's memory analysis",
            "pipelined_images_per_sec": pipelined, **summarize(times, batch)}


def bench_torch(variant: str, batch: int, steps: int, warmup: int) -> dict:
    import torch

    from ..d2l.reference import d2l_net, d2l_train_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = d2l_net(seed=0).to(device)
    net.train()  # dropout on, as in d2l's train_ch6
    step = d2l_train_step(net, lr=0.01)
    step = torch.compile(step) if variant == "torch-compile" else step
    if variant == "torch-bf16":  # d2l's step under autocast, as a PyTorch user runs bf16
        plain = step

        def step(x, y):
            with torch.autocast(device, dtype=torch.bfloat16):
                return plain(x, y)

    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g).to(device),
                torch.randint(0, 10, (batch,), generator=g).to(device)) for _ in range(4)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        step(x, y)
        sync()
        dt = time.perf_counter() - t0
        if i == 0:
            compile_s = dt
        if i >= warmup:
            times.append(dt)
    t0 = time.perf_counter()  # throughput: back to back, one synchronize at the end
    for i in range(steps):
        step(*batches[i % len(batches)])
    sync()
    pipelined = batch * steps / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {"framework": "torch", "variant": variant, "batch": batch,
            "compile_s": compile_s if variant == "torch-compile" else None,
            "xla_flops_per_image": None, "peak_memory_bytes": peak,
            "peak_memory_source": "torch.cuda.max_memory_allocated" if peak else None,
            "pipelined_images_per_sec": pipelined, **summarize(times, batch)}


def bench_epoch(pipeline: str, batch: int, split, mesh) -> dict:
    """d2l's epoch end to end: the input pipeline and the train steps, as `train` runs them.

    images/s is over the whole epoch's wall time (data included); step_images_per_sec is
    d2l's examples/sec (the steps alone), from the same epoch.
    """
    from ..data.input_pipeline import make_pipeline

    pipe = make_pipeline(pipeline, split, batch, True, 0, mesh)
    state = put_replicated(create_train_state(build_model(backend=platform_of(mesh)), 0, 0.01),
                           mesh)
    metrics = put_replicated(empty_metrics(), mesh)
    steps = jit_steps(mesh)
    train, compile_s, _ = compile_steps(steps, state, metrics, pipe)
    step_times = []
    t_epoch = time.perf_counter()
    for b in pipe.epoch(0):
        jax.block_until_ready(b.images)  # as `train`: the step's time starts with its batch
        t0 = time.perf_counter()
        state, metrics = train(state, b.images, b.labels, metrics)
        jax.block_until_ready(metrics)
        step_times.append(time.perf_counter() - t0)
    epoch_s = time.perf_counter() - t_epoch
    return {"framework": "jax", "variant": f"epoch-{pipeline}", "batch": batch,
            "compile_s": compile_s, "xla_flops_per_image": None, "peak_memory_bytes": None,
            "epoch_images": len(split), "epoch_s": epoch_s,
            "step_images_per_sec": len(split) / sum(step_times),
            **summarize(step_times, batch), "images_per_sec": len(split) / epoch_s}


def run_benchmark(batch_sizes, steps, warmup, variants=None, with_torch=True,
                  epoch_split=None, profile=None, on_row=lambda result: None) -> dict:
    """Every (batch, variant) row; `on_row` gets the result so far after each one."""
    names = list(JAX_VARIANTS) + (["torch-eager", "torch-bf16", "torch-compile"]
                                  if with_torch else [])
    if epoch_split is not None:
        names += ["epoch-device", "epoch-host"]
    if variants:
        unknown = sorted(set(variants) - set(names))
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {names}")
        names = [n for n in names if n in variants]
    mesh = make_mesh()
    device_kind = jax.devices()[0].device_kind
    analytic = 3 * forward_flops()
    versions = package_versions(("alexnet-jax", "jax", "jaxlib", "flax", "optax", "torch"))
    result = {"device_kind": device_kind, "platform": jax.devices()[0].platform,
              "cpu_bf16_units": list(bf16_units()),
              "host": platform.node(), "versions": versions, "malloc": allocator(),
              "steps": steps, "warmup": warmup, "rows": []}
    progress = Progress("benchmark", len(batch_sizes) * len(names), unit="rows")
    for batch in batch_sizes:
        for name in names:
            row = bench_row(name, batch, steps, warmup, mesh, profile, epoch_split, analytic,
                            device_kind)
            if row is not None:
                result["rows"].append(row)
                add_ratios(result["rows"])
                on_row(result)
            progress.update(1)
    return result


def bench_row(name, batch, steps, warmup, mesh, profile, epoch_split, analytic, device_kind):
    """One row: images/s and what follows from it, the error that stopped it, or None
    where the variant's framework is not installed."""
    try:
        if name.startswith("jax"):
            row = bench_jax(name, batch, steps, warmup, mesh, profile)
        elif name.startswith("epoch"):
            row = bench_epoch(name.removeprefix("epoch-"), batch, epoch_split, mesh)
        else:
            row = bench_torch(name, batch, steps, warmup)
    except Exception as err:  # torch.compile without a toolchain, say
        if isinstance(err, ImportError) or isinstance(err.__cause__, ImportError):
            print(f"skipping {name}: {err}")  # torch, or TensorFlow for epoch-host, missing
            return None
        return {"variant": name, "batch": batch, "error": f"{type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}"}
    return finish_row(row, name, batch, analytic, device_kind, mesh.size)


def finish_row(row: dict, name: str, batch: int, analytic: float, device_kind: str,
               devices: int = 1) -> dict:
    """A measured row with the figures that follow from it, or its error where one of them
    is one the hardware cannot reach. `devices`: how many chips the row's images/s ran on."""
    row["analytic_flops_per_image"] = analytic
    row["flops_per_image"], row["flops_source"] = counted_flops(
        row.get("xla_flops_per_image") or 0.0, row.pop("hlo_text", ""), analytic)
    row["tflops_per_sec"] = analytic * row["images_per_sec"] / 1e12
    row["arithmetic"] = ARITHMETIC.get(name)
    chip = peak_flops(device_kind, row["arithmetic"]) if row["arithmetic"] else None
    peak = None if chip is None else chip * devices
    chips = device_kind if devices == 1 else f"{devices} x {device_kind}"
    row["mfu"] = None if peak is None else row["tflops_per_sec"] * 1e12 / peak
    if row["mfu"] is not None and row["mfu"] > 1:
        return {"variant": name, "batch": batch, "error": str(ImpossibleFigure(
            f"MFU {row['mfu']:.2f} above 1 ({row['tflops_per_sec']:.1f} TFLOP/s against the "
            f"{row['arithmetic']} peak of {peak / 1e12:.1f} TFLOP/s on {chips}): the "
            "peak or the FLOP count is wrong, so no figure"))}
    return row


def add_ratios(rows) -> None:
    """JAX over PyTorch eager at the same batch, measured in the same run."""
    for r in rows:
        eager = next((e for e in rows if e["variant"] == "torch-eager"
                      and e["batch"] == r["batch"] and "error" not in e), None)
        if "error" not in r and "epoch_s" not in r:
            r["vs_torch_eager"] = r["images_per_sec"] / eager["images_per_sec"] \
                if eager else None


def main(args) -> int:
    note = allocator_note(platform_of(make_mesh()))
    if note:
        print(note)
    epoch_split = None
    if args.epoch_images is not None:
        from ..data.fashion_mnist import load_split

        epoch_split = load_split("train", args.source, args.data_dir,
                                 args.manual_dir).head(args.epoch_images or None)
    def write(result):  # after every row, so that a time-out still leaves what was measured
        write_atomic(Path(args.json), json.dumps(result, indent=2))

    result = run_benchmark(args.batch_size, args.steps, args.warmup, args.variants,
                           with_torch=not args.no_torch, epoch_split=epoch_split,
                           profile=args.profile, on_row=write)
    print(markdown(result))
    print(f"wrote {args.json}")
    return 0
