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
        assert row["pipelined_images_per_sec"] > 0  # N steps dispatched, one wait
    jax_row = rows["jax-f32-default"]
    assert jax_row["compile_s"] > 0
    # The step's own peak from XLA's memory analysis: AlexNet's params alone are 0.19 GB.
    assert 0.19e9 < jax_row["peak_memory_bytes"] < 8e9
    # XLA's count of the compiled step, where XLA counts the convolutions (the CPU: at batch
    # 2 no Winograd, so within 20% of the analytic 3 x forward FLOPs); cuDNN's are not.
    gpu = result["platform"] == "gpu"
    assert jax_row["flops_source"] == ("analytic" if gpu else "xla")
    assert 0.8 < jax_row["flops_per_image"] / jax_row["analytic_flops_per_image"] < 1.2
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


def test_each_figure_is_one_the_hardware_allows():
    """MFU against the peak of the arithmetic a row runs in (TF32 for float32 at the default
    precision on an H200, full float32 for highest, bf16), a FLOP count that names its
    source, and an MFU above 1 refused as a figure."""
    from alexnet_jax.commands import benchmark

    assert benchmark.peak_flops("NVIDIA H200", "f32-default") == 494.7e12
    assert benchmark.peak_flops("NVIDIA H200", "f32-highest") == 67e12
    assert benchmark.peak_flops("NVIDIA H200", "bf16") == 989e12
    assert benchmark.peak_flops("TPU v5 lite", "f32-highest") is None
    assert benchmark.peak_flops("cpu", "bf16") is None
    cudnn = 'custom-call(...), custom_call_target="__cudnn$convForward"'
    assert benchmark.counted_flops(0.1e9, cudnn, 5.63e9) == (5.63e9, "analytic")
    assert benchmark.counted_flops(1.7e9, "convolution(...)", 5.63e9) == (1.7e9, "xla")
    # the committed H200 row: 20,090 images/s of 5.63 GFLOP is 113 TFLOP/s, 0.23 of TF32's
    row = {"images_per_sec": 20090.0, "xla_flops_per_image": 0.1e9, "hlo_text": cudnn}
    done = benchmark.finish_row(dict(row), "jax-f32-default", 128, 5.63e9, "NVIDIA H200")
    assert done["flops_source"] == "analytic" and 0.2 < done["mfu"] < 0.25, done
    fast = benchmark.finish_row({**row, "images_per_sec": 200_000.0}, "jax-f32-default", 128,
                                5.63e9, "NVIDIA H200")
    assert fast["error"].startswith("MFU 2.28 above 1"), fast
    # 8 chips' images/s against 8 chips' peak: the same MFU as one chip's
    eight = benchmark.finish_row({**row, "images_per_sec": 8 * 20090.0}, "jax-f32-default",
                                 128, 5.63e9, "NVIDIA H200", devices=8)
    assert eight["mfu"] == pytest.approx(done["mfu"]), eight
