"""d2l's train_ch6 in JAX: one explicit loop, resumable, with d2l's metrics and plot.

Data flows one way: config -> data -> pipeline -> loop -> jitted step -> model. The loop
checkpoints after every epoch (and every N steps when asked, and on SIGTERM/SIGINT), so the
same command on the same work dir resumes exactly where the last checkpoint left off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from . import checkpoints
from .fashion_mnist import load_split
from .input_pipeline import batch_spec, make_pipeline
from .model import AlexNet
from .parallel import check_batch_size, is_primary, make_mesh, put_replicated
from .plots import plot_curves
from .steps import Steps, TrainState, create_train_state, empty_metrics, jit_steps

# Settings that define a run: a work dir refuses to continue with other values.
RUN_DEFINING = ("batch_size", "lr", "seed", "dtype", "limit_train", "limit_test", "num_classes")
# --dtype: (computation dtype, parameter dtype). float64 is for numerical checks (x64 only).
DTYPES = {"float32": (None, jnp.float32), "bfloat16": (jnp.bfloat16, jnp.float32),
          "float64": (jnp.float64, jnp.float64)}


@dataclass
class TrainConfig:
    workdir: str = "runs/alexnet"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    seed: int = 0
    pipeline: str = "device"
    source: str = "auto"
    data_dir: str | None = None
    manual_dir: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 3
    dtype: str = "float32"
    num_classes: int = 10
    strict_checkpoints: bool = False


class RunError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class Interrupted(RunError):
    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def device_name() -> str:
    """d2l's device string (cuda:0, tpu:0 or cpu:0); `N x cuda` for N devices."""
    dev = jax.devices()[0]
    platform = "cuda" if dev.platform == "gpu" and "rocm" not in dev.client.platform_version \
        else dev.platform
    count = jax.device_count()
    return f"{platform}:{dev.id}" if count == 1 else f"{count} x {platform}"


def package_versions() -> dict[str, str]:
    names = ("alexnet-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
             "tensorflow-datasets", "tensorflow", "tensorflow-cpu", "numpy")
    versions = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def check_config(config: TrainConfig) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, "
                             f"got {getattr(config, name)}")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"--lr must be a positive number, got {config.lr}")
    if config.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {config.dtype}")
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("--dtype float64 needs JAX's 64-bit mode: set JAX_ENABLE_X64=1")


def prepare_workdir(config: TrainConfig) -> tuple[Path, dict]:
    """Create the work dir, or check that its config.json describes this same run.

    Returns the work dir and what its config.json records besides the settings that a new
    config.json must keep (where a converted checkpoint came from).
    """
    workdir = Path(config.workdir)
    config_path = workdir / "config.json"
    kept = {}
    if config_path.exists():
        record = json.loads(config_path.read_text())
        saved = record["settings"]
        kept = {k: v for k, v in record.items() if k == "converted_from"}
        conflicts = [f"{k}={saved[k]!r} in {config_path}, {getattr(config, k)!r} now"
                     for k in RUN_DEFINING if k in saved and saved[k] != getattr(config, k)]
        if conflicts:
            raise RunError(
                "these settings conflict with the run in this work dir: " + "; ".join(conflicts)
                + ". Use another --workdir, or the saved settings to continue that run."
            )
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, kept


