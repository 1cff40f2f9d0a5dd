"""Shared fixtures: the real data (FASHION_MNIST_DIR), d2l's PyTorch net, error reporting."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# The tests run on the allocator the command chooses (tcmalloc where installed, else glibc's
# malloc set to keep freed memory): on glibc's malloc as it is, every step faults its scratch
# memory in again (the system time was a fifth of the suite's). The allocator is fixed when a
# process starts: pytest-xdist's workers, and the commands the tests start, inherit this.
from alexnet_jax.runtime.fast_malloc import chosen_allocator  # noqa: E402

os.environ.update(chosen_allocator())

# One XLA compilation cache for this session, its pytest-xdist workers and the training
# subprocesses they start, so the same program (init, train step) is compiled once, not once
# per process; every program, not only those over JAX's default 1 s of compiling (a training
# process compiles about a dozen small ones: 1.3 s, measured).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="alexnet-xla-")
else:
    _CACHE = None
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# On a GPU, compare at full float32 precision on both sides (no TF32, no bf16 passes): set in
# the environment, so that the processes the tests start (training runs, workers) compute at
# the same precision as this one (tests/test_library.py checks that they do).
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

MEASURED: list[str] = []
SECONDS_PER_FILE: dict[str, float] = {}  # setup, call and teardown of every test in a file


# pytest-xdist hands out whole files (`--dist loadfile`) in collection order: the longest go
# first, so that none starts last and leaves the other worker idle at the end (seconds per
# file: benchmarks/NOTES.md 41; the lost-process run first, beside the file that trains the
# shared reference run). A file not named here keeps its place after them.
LONGEST_FIRST = ("test_lost_process.py", "test_train.py", "test_faults.py", "test_parallel.py",
                 "test_fast_grads.py", "test_failure_paths.py", "test_equivalence.py",
                 "test_augment.py", "test_loop_equivalence.py", "test_tpu_aot.py",
                 "test_benchmark.py", "test_download.py", "test_observe.py", "test_library.py",
                 "test_data.py", "test_bf16.py", "test_cli.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a file


def pytest_sessionfinish(session, exitstatus):
    if _CACHE:
        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if SECONDS_PER_FILE:
        terminalreporter.section("seconds per test file (summed over workers)")
        for name, seconds in sorted(SECONDS_PER_FILE.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{seconds:8.1f}  {name}")
        terminalreporter.write_line(f"{sum(SECONDS_PER_FILE.values()):8.1f}  in all")
    if MEASURED:
        terminalreporter.section("measured errors and statistics")
        for line in MEASURED:
            terminalreporter.write_line(line)


def pytest_runtest_logreport(report):
    """Collect the figures a test measured, and its time per file; with pytest-xdist its
    report reaches us from the worker that ran it, user properties included."""
    name = report.nodeid.split("::")[0]
    SECONDS_PER_FILE[name] = SECONDS_PER_FILE.get(name, 0.0) + report.duration
    if report.when == "teardown":
        MEASURED.extend(value for key, value in report.user_properties if key == "measured")


@pytest.fixture
def report(request):
    """report(name, value, bound): record a measured figure for the end-of-run summary."""

    def add(name: str, value: float, bound: float | None = None):
        tail = "" if bound is None else f"  (bound {bound:.0e})"
        request.node.user_properties.append(("measured", f"{name:<64} {value:.3e}{tail}"))

    return add


def _as_is(x):
    return x


def eval_logits(apply_fn, params, x, preprocess=_as_is):
    """The eval pass's logits (no dropout) of `preprocess(x)`, as one jitted program: an
    AlexNet run op by op compiles every op on its own (3 s of CPU the first time)."""
    return _eval_logits(apply_fn, params, x, preprocess)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _eval_logits(apply_fn, params, x, preprocess):
    return apply_fn({"params": params}, preprocess(x), train=False)


@contextlib.contextmanager
def jax_events(suffix: str):
    """The names of the functions JAX reports an event ending in `suffix` for while the block
    runs ("jaxpr_trace_duration": traced; "backend_compile_duration": compiled)."""
    names: list[str | None] = []

    def listen(event, seconds, fun_name=None, **kw):
        if event.endswith(suffix):
            names.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The four release files: FASHION_MNIST_DIR (a failure when it lacks them), else the
    user's cache, downloaded into it if need be; skipped, saying why, only when neither works."""
    from alexnet_jax.data.download import default_dir, download
    from alexnet_jax.data.release import DataError, missing_files

    value = os.environ.get("FASHION_MNIST_DIR")
    if value:
        if missing := missing_files(value):
            pytest.fail(f"FASHION_MNIST_DIR={value} lacks {missing}")
        return Path(value)
    try:
        return download(default_dir(), out=lambda line: None)
    except DataError as err:
        pytest.skip(f"no Fashion-MNIST: FASHION_MNIST_DIR is unset and the download failed: {err}")


@pytest.fixture(scope="session")
def test_split(fashion_mnist_dir):
    from alexnet_jax.data.fashion_mnist import load_idx_split

    return load_idx_split(fashion_mnist_dir, "test")


@pytest.fixture(scope="session")
def train_split(fashion_mnist_dir):
    from alexnet_jax.data.fashion_mnist import load_idx_split

    return load_idx_split(fashion_mnist_dir, "train")


