"""Data parallelism: 2 processes of 2 devices each (forced on the CPU) give the 1-device result.

Every run is a subprocess (tests/parallel_worker.py), so this process keeps its one device.
The runs train in float64: AlexNet with dropout in float32 is chaotic at this scale (a 1e-8
change of the initial params grows to 1e-3 in 5 steps, measured), so float32 round-off in a
different reduction order would hide whether the parallel step computes the same thing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import finish, free_port, rel_err

from alexnet_jax.cli import main
from alexnet_jax.data.padding import pad_indices
from alexnet_jax.runtime.parallel import check_batch_size, make_mesh, put_replicated

WORKER = Path(__file__).with_name("parallel_worker.py")


STEPS = 2  # per epoch: a step after a step, and an epoch's end, at the least cost


def settings(workdir, data, **kw) -> dict:
    """2 steps of 4 images (1 a device on 4), 8 test images, float64."""
    return {"workdir": str(workdir), "batch_size": 4, "limit_train": 4 * STEPS,
            "limit_test": 8, "source": "idx", "manual_dir": str(data), "dtype": "float64",
            **kw}


def worker(prefix, config: dict, epochs="1", devices=1, distributed=()) -> subprocess.Popen:
    """A training process (float64: see the module docstring) with `devices` CPU devices."""
    env = {**os.environ, "JAX_ENABLE_X64": "1",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, str(WORKER), str(prefix), json.dumps(config),
                             epochs, *map(str, distributed)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def flat_params(params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(leaf)
            for p, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(params))}


def worst_error(saved, reference) -> tuple[str, float]:
    errors = {k: rel_err(saved[k], reference[k]) for k in reference if k.startswith("[")}
    worst = max(errors, key=errors.get)
    return worst, errors[worst]


def test_batch_size_the_devices_cannot_share_is_refused():
    with pytest.raises(ValueError, match=r"--batch-size 30 .* 4 devices.*use 28 or 32"):
        check_batch_size(30, 4)
    with pytest.raises(ValueError, match=r"use 8$"):
        check_batch_size(3, 8)
    check_batch_size(128, 8)
    np.testing.assert_array_equal(pad_indices(np.arange(6), 4), [0, 1, 2, 3, 4, 5, -1, -1])
    assert len(pad_indices(np.arange(8), 4)) == 8


def test_pipeline_batch_shapes_include_the_padded_last_batch():
    """What `train` compiles ahead of time: every batch shape an epoch delivers."""
    from alexnet_jax.data.fashion_mnist import Split
    from alexnet_jax.data.input_pipeline import DevicePipeline

    def sizes(n, batch):
        split = Split(np.zeros((n, 28, 28), np.uint8), np.zeros(n, np.int32))
        pipe = DevicePipeline(split, batch, True, 0, make_mesh())
        delivered = {int(b.labels.shape[0]) for b in pipe.epoch(0)}
        assert delivered == pipe.batch_sizes()
        return delivered

    assert sizes(22, 8) == {8, 6}
    assert sizes(24, 8) == {8}


@pytest.mark.slow
def test_cli_refuses_indivisible_batch_on_four_devices(fashion_mnist_dir, tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-m", "alexnet_jax.cli", "train", "--workdir",
                           str(tmp_path / "w"), "--batch-size", "30", "--manual-dir",
                           str(fashion_mnist_dir)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "--batch-size 30 (the global batch) is not divisible by the 4 devices" in proc.stderr
    assert "use 28 or 32" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


@pytest.mark.slow
def test_padding_examples_change_nothing(test_split):
    """A batch of 6 filled up to 8 with padding (label -1) trains exactly like the 6 alone."""
    from alexnet_jax.model.build import build_model
    from alexnet_jax.training.steps import create_train_state, empty_metrics, jit_steps

    mesh = make_mesh()
    step = jit_steps(mesh).train
    model = build_model().clone(dropout_rate=0.0)  # dropout draws depend on the batch shape
    images = test_split.images[:8].copy()
    labels = test_split.labels[:8].astype(np.int32)
    padded = labels.copy()
    padded[6:] = -1
    images[6:] = 255  # padding pixels must not matter either
    results = []
    for x, y in ((images[:6], labels[:6]), (images, padded)):
        state = put_replicated(create_train_state(model, 0, 0.01), mesh)
        state, metrics = step(state, x, y, put_replicated(empty_metrics(), mesh))
        results.append((flat_params(state.params), jax.device_get(metrics)))
    (p6, m6), (p8, m8) = results
    assert int(m8["count"]) == 6 and int(m8["correct"]) == int(m6["correct"])
    assert rel_err(m8["loss_sum"], m6["loss_sum"]) < 1e-6
    assert worst_error(p8, p6)[1] < 1e-6


@pytest.fixture(scope="module")
def one_device_run(fashion_mnist_dir, tmp_path_factory):
    """The reference: 1 device, 1 process, trained to epoch 1 (2 steps) and then epoch 2,
    with --augment (each image's draws must not depend on the sharding either)."""
    tmp = tmp_path_factory.mktemp("one")
    finish(worker(tmp / "one", settings(tmp / "w", fashion_mnist_dir, augment=True), "1,2"),
           300)
    return tmp / "w", np.load(tmp / "one_e1.npz"), np.load(tmp / "one_e2.npz")


@pytest.mark.slow
def test_two_processes_of_two_devices_equal_one_and_restore_on_one(
        one_device_run, fashion_mnist_dir, tmp_path, report):
    """2 processes on loopback (jax.distributed, gloo collectives), 2 CPU devices each: 4
    devices in all, 2 augmented steps, the params of the 1-device reference's first epoch; then
    the same work dir resumed on 1 device, the reference's second epoch.

    The host pipeline: each process reads the rows of its own devices through tf.data. The
    device pipeline's batches on 4 devices are the host pipeline's
    (test_device_pipeline_delivers_the_same_batches_on_four_devices), its multi-process loading
    runs in tests/test_lost_process.py, and the two pipelines' pixels are equal
    (tests/test_data.py)."""
    workdir1, one, one_e2 = one_device_run
    workdir = tmp_path / "two"
    config = settings(workdir, fashion_mnist_dir, pipeline="host", augment=True)
    coordinator = f"localhost:{free_port()}"
    started = time.monotonic()
    procs = [worker(tmp_path / f"p{i}", config, devices=2, distributed=(coordinator, 2, i))
             for i in range(2)]
    try:
        # a guard against a hung collective, not a speed check: loaded CI took 84 s
        outputs = [finish(p, max(started + 300 - time.monotonic(), 1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    report("2 processes of 2 devices on loopback: seconds to finish", time.monotonic() - started)
    saved = [np.load(tmp_path / f"p{i}_e1.npz") for i in range(2)]
    assert [int(s["processes"]) for s in saved] == [2, 2]
    assert [int(s["devices"]) for s in saved] == [4, 4]
    assert [int(s["step"]) for s in saved] == [STEPS, STEPS]
    for key in one.files:
        if key.startswith("["):
            np.testing.assert_array_equal(saved[0][key], saved[1][key])
    name, err = worst_error(saved[0], one)
    report(f"2 processes x 2 devices vs 1 device, {STEPS} augmented steps, float64: worst "
           f"parameter ({name})", err, 1e-5)
    assert err <= 1e-5
    for key in ("train_acc", "test_acc"):
        assert float(saved[0][key]) == float(one[key])
    assert rel_err(saved[0]["train_loss"], one["train_loss"]) < 1e-6  # float32 sums
    points1, points4 = ([json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()]
                        for w in (workdir1, workdir))
    assert len(points4) == STEPS  # process 0 alone writes the records
    assert [p["train_acc"] for p in points4] == [p["train_acc"] for p in points1[:STEPS]]
    np.testing.assert_allclose([p["train_loss"] for p in points4],
                               [p["train_loss"] for p in points1[:STEPS]], rtol=1e-6)
    assert len(json.loads((workdir / "config.json").read_text())["devices"]) == 4
    assert "examples/sec on 4 x cpu" in outputs[0] and "examples/sec" not in outputs[1]
    from alexnet_jax.observe.events import read_scalars  # TensorBoard events: process 0 alone

    assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    events = read_scalars(workdir / "tensorboard")
    assert [step for step, _ in events["train/loss"]] == [1, 2]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()
                  if p.name.isdigit()) == [str(STEPS)]

    # The checkpoint of 4 devices in 2 processes restores on 1 device of 1 process, and
    # training goes on like the run that never left 1 device.
    output = finish(worker(tmp_path / "resumed", config, "2"), 300)
    assert f"resuming from the checkpoint at step {STEPS} (epoch 2, batch 0)" in output
    resumed = np.load(tmp_path / "resumed_e2.npz")
    assert int(resumed["devices"]) == 1 and int(resumed["step"]) == 2 * STEPS
    name, err = worst_error(resumed, one_e2)
    report(f"2x2-device checkpoint resumed on 1, {2 * STEPS} steps: worst parameter ({name})",
           err, 1e-5)
    assert err <= 1e-5


PIPELINES_ON_FOUR_DEVICES = """
import sys
import numpy as np
from alexnet_jax.data.fashion_mnist import load_idx_split
from alexnet_jax.data.input_pipeline import DevicePipeline, HostPipeline
from alexnet_jax.runtime.parallel import make_mesh

mesh = make_mesh()
split = load_idx_split(sys.argv[1], "test").head(22)
host, device = (kind(split, 8, True, 3, mesh) for kind in (HostPipeline, DevicePipeline))
for h, d in zip(host.epoch(1), device.epoch(1), strict=True):  # 8, 8 and a padded 6
    assert h.size == d.size and d.images.sharding == h.images.sharding
    assert {s.data.shape[0] for s in d.images.addressable_shards} == {2}
    np.testing.assert_array_equal(np.asarray(d.images), np.asarray(h.images))
    np.testing.assert_array_equal(np.asarray(d.labels), np.asarray(h.labels))
print(len(mesh.devices.flat), "devices,", h.size, "in the last batch")
"""


@pytest.mark.slow
def test_device_pipeline_delivers_the_same_batches_on_four_devices(fashion_mnist_dir):
    """The device pipeline (a sharded uint8 split and a jitted gather) on 4 devices delivers
    the host pipeline's global batches, sharded the same way, the padded last one included."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", PIPELINES_ON_FOUR_DEVICES,
                           str(fashion_mnist_dir)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["4", "devices,", "6", "in", "the", "last", "batch"]


def test_cli_multi_host_flags_must_come_together(tmp_path, capsys):
    code = main(["train", "--workdir", str(tmp_path / "w"), "--coordinator", "localhost:1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "missing --num-processes, --process-id" in err
