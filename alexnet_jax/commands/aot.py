"""`alexnet-jax aot`: d2l's train and eval steps compiled for a TPU slice or a GPU not here.

XLA compiles for a named TPU topology without a TPU (libtpu from the package registry:
`pip install 'alexnet-jax[tpu]'`), and for an NVIDIA H100 or H200 without a GPU (jax's CUDA
plugin, `jax-cuda13-plugin` and `jax-cuda13-pjrt`, with a target description in place of the
device, and CUDA's ptxas). Per chip, the compiled programs' own figures: FLOPs and bytes (XLA's
cost analysis; the GPU compile gives none, so there the model's analytic FLOPs), HBM for
arguments, outputs and temporaries (its memory analysis), and a roofline time from each chip's
published peak. Every figure is compiled, not measured.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

from ..observe.chips import CHIPS, GIB, Chip, hopper_target

GPUS = ("h100", "h200")  # the GPUs XLA is told of below
TPUS = ("v4", "v5e", "v5p", "v6e")

def chip_of(topology: str) -> Chip:
    """The chip of a topology name such as v5e:2x2, v4:2x2x1 or h200."""
    generation = topology.split(":")[0].lower().replace("litepod", "e").replace("lite", "e")
    if generation not in GPUS + TPUS:
        raise ValueError(f"unknown topology {topology!r}: use a TPU slice, "
                         f"{', '.join(f'{g}:AxB' for g in TPUS)} (v4 and v5p: AxBxC), "
                         "e.g. v5e:2x2, or a GPU: h100, h200")
    return CHIPS[generation]


def quiet_libtpu() -> None:
    """libtpu looks for a TPU VM's metadata when it loads and logs pages without one; on a
    machine with no TPU, say what it would ask for (none of it changes what is compiled)."""
    if not Path("/dev/accel0").exists() and not Path("/dev/vfio").exists():
        for key, value in {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
                           "TPU_ACCELERATOR_TYPE": "v5litepod-1"}.items():
            os.environ.setdefault(key, value)


def gpu_devices(gpu: str):
    """One compile-only NVIDIA GPU; a clear error without jax's CUDA plugin."""
    chip = CHIPS[gpu.lower()]
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # a GPU here would be used instead
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no cuDNN needed to compile
    from jax.experimental import topologies

    target = hopper_target(chip)
    try:
        return topologies.get_topology_desc(platform="cuda", target_config=target,
                                            topology="1x1x1").devices
    except Exception as err:
        raise ValueError(f"cannot describe {chip.name} to XLA: {str(err).splitlines()[0][:200]};"
                         " install jax's CUDA plugin: pip install jax-cuda13-plugin "
                         "jax-cuda13-pjrt (CUDA's ptxas must be on PATH)") from None


def devices_of(topology: str):
    return gpu_devices(topology) if topology.lower() in GPUS else tpu_devices(topology)


def tpu_devices(topology: str):
    """The compile-only devices of a TPU topology; a clear error without libtpu."""
    quiet_libtpu()
    from jax.experimental import topologies

    try:
        return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    except Exception as err:  # no libtpu, or a name libtpu does not know
        hint = ("; install libtpu: pip install 'alexnet-jax[tpu]'"
                if importlib.util.find_spec("libtpu") is None else "")
        raise ValueError(f"cannot make TPU topology {topology!r}: "
                         f"{str(err).splitlines()[0][:200]}{hint}") from None


def abstract_inputs(mesh, dtype: str, batch: int):
    """(state, images, labels, metrics) as sharded ShapeDtypeStructs: nothing is allocated."""
    import jax

    from ..data.preprocess import batch_spec
    from ..model.build import build_model
    from ..runtime.parallel import batch_sharding, platform, replicated
    from ..training.steps import create_train_state, empty_metrics

    model = build_model(dtype, backend=platform(mesh))  # the target's layers, not this CPU's
    state = jax.eval_shape(lambda: create_train_state(model, 0, 0.01))
    metrics = jax.eval_shape(lambda: empty_metrics(create_train_state(model, 0, 0.01)))
    repl, data = replicated(mesh), batch_sharding(mesh)

    def on(sharding):
        return lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding)

    images, labels = batch_spec(batch)
    return (jax.tree.map(on(repl), state), on(data)(images), on(data)(labels),
            jax.tree.map(on(repl), metrics))