def d2l_images(split, start: int, n: int) -> np.ndarray:
    """d2l's preprocessing (Resize(224) + ToTensor) of n test images, NHWC float32."""
    from alexnet_jax.d2l.pillow import pillow_resize

    return (pillow_resize(split.images[start:start + n]).astype(np.float32) / 255.0)[..., None]


SMALL_RUN = ["--limit-train", "12", "--limit-test", "4", "--batch-size", "4", "--source", "idx"]


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder` (made), for a disk that fills; skips where no
    tmpfs can be mounted. Unmounted after, lazily if a writer still holds a file open."""
    folder.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def train_args(workdir, data, epochs=2, *extra) -> list[str]:
    """A small real-data run: 3 steps of 4 images per epoch, 4 test images."""
    return ["train", "--workdir", str(workdir), "--epochs", str(epochs), "--manual-dir",
            str(data), *SMALL_RUN, *extra]


def run_record(workdir) -> list[dict]:
    """metrics.jsonl without its timings: what must be equal between two runs of one config."""
    import json

    timing = {"wall_seconds", "examples_per_sec", "epoch_examples_per_sec"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def params_of(workdir):
    from alexnet_jax.training.saved_state import load_state

    return jax.device_get(load_state(workdir)[0].params)


def finished(workdir, data, *extra) -> tuple:
    """Run the small 2-epoch command (with `extra` flags) to its end in `workdir`; what two
    equal runs share: params, metrics points without timings, d2l's closing line."""
    import contextlib
    import io

    from alexnet_jax.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(train_args(workdir, data, 2, *extra)) == 0
    closing = [line for line in out.getvalue().splitlines() if line.startswith("loss ")]
    return params_of(workdir), run_record(workdir), closing


@pytest.fixture(scope="session")
def reference_dir(fashion_mnist_dir, tmp_path_factory, worker_id):
    """An uninterrupted small 2-epoch run (checkpoints at steps 3 and 6): its work dir, which
    tests copy (`copy_run`) rather than change, and what `finished` returns for it. Trained
    once a session: the first pytest-xdist worker to need it trains it under a lock."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # the session's, or the workers'
    folder = shared / "reference"
    with open(shared / "reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "closing.txt").exists():
            closing = finished(folder / "w", fashion_mnist_dir)[2]
            (folder / "closing.txt").write_text("\n".join(closing))
    closing = (folder / "closing.txt").read_text().splitlines()
    return folder / "w", (params_of(folder / "w"), run_record(folder / "w"), closing)


@pytest.fixture(scope="session")
def reference_run(reference_dir):
    """The reference run's params, metrics points and closing line, to compare stopped and
    resumed runs with."""
    return reference_dir[1]


def steps_saved(workdir: Path) -> list[int]:
    """The steps of a work dir's complete checkpoints, in order (none: [])."""
    ckpt = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() \
        else []


def copy_run(reference_dir, workdir: Path) -> Path:
    """A copy of the reference run's work dir, for a test that trains on in it or damages it."""
    shutil.copytree(reference_dir[0], workdir)
    return workdir


def assert_same_run(got, reference) -> None:
    assert_same_params(got[0], reference[0])
    assert got[1] == reference[1]  # every metrics point, test accuracies included
    assert got[2] == reference[2]  # d2l's closing line


@contextlib.contextmanager
def sigterm_after(steps: int):
    """Within the block, an in-process `train` sends itself SIGTERM after its `steps`-th
    train step, as a user's Ctrl-C or a scheduler's stop would land."""
    import signal

    from alexnet_jax.training import loop as train

    real_compile = train.compile_steps

    def compile_then_stop(*args):
        step, seconds, compiled = real_compile(*args)
        calls = []

        def step_then_signal(*step_args):
            result = step(*step_args)
            calls.append(1)
            if len(calls) == steps:
                os.kill(os.getpid(), signal.SIGTERM)
            return result

        return step_then_signal, seconds, compiled

    train.compile_steps = compile_then_stop
    try:
        yield
    finally:
        train.compile_steps = real_compile


def assert_events_mirror_metrics(workdir) -> None:
    """Every metrics.jsonl point is in the event files once, with its values."""
    import json

    from alexnet_jax.observe.events import read_scalars

    points = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    scalars = read_scalars(workdir / "tensorboard")
    for key, tag in (("train_loss", "train/loss"), ("train_acc", "train/acc"),
                     ("test_acc", "test/acc"), ("examples_per_sec", "speed/examples_per_sec")):
        kept = [p for p in points if p.get(key) is not None]
        events = scalars.get(tag, [])  # none yet: a run stopped in its first epoch
        assert [step for step, _ in events] == [p["step"] for p in kept], tag
        np.testing.assert_allclose([v for _, v in events], [p[key] for p in kept],
                                   rtol=1e-6)
    assert {v for _, v in scalars["train/lr"]} == {np.float32(0.01)}


def assert_same_params(a, b) -> None:
    jax.tree.map(np.testing.assert_array_equal, a, b)


def corrupt_array_data(checkpoint: Path, how: str) -> Path:
    """Damage the largest data file of a checkpoint: truncate it or flip bytes in it."""
    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        for i in range(len(data) // 3, len(data) // 3 + 64):
            data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def finish(proc, timeout: float) -> str:
    """The stdout of a training subprocess that must end well within `timeout` seconds."""
    try:
        output, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{output}\n{err or ''}"
    return output


def free_port() -> int:
    """A free TCP port on localhost, for a coordinator."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]
