"""runtime/fast_malloc.py: the command re-executes itself under tcmalloc once, unless told not."""

import os
import subprocess
import sys

import pytest

from alexnet_jax.runtime.fast_malloc import ENV, find_tcmalloc, loaded_allocator

# A child that asks for the preload, then reports what it runs under and how often it started.
CHILD = ("import os, sys; "
         "from alexnet_jax.runtime.fast_malloc import preload_tcmalloc, loaded_allocator;"
         "sys.stderr.write('start\\n'); preload_tcmalloc();"
         "print(loaded_allocator(), os.environ.get('ALEXNET_JAX_MALLOC'), sys.argv[1:])")


def run_child(**env):
    base = {k: v for k, v in os.environ.items() if k not in (ENV, "LD_PRELOAD")}
    proc = subprocess.run([sys.executable, "-c", CHILD, "a b", "--flag"], capture_output=True,
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
    assert out == "system system ['a b', '--flag']" and starts == 1


@pytest.mark.skipif(find_tcmalloc() is None,
                    reason="no tcmalloc (Debian: apt-get install libtcmalloc-minimal4)")
def test_reexecutes_once_under_tcmalloc_with_the_same_arguments():
    out, starts = run_child()
    assert out == "tcmalloc tcmalloc ['a b', '--flag']"
    assert starts == 2  # the first start re-executed itself, the second did not


def test_a_cpu_run_without_tcmalloc_says_once_what_it_costs(monkeypatch, tmp_path, capsys,
                                                          fashion_mnist_dir):
    """No tcmalloc installed, glibc's malloc loaded: train prints the note once, with the
    measured cost and the package to install; not where glibc's was asked for."""
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
    assert out.count("note: tcmalloc is not installed") == 1 and "46.5 images/s" in out
    monkeypatch.setenv(ENV, "system")
    assert fast_malloc.allocator_note("cpu") is None