def write_config(workdir: Path, config: TrainConfig, only=None, extra=None) -> None:
    """config.json: the settings (or `only` those), package versions and devices."""
    if not is_primary():
        return
    settings = dataclasses.asdict(config)
    record = {
        "settings": {k: settings[k] for k in only} if only else settings,
        **(extra or {}),
        "versions": package_versions(),
        "devices": [str(d) for d in jax.devices()],
        "num_processes": jax.process_count(),
        "device_kind": jax.devices()[0].device_kind,
        "python": sys.version.split()[0],
    }
    _write_atomic(workdir / "config.json", json.dumps(record, indent=2) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class MetricsLog:
    """metrics.jsonl: one JSON object per point; a resumed run drops points past its step."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.points = []
        self.write = is_primary()  # one writer in a multi-process run
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    point = json.loads(line)
                    if point["step"] <= resume_step:
                        self.points.append(point)
            if self.write:
                _write_atomic(path, "".join(json.dumps(p) + "\n" for p in self.points))

    def add(self, point: dict) -> None:
        self.points.append(point)
        if not self.write:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(point) + "\n")
            f.flush()


def evaluate(state: TrainState, pipeline) -> dict[str, float]:
    """Test loss and accuracy over every example of `pipeline` (d2l's evaluate_accuracy_gpu)."""
    eval_step = jit_steps(pipeline.mesh).eval
    metrics = put_replicated(empty_metrics(), pipeline.mesh)
    for batch in pipeline.epoch(0):
        metrics = eval_step(state, batch.images, batch.labels, metrics)
    m = jax.device_get(metrics)
    return {"loss": float(m["loss_sum"]) / int(m["count"]),
            "acc": int(m["correct"]) / int(m["count"]), "count": int(m["count"])}


def build_model(config: TrainConfig) -> AlexNet:
    dtype, param_dtype = DTYPES[config.dtype]
    return AlexNet(num_classes=config.num_classes, dtype=dtype, param_dtype=param_dtype)


def _quiet(*args) -> None:
    """`out` of processes other than 0."""


def checkpoint_tree(state: TrainState, epoch_metrics, totals) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "rng": state.rng, "epoch_metrics": epoch_metrics,
            "totals": {k: np.asarray(v) for k, v in totals.items()}}


class SignalFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_and_evaluate(config: TrainConfig, out=print) -> tuple[TrainState, dict]:
    """Train (or resume) the run in config.workdir; return the final state and metrics."""
    check_config(config)
    mesh = make_mesh()
    try:
        check_batch_size(config.batch_size, mesh.size)
    except ValueError as err:
        raise RunError(str(err)) from None
    if not is_primary():
        out = _quiet
    workdir, provenance = prepare_workdir(config)
    train_split = load_split("train", config.source, config.data_dir,
                             config.manual_dir).head(config.limit_train)
    test_split = load_split("test", config.source, config.data_dir,
                            config.manual_dir).head(config.limit_test)
    train_pipe = make_pipeline(config.pipeline, train_split, config.batch_size, True,
                               config.seed, mesh)
    test_pipe = make_pipeline(config.pipeline, test_split, config.batch_size, False,
                              config.seed, mesh)
    steps_per_epoch = len(train_pipe)
    total_steps = steps_per_epoch * config.epochs

    model = build_model(config)
    state = put_replicated(create_train_state(model, config.seed, config.lr), mesh)
    epoch_metrics = put_replicated(empty_metrics(), mesh)
    steps = jit_steps(mesh)
    totals = {"train_seconds": np.float64(0.0), "train_examples": np.int64(0),
              "wall_seconds": np.float64(0.0)}
    mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints)
    target = checkpoint_tree(state, epoch_metrics, totals)
    step, restored = checkpoints.restore_latest(mngr, target, strict=config.strict_checkpoints)
    if restored is not None:
        state = state.replace(step=restored["step"], params=restored["params"],
                              opt_state=restored["opt_state"], rng=restored["rng"])
        epoch_metrics, totals = restored["epoch_metrics"], restored["totals"]
        out(f"resuming from the checkpoint at step {step} "
            f"(epoch {step // steps_per_epoch + 1}, batch {step % steps_per_epoch})")
    write_config(workdir, config, extra=provenance)
    log = MetricsLog(workdir / "metrics.jsonl", resume_step=int(state.step))
    start_step = int(state.step)
    if start_step >= total_steps:
        out(f"this run is finished ({start_step} steps of {total_steps}); nothing to train")
        mngr.close()
        return state, report(log, totals, out)

    wall_start = time.perf_counter() - float(totals["wall_seconds"])
    compile_seconds = compile_steps(steps, state, epoch_metrics, train_pipe)
    out(f"compiled the train step in {compile_seconds:.1f} s (not counted in examples/sec)")
    log_every = max(steps_per_epoch // 5, 1)  # d2l's animator: 5 points per epoch
    tty = sys.stderr.isatty() and is_primary()
    last_saved = start_step
    try:
        with SignalFlag() as flag:
            for epoch in range(start_step // steps_per_epoch, config.epochs):
                first = start_step - epoch * steps_per_epoch if epoch == start_step // \
                    steps_per_epoch else 0
                bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/"
                           f"{config.epochs}", unit="step", disable=not tty, dynamic_ncols=True)
                step_seconds = 0.0
                for i, batch in enumerate(train_pipe.epoch(epoch, first), start=first):
                    t0 = time.perf_counter()
                    state, epoch_metrics = steps.train(state, batch.images, batch.labels,
                                                       epoch_metrics)
                    jax.block_until_ready(epoch_metrics)
                    dt = time.perf_counter() - t0
                    step_seconds += dt
                    totals["train_seconds"] = totals["train_seconds"] + dt
                    totals["train_examples"] = totals["train_examples"] + batch.size
                    bar.update(1)
                    global_step = epoch * steps_per_epoch + i + 1
                    if (i + 1) % log_every == 0 or i + 1 == steps_per_epoch:
                        m = jax.device_get(epoch_metrics)
                        loss = float(m["loss_sum"]) / int(m["count"])
                        if not math.isfinite(loss):
                            raise RunError(
                                f"non-finite train loss ({loss}) by step {global_step} "
                                f"(epoch {epoch + 1}); lr {config.lr} is probably too large. "
                                f"The last good checkpoint (step {last_saved}) is kept.")
                        point = point_at(epoch, i, steps_per_epoch, global_step, m, totals,
                                         wall_start)
                        bar.set_postfix(loss=f"{point['train_loss']:.3f}",
                                        acc=f"{point['train_acc']:.3f}",
                                        img_s=f"{batch.size / max(dt, 1e-9):.0f}")
                        if i + 1 < steps_per_epoch:
                            log.add(point)
                            if not tty:
                                out(progress_line(point, global_step, total_steps))
                    every = config.checkpoint_every_steps
                    if flag.signum is not None or (every and global_step % every == 0
                                                   and i + 1 < steps_per_epoch):
                        totals["wall_seconds"] = np.float64(time.perf_counter() - wall_start)
                        checkpoints.save(mngr, global_step,
                                         checkpoint_tree(state, epoch_metrics, totals))
                        last_saved = global_step
                    if flag.signum is not None:
                        mngr.wait_until_finished()
                        name = signal.Signals(flag.signum).name
                        raise Interrupted(
                            f"stopped by {name} at step {global_step}; checkpoint saved in "
                            f"{checkpoints.checkpoint_dir(workdir)}. Run the same command to "
                            "resume.", flag.signum)
                bar.close()
                test = evaluate(state, test_pipe)
                m = jax.device_get(epoch_metrics)
                point = point_at(epoch, steps_per_epoch - 1, steps_per_epoch,
                                 (epoch + 1) * steps_per_epoch, m, totals, wall_start)
                point.update(test_acc=test["acc"], test_loss=test["loss"],
                             epoch_examples_per_sec=int(m["count"]) / step_seconds
                             if first == 0 else None)
                log.add(point)
                out(progress_line(point, point["step"], total_steps))
                epoch_metrics = put_replicated(empty_metrics(), mesh)
                totals["wall_seconds"] = np.float64(time.perf_counter() - wall_start)
                checkpoints.save(mngr, point["step"],
                                 checkpoint_tree(state, epoch_metrics, totals))
                last_saved = point["step"]
                if is_primary():
                    plot_curves(log.points, workdir / "curves.png", config.epochs)
    finally:
        mngr.wait_until_finished()
        mngr.close()
    return state, report(log, totals, out)


def compile_steps(steps: Steps, state, metrics, pipeline) -> float:
    """Compile the train step for each batch shape of `pipeline` ahead of time, so no timed
    step compiles."""
    t0 = time.perf_counter()
    for size in sorted(pipeline.batch_sizes()):
        images, labels = batch_spec(pipeline.kind, size)
        steps.train.lower(state, images, labels, metrics).compile()
    return time.perf_counter() - t0


def point_at(epoch, i, steps_per_epoch, global_step, m, totals, wall_start) -> dict:
    count = int(m["count"])
    return {
        "epoch": epoch + (i + 1) / steps_per_epoch,
        "step": global_step,
        "train_loss": float(m["loss_sum"]) / count,
        "train_acc": int(m["correct"]) / count,
        "test_acc": None,
        "examples_per_sec": float(totals["train_examples"]) / float(totals["train_seconds"]),
        "wall_seconds": time.perf_counter() - wall_start,
    }


def progress_line(point: dict, step: int, total_steps: int) -> str:
    test = f", test acc {point['test_acc']:.3f}" if point.get("test_acc") is not None else ""
    return (f"epoch {point['epoch']:.2f} step {step}/{total_steps}: loss "
            f"{point['train_loss']:.3f}, train acc {point['train_acc']:.3f}{test}, "
            f"{point['examples_per_sec']:.1f} examples/sec")


def report(log: MetricsLog, totals, out) -> dict:
    """d2l's two closing lines, from the last epoch-end point."""
    ends = [p for p in log.points if p.get("test_acc") is not None]
    if not ends:
        raise RunError(f"{log.path} holds no finished epoch to report")
    last = ends[-1]
    speed = float(totals["train_examples"]) / float(totals["train_seconds"])
    out(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, "
        f"test acc {last['test_acc']:.3f}")
    out(f"{speed:.1f} examples/sec on {device_name()}")
    if jax.device_count() > 1:
        out(f"{speed / jax.device_count():.1f} examples/sec per device")
    out(f"wall time {last['wall_seconds']:.1f} s")
    return {**last, "examples_per_sec": speed}
