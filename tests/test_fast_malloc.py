"""runtime/fast_malloc.py: the command re-executes itself once under a malloc that keeps big
blocks (tcmalloc where installed, else glibc's told to), unless told not."""

import os
import platform
import subprocess
import sys

import pytest

from alexnet_jax.runtime.fast_malloc import (
    ENV,
    GLIBC_KEEP,
    GLIBC_KEPT,
    find_tcmalloc,
    loaded_allocator,
)

# A child that asks for the allocator (with tcmalloc hidden when its first argument says so),
# then reports what it runs under, how often it started, and where a 256 MiB block went:
# into the sbrk heap (kept by malloc) or into a mapping of its own (unmapped on free).
CHILD = """
import ctypes, os, sys
from alexnet_jax.runtime import fast_malloc
if sys.argv[1] == 'hide-tcmalloc':
    fast_malloc.find_tcmalloc = lambda: None
sys.stderr.write('start\\n')
fast_malloc.choose_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
block = libc.malloc(256 << 20)
with open('/proc/self/maps') as f:
    heap = [line.split()[0].split('-') for line in f if line.rstrip().endswith('[heap]')]
in_heap = any(int(lo, 16) <= block < int(hi, 16) for lo, hi in heap)
print(fast_malloc.allocator(), os.environ.get('ALEXNET_JAX_MALLOC'), sys.argv[1:], in_heap)
"""


def run_child(first="a b", **env):
    base = {k: v for k, v in os.environ.items()
            if k not in (ENV, "LD_PRELOAD", *GLIBC_KEEP)}
    proc = subprocess.run([sys.executable, "-c", CHILD, first, "--flag"], capture_output=True,
                          text=True, timeout=120, env={**base, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip(), proc.stderr.count("start")


def test_loaded_allocator_reads_the_process_maps():
    maps = "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"
    assert loaded_allocator(maps) == "tcmalloc"
    assert loaded_allocator(maps.replace("tcmalloc_minimal", "jemalloc")) == "jemalloc"
    assert loaded_allocator("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n") == "system"


def test_system_malloc_when_asked():
    out, starts = run_child(**{ENV: "system"})
    assert out.startswith("system system ['a b', '--flag']") and starts == 1
    if platform.libc_ver()[0] == "glibc":  # glibc maps a block this big, and unmaps it on free
        assert out.endswith("False"), out


@pytest.mark.skipif(find_tcmalloc() is None,
                    reason="no tcmalloc (Debian: apt-get install libtcmalloc-minimal4)")
def test_reexecutes_once_under_tcmalloc_with_the_same_arguments():
    out, starts = run_child()
    assert out.startswith("tcmalloc tcmalloc ['a b', '--flag']")
    assert starts == 2  # the first start re-executed itself, the second did not


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc on Linux only")
def test_without_tcmalloc_glibc_keeps_big_blocks():
    """No tcmalloc: one re-exec onto glibc's malloc with GLIBC_KEEP, under which a block as
    big as a step's buffers comes from the sbrk heap (kept and reused), not a fresh mmap."""
    out, starts = run_child("hide-tcmalloc")
    assert out == "glibc-kept glibc-kept ['hide-tcmalloc', '--flag'] True", out
    assert starts == 2


def test_a_cpu_run_without_tcmalloc_says_once_what_it_costs(monkeypatch, tmp_path, capsys,
                                                          fashion_mnist_dir):
    """No tcmalloc installed, glibc's malloc loaded: train prints the note once, with the
    measured cost and the package to install; what glibc's kept memory costs where the
    command set it; nothing where glibc's malloc as it is was asked for."""
    from alexnet_jax.cli import main
    from alexnet_jax.runtime import fast_malloc

    monkeypatch.setattr(fast_malloc, "find_tcmalloc", lambda: None)
    monkeypatch.setattr(fast_malloc, "loaded_allocator", lambda maps=None: "system")
    assert "apt-get install libtcmalloc-minimal4" in fast_malloc.allocator_note("cpu")
    assert fast_malloc.allocator_note("gpu") is None
    assert main(["train", "--workdir", str(tmp_path / "w"), "--manual-dir",
                 str(fashion_mnist_dir), "--source", "idx", "--limit-train", "4",
                 "--limit-test", "4", "--batch-size", "4", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("note: tcmalloc is not installed") == 1 and "a slower step" in out
    for name, value in {ENV: GLIBC_KEPT, **GLIBC_KEEP}.items():
        monkeypatch.setenv(name, value)
    assert "keep freed memory" in fast_malloc.allocator_note("cpu")
    monkeypatch.setenv(ENV, "system")
    assert fast_malloc.allocator_note("cpu") is None
