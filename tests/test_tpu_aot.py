"""The train and eval steps compiled for a TPU slice without one (libtpu's compile-only devices).

libtpu comes from ALEXNET_JAX_TPU_AOT_DIR (a folder `pip install --target` filled: `make test`
does) or from this environment; without either the test skips, saying so. It runs in a child
process, so that libtpu never loads into this one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def libtpu_env() -> dict:
    """The child's environment: libtpu on its path, and JAX's default matmul precision (the
    TPU step as its users compile it: the suite's "highest", which conftest.py hands to every
    child, makes XLA emulate float32 in 6 bf16 passes, a 10x longer compile, 155 s here)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_DEFAULT_MATMUL_PRECISION"}
    folder = os.environ.get("ALEXNET_JAX_TPU_AOT_DIR")
    if folder:
        if not (Path(folder) / "libtpu").is_dir():
            pytest.fail(f"ALEXNET_JAX_TPU_AOT_DIR={folder} holds no libtpu")
        path = os.pathsep.join(p for p in (folder, os.environ.get("PYTHONPATH")) if p)
        return {**env, "PYTHONPATH": path}
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("no libtpu: set ALEXNET_JAX_TPU_AOT_DIR, or pip install "
                    "'alexnet-jax[tpu]' in a separate environment")
    return env


def xla_convolutions_on_cpu(batch: int) -> int:
    """The CPU program of the same train step: its convolutions, for contrast (as lowered: the
    count XLA's CPU passes leave is the same, 9, and lowering takes no compile)."""
    import jax
    from jax.sharding import Mesh

    from alexnet_jax.commands.aot import abstract_inputs
    from alexnet_jax.runtime.parallel import DATA_AXIS
    from alexnet_jax.training.steps import jit_steps

    mesh = Mesh(jax.devices()[:1], (DATA_AXIS,))
    args = abstract_inputs(mesh, "float32", batch)
    return jit_steps(mesh).train.lower(*args).as_text(dialect="hlo").count(" convolution(")


@pytest.mark.slow
def test_train_step_compiles_for_a_four_chip_tpu_slice_with_xla_convolutions(tmp_path, report):
    out = tmp_path / "v5e"
    done = subprocess.run(
        [sys.executable, "-m", "alexnet_jax", "aot", "--topology", "v5e:2x2", "--batch-size",
         "8", "--dtype", "float32", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=libtpu_env())
    assert done.returncode == 0, done.stderr
    assert "compiled, not measured" in done.stdout
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert (row["chips"], row["batch"], row["train"]["per_chip_batch"]) == (4, 8, 2)
    assert row["chip"] == "TPU v5e"
    # XLA's own convolutions on the TPU (5 forward, 4 input and 5 kernel gradients, some
    # split by XLA's TPU passes: 23 in jax 0.10.2); the CPU program has Winograd and patch
    # GEMMs for conv2-5 instead (9 there).
    cpu = xla_convolutions_on_cpu(8)
    report("TPU v5e:2x2 train step: XLA convolutions", row["hlo_convolutions"])
    report("the same step for the CPU: XLA convolutions", cpu)
    assert row["hlo_convolutions"] >= 14 and cpu < 14, (row["hlo_convolutions"], cpu)
    train = row["train"]
    assert train["gflop"] > 0 and 0 < train["hbm_fraction"] < 1
    assert train["roofline_ms"] > 0 and train["bound"] in ("compute", "memory")
    assert train["launches"] and sum(train["launches"].values()) > 20, train["launches"]


@pytest.mark.slow
@pytest.mark.skipif(not any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13)),
                    reason="JAX's CUDA plugin is not installed (pip install jax-cuda13-plugin "
                    "jax-cuda13-pjrt, with CUDA's ptxas on PATH; no GPU needed)")
def test_the_h200_step_lists_its_cudnn_convolutions_and_pool_gradients(tmp_path):
    """`aot --topology h200`: what the compiled train step launches on the GPU, from its HLO:
    cuDNN's convolutions and, with flax's max-pool, XLA's select-and-scatter."""
    out = tmp_path / "h200"
    env = {k: v for k, v in os.environ.items() if k != "JAX_DEFAULT_MATMUL_PRECISION"}
    done = subprocess.run([sys.executable, "-m", "alexnet_jax", "aot", "--topology", "h200",
                           "--batch-size", "8", "--dtype", "float32", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr
    train = json.loads(out.with_suffix(".json").read_text())["rows"][0]["train"]
    assert any(k.startswith("cuDNN conv") for k in train["launches"]), train["launches"]
    assert "train step launches:" in out.with_suffix(".md").read_text()


def test_launches_are_read_from_the_compiled_step():
    """What a step launches, read from its HLO: the accelerators' model (flax's layers) takes
    its pools' gradients by XLA's select-and-scatter, 3 of them, which XLA:GPU runs with
    atomics; the CPU's model by its winners, none (both before XLA's CPU passes, which fuse
    them); a GPU's custom calls are named by their target, its fusions by their kind."""
    import jax
    import jax.numpy as jnp

    from alexnet_jax.commands.aot import launches
    from alexnet_jax.model.build import build_model
    from alexnet_jax.runtime.parallel import make_mesh
    from alexnet_jax.training.steps import create_train_state, empty_metrics, jit_steps

    def train_step_launches(backend: str) -> dict[str, int]:
        state = jax.eval_shape(lambda: create_train_state(build_model(backend=backend), 0,
                                                          0.01))
        return launches(jit_steps(make_mesh()).train.lower(
            state, jax.ShapeDtypeStruct((2, 224, 224, 1), jnp.float32),
            jax.ShapeDtypeStruct((2,), jnp.int32), empty_metrics(state)).as_text(dialect="hlo"))

    accelerators, cpu = train_step_launches("gpu"), train_step_launches("cpu")
    assert accelerators.get("select-and-scatter") == 3, accelerators
    assert "select-and-scatter" not in cpu and sum(cpu.values()) > 20, cpu
    gpu_hlo = """HloModule m

ENTRY %main (p0: f32[2,224,224,1]) -> f32[2] {
  %p0 = f32[2,224,224,1]{3,2,1,0} parameter(0)
  %c = (f32[2,54,54,96]{3,2,1,0}, u8[0]{0}) custom-call(%p0), CONV
  %g = f32[2,54,54,96]{3,2,1,0} get-tuple-element(%c), index=0
  %f = f32[2,54,54,96]{3,2,1,0} fusion(%g), kind=kLoop, calls=%fused
  %t = f32[96,54,54,2]{3,2,1,0} transpose(%f), dimensions={3,2,1,0}
  ROOT %r = f32[2]{0} fusion(%t), kind=kInput, calls=%fused2
}
"""
    gpu_hlo = gpu_hlo.replace("CONV", 'custom_call_target="__cudnn$convForward"')
    assert launches(gpu_hlo) == {"cuDNN convForward": 1, "fusion kInput": 1,
                                 "fusion kLoop": 1, "transpose": 1}