def compiled_figures(compiled, chip: Chip, batch: int, chips: int, dtype: str,
                     passes: int) -> dict:
    """Per chip: XLA's FLOPs and bytes, HBM use, and the roofline time and images/s.

    Where XLA gives no cost (its GPU compile), FLOPs are the model's analytic count (`passes`
    times the forward pass: 3 for a train step, 1 for eval) and the roofline is compute only.
    """
    from .summary import forward_flops

    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    analytic = not flops
    if analytic:
        flops = passes * forward_flops() * batch / chips
    peak = chip.f32_default_flops if dtype == "float32" else chip.bf16_flops
    hbm = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
    seconds = max(flops / peak, nbytes / chip.hbm_bandwidth)
    return {"gflop": flops / 1e9, "flops_source": "analytic" if analytic else "xla",
            "gbytes": nbytes / 1e9,
            "arguments_gib": mem.argument_size_in_bytes / GIB,
            "temporaries_gib": mem.temp_size_in_bytes / GIB, "hbm_gib": hbm / GIB,
            "hbm_fraction": hbm / chip.hbm_bytes,
            "bound": "compute" if flops / peak >= nbytes / chip.hbm_bandwidth else "memory",
            "roofline_ms": seconds * 1e3,
            "roofline_images_per_sec": batch / seconds if seconds else math.inf,
            "per_chip_batch": batch // chips}


# A compiled step's top-level instructions are what it launches: cuDNN's and cuBLAS's calls
# (custom calls, by target), XLA's fusions (by kind), and the ops left unfused.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.-]+\s*=\s*.*?\s([a-z][\w-]*)\((.*)$")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_FUSION_KIND = re.compile(r"kind=(k\w+)")
_NOT_LAUNCHED = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast",
                 "after-all", "partition-id", "replica-id"}


