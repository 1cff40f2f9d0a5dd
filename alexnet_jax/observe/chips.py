"""Accelerators' published per-chip figures: peak FLOP/s, HBM and its bandwidth.

Sources: NVIDIA's datasheets (H100 and H200 SXM, A100 SXM 80GB, V100 SXM2, L4; dense tensor-core
peaks) and Google Cloud's TPU system architecture pages (v4, v5e, v5p, v6e), retrieved 2026-12.
"""

from __future__ import annotations

from dataclasses import dataclass

GB, GIB = 1e9, 2**30


@dataclass(frozen=True)
class Chip:
    name: str
    kinds: tuple[str, ...]  # substrings of jax's device_kind that name this chip
    bf16_flops: float  # dense bfloat16 peak, FLOP/s
    f32_flops: float | None  # plain float32 peak (TPUs have none: bf16 passes)
    f32_default_flops: float  # float32 at XLA's default precision: TF32, or TPU bf16 passes
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s
    source: str


CHIPS = {
    "h200": Chip("NVIDIA H200 SXM", ("H200",), 989e12, 67e12, 494.7e12, 141 * GB, 4.8e12,
                 "https://www.nvidia.com/en-us/data-center/h200/"),
    "h100": Chip("NVIDIA H100 SXM", ("H100",), 989e12, 67e12, 494.7e12, 80 * GB, 3.35e12,
                 "https://www.nvidia.com/en-us/data-center/h100/"),
    "a100": Chip("NVIDIA A100 SXM 80GB", ("A100",), 312e12, 19.5e12, 156e12, 80 * GB, 2.039e12,
                 "https://www.nvidia.com/en-us/data-center/a100/"),
    "v100": Chip("NVIDIA V100 SXM2", ("V100",), 125e12, 15.7e12, 15.7e12, 32 * GB, 900 * GB,
                 "https://www.nvidia.com/en-us/data-center/v100/"),
    "l4": Chip("NVIDIA L4", ("L4",), 121e12, 30.3e12, 60e12, 24 * GB, 300 * GB,
               "https://www.nvidia.com/en-us/data-center/l4/"),
    "v4": Chip("TPU v4", ("TPU v4",), 275e12, None, 275e12, 32 * GIB, 1200 * GB,
               "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("TPU v5e", ("TPU v5 lite", "TPU v5e"), 197e12, None, 197e12, 16 * GIB, 819 * GB,
                "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", ("TPU v5p",), 459e12, None, 459e12, 95 * GIB, 2765 * GB,
                "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e", ("TPU v6",), 918e12, None, 918e12, 32 * GIB, 1640 * GB,
                "https://cloud.google.com/tpu/docs/v6e"),
}


def chip_by_kind(device_kind: str) -> Chip | None:
    """The chip whose name jax's device_kind contains, if it is in the table."""
    return next((c for c in CHIPS.values()
                 if any(k.lower() in device_kind.lower() for k in c.kinds)), None)


# What XLA's GPU compiler needs to know of a Hopper GPU it cannot see (GpuTargetConfigProto).
HOPPER_TARGET = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: {bandwidth} l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: {memory} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }} registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA" dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 13 minor: 0 }} device_description_str: "{name}"
"""


def hopper_target(chip: Chip) -> str:
    """The target description of a Hopper GPU (H100, H200) for XLA's deviceless compile."""
    return HOPPER_TARGET.format(bandwidth=int(chip.hbm_bandwidth), memory=int(chip.hbm_bytes),
                                name=chip.name)
