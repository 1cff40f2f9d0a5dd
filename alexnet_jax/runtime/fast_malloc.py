"""Run the `alexnet-jax` command under tcmalloc when the machine has it.

Why: XLA's CPU runtime takes each step's scratch buffer (2.2 GB for d2l's batch of 128) from
malloc, and glibc serves blocks that large with a fresh mmap and gives them back to the kernel
on free, so every step faults all those pages in again. tcmalloc keeps them, which makes the
CPU step markedly faster (figures in benchmarks/NOTES.md). The allocator must be chosen before the
process starts, hence a re-exec with LD_PRELOAD, as PyTorch's CPU launcher
(`torch.backends.xeon.run_cpu`) does. ALEXNET_JAX_MALLOC=system keeps glibc's malloc.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

ENV = "ALEXNET_JAX_MALLOC"  # "system": never preload; set to "tcmalloc" once preloaded
ALLOCATORS = ("tcmalloc", "jemalloc")


def loaded_allocator(maps: str | None = None) -> str:
    """'tcmalloc' or 'jemalloc' when that library is mapped into this process, else 'system'."""
    if maps is None:
        try:
            with open("/proc/self/maps") as f:
                maps = f.read()
        except OSError:
            maps = ""
    for name in ALLOCATORS:
        if f"/lib{name}" in maps:
            return name
    return "system"


def find_tcmalloc() -> str | None:
    """The installed tcmalloc library (Debian: libtcmalloc-minimal4), or None."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def preload_tcmalloc() -> None:
    """Re-execute this very command line with tcmalloc preloaded, once: on Linux, when it is
    installed, no other allocator is loaded and ALEXNET_JAX_MALLOC is unset."""
    if sys.platform != "linux" or os.environ.get(ENV) or loaded_allocator() != "system":
        return
    lib = find_tcmalloc()
    if lib is None:
        return
    preload = " ".join(p for p in (lib, os.environ.get("LD_PRELOAD", "")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, ENV: "tcmalloc", "LD_PRELOAD": preload})


def allocator_note(backend: str) -> str | None:
    """The line a CPU run on glibc's malloc prints once when tcmalloc is not installed: what
    it costs and how to install it. None elsewhere, or when glibc's was asked for."""
    if (backend != "cpu" or sys.platform != "linux" or os.environ.get(ENV) == "system"
            or loaded_allocator() != "system" or find_tcmalloc() is not None):
        return None
    return ("note: tcmalloc is not installed, so CPU steps run on glibc's malloc, which is "
            "slower (measured on 2 cores at batch 128: 46.5 images/s instead of 56.5); on "
            "Debian or Ubuntu: apt-get install libtcmalloc-minimal4")
