"""The benchmark's result as a markdown table (what benchmarks/results/*.md hold)."""

from __future__ import annotations

from .summary import forward_flops


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    lines = [f"device: {result['device_kind']} ({result['platform']}); steps {result['steps']} "
             f"after {result['warmup']} warm-up; malloc {result['malloc']}; "
             f"versions {result['versions']}",
             f"host CPU's bf16 units: {', '.join(result.get('cpu_bf16_units') or []) or 'none'}"
             " (amx_bf16, avx512_bf16 in /proc/cpuinfo)", "",
             "| variant | batch | images/s | pipelined images/s | vs torch eager | "
             "step ms median (p10-p90) | compile s | GFLOP/img (count) | TFLOP/s | "
             "MFU (peak) | peak mem GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['batch']} | failed: {r['error']} |"
                         " | | | | | | | |")
            continue
        mem = r["peak_memory_bytes"]
        flops = r.get("flops_per_image")
        mfu = "-" if r.get("mfu") is None else f"{r['mfu']:.1%} ({r['arithmetic']})"
        count = "-" if not flops else f"{flops / 1e9:.2f} ({r['flops_source']})"
        lines.append(
            f"| {r['variant']} | {r['batch']} | {r['images_per_sec']:.1f} | "
            f"{_fmt(r.get('pipelined_images_per_sec'), '.1f')} | "
            f"{_fmt(r.get('vs_torch_eager'), '.2f')} | {r['step_ms_median']:.1f} "
            f"({r['step_ms_p10']:.1f}-{r['step_ms_p90']:.1f}) | {_fmt(r['compile_s'], '.1f')} | "
            f"{count} | "
            f"{r['tflops_per_sec']:.3f} | {mfu} | {_fmt(mem and mem / 2**30, '.2f')} |")
    lines.append(f"analytic training FLOPs per image: {3 * forward_flops() / 1e9:.2f} GFLOP "
                 "(3 x forward)")
    for r in result["rows"]:
        if "epoch_s" in r:
            lines.append(f"{r['variant']}, batch {r['batch']}: {r['epoch_images']} images in "
                         f"{r['epoch_s']:.1f} s end to end ({r['images_per_sec']:.1f} images/s); "
                         f"steps alone {r['step_images_per_sec']:.1f} images/s (d2l's figure)")
    return "\n".join(lines)
