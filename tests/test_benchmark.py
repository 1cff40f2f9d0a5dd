"""Smoke test of `alexnet-jax benchmark`: one step per row, the table and the JSON."""

import json
import math

import pytest

from alexnet_jax.cli import main

pytestmark = pytest.mark.slow  # every test here runs AlexNet steps


def test_benchmark_one_step(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["benchmark", "--batch-size", "2", "--steps", "1", "--warmup", "1",
                 "--variants", "jax-f32-default", "torch-eager", "--json",
                 str(out_json), "--profile", str(tmp_path / "trace")]) == 0
    table = capsys.readouterr().out
    assert "| jax-f32-default | 2 |" in table and "| torch-eager | 2 |" in table
    result = json.loads(out_json.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"jax-f32-default", "torch-eager"}  # bfloat16: test_fast_grads.py
    for row in rows.values():
        assert "error" not in row, row
        for key in ("images_per_sec", "step_ms_median", "tflops_per_sec", "vs_torch_eager"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert len(row["step_ms"]) == 1 and row["step_ms"][0] > 0  # every timed step
    jax_row = rows["jax-f32-default"]
    assert jax_row["compile_s"] > 0
    # XLA's count of the compiled step is within 20% of the analytic 3 x forward FLOPs.
    assert 0.8 < jax_row["xla_flops_per_image"] / jax_row["analytic_flops_per_image"] < 1.2
    assert rows["torch-eager"]["vs_torch_eager"] == 1.0
    assert result["device_kind"] and result["versions"]["jax"]
    assert result["malloc"] in ("system", "tcmalloc", "jemalloc")  # it changes CPU figures
    # --profile: a jax.profiler trace of each JAX row's timed steps
    run = tmp_path / "trace" / "jax-f32-default-batch2" / "plugins" / "profile"
    assert list(run.glob("*/*.xplane.pb")) and list(run.glob("*/perfetto_trace.json.gz"))


def test_benchmark_epoch_rows(fashion_mnist_dir, tmp_path, capsys):
    """d2l's epoch end to end with each pipeline: 6 images, batch 4 (a full and a partial)."""
    out_json = tmp_path / "bench.json"
    assert main(["benchmark", "--batch-size", "4", "--no-torch", "--variants", "epoch-device",
                 "epoch-host", "--epoch-images", "6", "--manual-dir", str(fashion_mnist_dir),
                 "--source", "idx",
                 "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "epoch-device, batch 4: 6 images in" in table and "epoch-host, batch 4" in table
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["epoch-device", "epoch-host"]
    for row in rows:
        assert "error" not in row, row
        assert row["epoch_images"] == 6
        for key in ("epoch_s", "images_per_sec", "step_images_per_sec", "compile_s"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        # the steps are part of the epoch, so the steps alone run at least as fast
        assert row["step_images_per_sec"] >= row["images_per_sec"]
