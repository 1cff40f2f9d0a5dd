"""Run the `alexnet-jax` command with a malloc that keeps the step's big buffers.

Why: XLA's CPU runtime takes each step's scratch buffer (2.2 GB for d2l's batch of 128) from
malloc, and glibc serves blocks that large with a fresh mmap and gives them back to the kernel
on free, so every step faults all those pages in again. tcmalloc keeps them, which makes the
CPU step markedly faster (figures in benchmarks/NOTES.md). Where tcmalloc is not installed,
glibc's own malloc is told to do the same (`GLIBC_KEEP`: one arena, no mmap, no trimming),
which recovers most of that speed for more peak memory. The allocator must be chosen before
the process starts, hence a re-exec (LD_PRELOAD, or glibc's environment variables), as
PyTorch's CPU launcher (`torch.backends.xeon.run_cpu`) does. ALEXNET_JAX_MALLOC=system keeps
glibc's malloc as it is. Only the commands that run steps on a CPU re-execute (`runs_on_cpu`):
a GPU or TPU keeps its buffers on the device.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import platform
import sys

ENV = "ALEXNET_JAX_MALLOC"  # "system": leave malloc alone; set to what the re-exec chose
# Allocators recognised when loaded: the command preloads tcmalloc; jemalloc (slower here,
# benchmarks/NOTES.md 7) only when a user preloads it, which the command then leaves in place.
ALLOCATORS = ("tcmalloc", "jemalloc")
# JAX plugins whose presence means the default backend is an accelerator.
ACCELERATOR_PLUGINS = ("jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13", "jax_plugins.xla_rocm",
                       "libtpu")
GLIBC_KEPT = "glibc-kept"
# glibc's malloc, made to keep what it frees: one arena (XLA's threads would each get their
# own, which map big blocks afresh), never mmap (sbrk'd memory is reused), never trim.
GLIBC_KEEP = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
              "MALLOC_TRIM_THRESHOLD_": str(1 << 46)}


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


def allocator() -> str:
    """What this process allocates with: `loaded_allocator`'s answer, or 'glibc-kept' for
    glibc's malloc under GLIBC_KEEP (what results record as `malloc`)."""
    name = loaded_allocator()
    kept = os.environ.get(ENV) == GLIBC_KEPT and all(
        os.environ.get(k) == v for k, v in GLIBC_KEEP.items())
    return GLIBC_KEPT if name == "system" and kept else name


def find_tcmalloc() -> str | None:
    """The installed tcmalloc library (Debian: libtcmalloc-minimal4), or None."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def runs_on_cpu() -> bool:
    """Whether JAX will run on the CPU, judged without importing it: JAX_PLATFORMS's first
    platform, or else no GPU or TPU plugin installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    for name in ACCELERATOR_PLUGINS:
        try:
            if importlib.util.find_spec(name) is not None:
                return False
        except (ImportError, ValueError):
            continue
    return True


def chosen_allocator() -> dict[str, str]:
    """The environment that starts a process on the allocator we choose (on Linux, when
    ALEXNET_JAX_MALLOC is unset and no other allocator is loaded): tcmalloc preloaded where it
    is installed, else glibc's malloc with GLIBC_KEEP. Empty when there is nothing to choose."""
    if sys.platform != "linux" or os.environ.get(ENV) or loaded_allocator() != "system":
        return {}
    lib = find_tcmalloc()
    if lib is not None:
        preload = " ".join(p for p in (lib, os.environ.get("LD_PRELOAD", "")) if p)
        return {ENV: "tcmalloc", "LD_PRELOAD": preload}
    if platform.libc_ver()[0] == "glibc":
        return {ENV: GLIBC_KEPT, **GLIBC_KEEP}
    return {}


def choose_allocator() -> None:
    """Re-execute this very command line once on `chosen_allocator`'s allocator."""
    if chosen := chosen_allocator():
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **chosen})


def allocator_note(backend: str) -> str | None:
    """The line a CPU run prints once where tcmalloc is not installed: what it costs and how
    to install it. None elsewhere, or when glibc's malloc as it is was asked for."""
    if (backend != "cpu" or sys.platform != "linux" or os.environ.get(ENV) == "system"
            or loaded_allocator() != "system" or find_tcmalloc() is not None):
        return None
    kept = allocator() == GLIBC_KEPT
    return ("note: tcmalloc is not installed, so CPU steps run on glibc's malloc"
            + (", set to keep freed memory: about as fast as tcmalloc, with more peak memory"
               if kept else
               ", which gives the step's scratch memory back after every step and faults it in"
               " again: a slower step")
            + "; on Debian or Ubuntu: apt-get install libtcmalloc-minimal4 (figures: "
              "benchmarks/NOTES.md in the source, sections 7 and 29)")
