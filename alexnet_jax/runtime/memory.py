"""Will a compiled step fit? XLA's memory analysis of it against what the device can give,
so that a batch too large is refused in one line before the first step, not by an
out-of-memory error (or the kernel's killer) after it."""

from __future__ import annotations

from pathlib import Path

GIB = 2**30


def size(nbytes: int) -> str:
    """Bytes as a person reads them: GiB, or MiB below one GiB."""
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB else f"{nbytes / 2**20:.0f} MiB"


class OutOfMemory(RuntimeError):
    """A batch that cannot fit; the message names what it needs, what is there, what fits."""


def step_bytes(compiled) -> int:
    """Bytes a call of `compiled` allocates beyond its arguments (already resident), per
    device: XLA's temporaries and its outputs, less the outputs that reuse donated inputs."""
    analysis = compiled.memory_analysis()
    return max(analysis.temp_size_in_bytes + analysis.output_size_in_bytes
               - analysis.alias_size_in_bytes, 0)


def peak_bytes(compiled) -> int:
    """Bytes a call of `compiled` holds at its peak per device: its arguments and what it
    allocates beyond them (`step_bytes`), by XLA's memory analysis of that program alone."""
    return compiled.memory_analysis().argument_size_in_bytes + step_bytes(compiled)


def host_available_bytes(meminfo: Path = Path("/proc/meminfo"),
                         cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory this process can still take on the host: the kernel's MemAvailable, or a
    cgroup's limit less its usage when that is smaller; None where neither is known."""
    candidates = []
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    for limit_name, usage_name in (("memory.max", "memory.current"),  # cgroup v2
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):  # cgroup v1
        try:
            limit = (cgroup / limit_name).read_text().strip()
            usage = int((cgroup / usage_name).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**62:  # v1 writes "no limit" as a huge number
            candidates.append(max(int(limit) - usage, 0))
    return min(candidates) if candidates else None


def available_bytes(devices) -> int | None:
    """What `devices` (one process's) can still allocate, per device: an accelerator's limit
    less its use; on the CPU the host's memory shared by its devices."""
    device = devices[0]
    if device.platform == "cpu":
        host = host_available_bytes()
        return None if host is None else host // len(devices)
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)


def too_large(what: str, batch: int, need: int, available: int, multiple: int = 1) -> str:
    """The one line for a batch that does not fit; temporaries grow with the batch, so the
    largest that fits is about batch * available / need (a multiple of the devices)."""
    largest = batch * available // max(need, 1) // multiple * multiple
    fits = (f"the largest batch that fits is about {largest}" if largest >= multiple
            else "no batch fits: free memory, or use a device with more")
    return f"{what} {batch} needs about {size(need)}, {size(available)} are available; {fits}"


def check_fits(compiled, what: str, batch: int, devices, multiple: int = 1) -> int:
    """Raise OutOfMemory when a call of `compiled` on `batch` cannot fit on `devices`;
    returns the bytes it needs per device (for `out_of_memory` later)."""
    need = step_bytes(compiled)
    available = available_bytes(devices)
    if available is not None and need > available:
        raise OutOfMemory(too_large(what, batch, need, available, multiple))
    return need


def is_out_of_memory(err: BaseException) -> bool:
    """XLA's error for an allocation that failed (its status code, RESOURCE_EXHAUSTED)."""
    import jax

    return isinstance(err, jax.errors.JaxRuntimeError) and \
        str(err).startswith("RESOURCE_EXHAUSTED")


def out_of_memory(what: str, batch: int, need: int, devices, multiple: int = 1) -> OutOfMemory:
    """The line for an allocation that failed mid-run (other processes may have taken memory
    since the check): what it needs, what is available now, a batch that fits now."""
    available = available_bytes(devices)
    if available is None or available >= need:
        return OutOfMemory(f"{what} {batch} ran out of memory (it needs about "
                           f"{size(need)}); other processes took memory meanwhile: "
                           "free some, or use a smaller batch")
    return OutOfMemory(too_large(what, batch, need, available, multiple))