def launches(hlo_text: str) -> dict[str, int]:
    """What a compiled program's entry computation launches, counted by kind: "cuDNN
    convForward" and the like for custom calls, "fusion kLoop" and the like for fusions,
    the op's name for the rest ("convolution", "copy", "transpose", "select-and-scatter",
    "all-reduce", ...); parameters, constants and tuple plumbing are not launches."""
    entry = hlo_text[hlo_text.index("\nENTRY "):] if "\nENTRY " in hlo_text else hlo_text
    body = entry[entry.index("{") + 1:] if "{" in entry else entry
    counts: dict[str, int] = {}
    for line in body.splitlines():
        if line.strip() == "}":
            break
        found = _INSTRUCTION.match(line)
        if not found or found[1] in _NOT_LAUNCHED:
            continue
        op, rest = found[1], found[2]
        if op == "custom-call" and (target := _TARGET.search(rest)):
            name = target[1].lstrip("_").replace("cudnn$", "cuDNN ").replace("cublas$", "cuBLAS ")
        elif op == "fusion" and (kind := _FUSION_KIND.search(rest)):
            name = f"fusion {kind[1]}"
        else:
            name = op
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def compile_steps_for(topology: str, batch: int, dtype: str) -> dict:
    """Compile the train and eval steps for `topology` at global batch `batch`."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from ..runtime.parallel import DATA_AXIS, check_batch_size
    from ..training.steps import jit_steps

    chip, devices = chip_of(topology), devices_of(topology)
    check_batch_size(batch, len(devices))
    mesh = Mesh(np.asarray(devices), (DATA_AXIS,))
    steps = jit_steps(mesh)
    state, images, labels, metrics = abstract_inputs(mesh, dtype, batch)
    row = {"topology": topology, "chip": chip.name, "chips": len(devices), "batch": batch,
           "dtype": dtype, "jax": jax.__version__}
    for name, step, passes in (("train", steps.train, 3), ("eval", steps.eval, 1)):
        t0 = time.perf_counter()
        compiled = step.lower(state, images, labels, metrics).compile()
        row[name] = compiled_figures(compiled, chip, batch, len(devices), dtype, passes)
        row[name]["compile_seconds"] = time.perf_counter() - t0
        hlo = compiled.as_text()
        row[name]["launches"] = launches(hlo)
        if name == "train":
            row["hlo_convolutions"] = hlo.count(" convolution(")
    return row


def largest_batch(rows: list[dict]) -> int | None:
    """The largest global batch whose train step fits in a chip's HBM, by a line through the
    train step's HBM at the smallest and largest batch compiled (rounded down to a multiple
    of 8 per chip); None with one batch size, or when HBM did not grow with the batch."""
    rows = sorted(rows, key=lambda r: r["batch"])
    if rows[0]["batch"] == rows[-1]["batch"]:
        return None
    (b0, m0), (b1, m1) = [(r["batch"], r["train"]["hbm_gib"]) for r in (rows[0], rows[-1])]
    per_image = (m1 - m0) / (b1 - b0)
    capacity = rows[0]["train"]["hbm_gib"] / rows[0]["train"]["hbm_fraction"]
    chips = rows[0]["chips"]
    if per_image <= 0:
        return None
    per_chip = int((capacity - (m0 - per_image * b0)) / per_image / chips) // 8 * 8
    return per_chip * chips


def table(rows: list[dict], fits: dict) -> str:
    """A Markdown table of the rows, train step first."""
    lines = ["| topology | dtype | batch | step | GFLOP/chip | GB/chip | HBM GiB/chip (args, "
             "temps) | of HBM | bound | roofline ms | roofline img/s | compile s |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        for name in ("train", "eval"):
            f = r[name]
            lines.append(
                f"| {r['topology']} | {r['dtype']} | {r['batch']} | {name} | {f['gflop']:.1f}"
                f"{'*' if f['flops_source'] == 'analytic' else ''} | "
                f"{'n/a' if f['flops_source'] == 'analytic' else format(f['gbytes'], '.2f')} | "
                f"{f['hbm_gib']:.2f} ({f['arguments_gib']:.2f}, "
                f"{f['temporaries_gib']:.2f}) | {f['hbm_fraction']:.1%} | {f['bound']} | "
                f"{f['roofline_ms']:.2f} | {f['roofline_images_per_sec']:,.0f} | "
                f"{f['compile_seconds']:.0f} |")
    lines.append("")
    for r in rows:
        for name in ("train", "eval"):
            what = ", ".join(f"{n} {k}" for k, n in r[name]["launches"].items())
            lines.append(f"- {r['topology']} {r['dtype']} batch {r['batch']}, {name} step "
                         f"launches: {what}")
    lines.append("")
    for (topology, dtype), batch in fits.items():
        chips = next(r["chips"] for r in rows if r["topology"] == topology)
        lines.append(f"- {topology} {dtype}: the largest train batch that fits in HBM is "
                     + ("not estimated (it needs two batch sizes whose HBM differs)"
                        if batch is None else
                        f"about {batch:,} ({batch // chips:,} per chip), estimated linearly "
                        "from the compiled batches' HBM"))
    return "\n".join(lines)


def command_line(args) -> str:
    return (f"alexnet-jax aot --topology {' '.join(args.topology)} --batch-size "
            f"{' '.join(map(str, args.batch_size))} --dtype {' '.join(args.dtype)}")


def aot_command(args) -> int:
    """Compile for each topology, batch and dtype; print and write the report."""
    import jax

    jax.config.update("jax_platforms", "cpu")  # compile-only TPU devices; run nothing
    rows, fits = [], {}
    for topology in args.topology:
        for dtype in args.dtype:
            done = []
            for batch in args.batch_size:
                row = compile_steps_for(topology, batch, dtype)
                t = row["train"]
                print(f"{topology} {dtype} batch {batch}: train step {t['gflop']:.1f} GFLOP and "
                      f"{t['gbytes']:.2f} GB per chip, {t['hbm_gib']:.2f} GiB of "
                      f"{row['chip']}'s HBM; roofline {t['roofline_images_per_sec']:,.0f} "
                      f"images/s (compiled, not measured; {t['compile_seconds']:.0f} s to "
                      "compile)", flush=True)
                done.append(row)
            rows += done
            fits[(topology, dtype)] = largest_batch(done)
    report = table(rows, fits)
    sources = sorted({f"{c.name}: {c.source}" for c in map(chip_of, args.topology)})
    note = ("Compiled, not measured: XLA's cost and memory analysis of the programs "
            f"compiled for each topology (jax {jax.__version__}), and a roofline time, max(FLOPs "
            "/ peak, bytes / HBM bandwidth), from each chip's published figures ("
            + "; ".join(sources) + "). float32 runs at XLA's default precision: bfloat16 "
            "passes on a TPU (its bfloat16 peak), TF32 on an NVIDIA GPU (its TF32 peak). XLA's "
            "GPU compile reports no cost: there GFLOP (marked *) are the model's analytic count "
            "(a train step 3 forward passes) and bytes are unknown, so the roofline is compute "
            "only, an upper bound on images/s.")
    print("\n" + report + "\n\n" + note)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(f"# AlexNet steps compiled ahead of time\n\n{note}\n\n"
                                          f"Command: `{command_line(args)}`\n\n"
                                          f"{report}\n")
        out.with_suffix(".json").write_text(json.dumps(
            {"rows": rows, "largest_batch": {f"{t} {d}": b for (t, d), b in fits.items()},
             "chips": {t: asdict(chip_of(t)) for t in args.topology}}, indent=2) + "\n")
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0
