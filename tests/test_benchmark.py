"""Smoke test of `alexnet-jax benchmark`: one step per row, the table and the JSON."""

import json
import math

from alexnet_jax.cli import main


def test_benchmark_one_step(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["benchmark", "--batch-size", "2", "--steps", "1", "--warmup", "1",
                 "--variants", "jax-f32-default", "torch-eager", "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "| jax-f32-default | 2 |" in table and "| torch-eager | 2 |" in table
    result = json.loads(out_json.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"jax-f32-default", "torch-eager"}
    for row in rows.values():
        assert "error" not in row, row
        for key in ("images_per_sec", "step_ms_median", "tflops_per_sec", "vs_torch_eager"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    jax_row = rows["jax-f32-default"]
    assert jax_row["compile_s"] > 0
    # XLA's count of the compiled step is within 20% of the analytic 3 x forward FLOPs.
    assert 0.8 < jax_row["xla_flops_per_image"] / jax_row["analytic_flops_per_image"] < 1.2
    assert rows["torch-eager"]["vs_torch_eager"] == 1.0
    assert result["device_kind"] and result["versions"]["jax"]
