"""What the host CPU offers for bfloat16: its bf16 units, read from /proc/cpuinfo."""

from __future__ import annotations

from pathlib import Path

# Units that multiply bf16 operands into float32 sums: Intel's AMX tiles, AVX512-BF16's dot.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def bf16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, ...]:
    """The bf16 units of this CPU (BF16_FLAGS it lists); () where it lists none or there is
    no /proc/cpuinfo (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return tuple(f for f in BF16_FLAGS if f in flags)
