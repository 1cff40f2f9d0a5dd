"""bfloat16 on the CPU: the step's structure, whatever this machine's CPU has."""

from __future__ import annotations

import math
import re
from collections import Counter

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax.model.build import build_model
from alexnet_jax.runtime.cpu import bf16_units
from alexnet_jax.runtime.parallel import make_mesh
from alexnet_jax.training.steps import create_train_state, empty_metrics, jit_steps

DOT = re.compile(r"stablehlo\.dot_general .*?: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> "
                 r"tensor<([^>]*)>")
LARGE = 65536  # elements: every activation and kernel of the net but fc3's and conv1's


def dtype_and_size(tensor: str) -> tuple[str, int]:
    *dims, dtype = tensor.split("x")
    return dtype, math.prod(int(d) for d in dims)


def step_dots(bf16_products: bool, batch: int = 32) -> tuple[str, Counter]:
    """The CPU train step's StableHLO, and its dots by (operand dtypes, result dtype, both
    operands large)."""
    state = jax.eval_shape(lambda: create_train_state(
        build_model("bfloat16", bf16_products=bf16_products), 0, 0.01))
    text = jit_steps(make_mesh()).train.lower(
        state, jax.ShapeDtypeStruct((batch, 224, 224, 1), jnp.float32),
        jax.ShapeDtypeStruct((batch,), jnp.int32), empty_metrics(state)).as_text()
    dots = Counter()
    for match in DOT.finditer(text):
        (a, na), (b, nb), (out, _) = (dtype_and_size(t) for t in match.groups())
        dots[(a, b, out, na >= LARGE and nb >= LARGE)] += 1
    return text, dots


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's step")
def test_the_step_for_a_cpu_with_bf16_units_is_bf16_dots():
    """No convolution; 23 dots on bf16 operands with float32 sums (conv1's forward and kernel
    gradient, conv2-5's three Winograd products each, three per dense layer); no bf16 result
    and no float32 dot between two large operands (the Winograd transforms' dots have a
    small constant one)."""
    text, dots = step_dots(bf16_products=True)
    assert "stablehlo.convolution" not in text
    assert sum(n for (a, b, out, _), n in dots.items()
               if (a, b, out) == ("bf16", "bf16", "f32")) == 23, dots
    assert not [k for k in dots if k[2] == "bf16"], dots
    assert not [k for k in dots if k[0] == k[1] == "f32" and k[3]], dots


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's step")
def test_without_bf16_units_the_step_is_float32_arithmetic():
    """XLA's bf16 convolutions (converted to float32 and back) are never used: conv1's
    forward is float32's XLA conv, as in the float32 step; the large products are float32
    dots on widened operands."""
    text, dots = step_dots(bf16_products=False)
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert len(convs) == 1 and "bf16" not in convs[0], convs
    assert not [k for k in dots if "bf16" in k[:3]], dots
    assert sum(n for k, n in dots.items() if k[3]) >= 15, dots


def test_bf16_units_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n")
    assert bf16_units(info) == ("avx512_bf16",)
    info.write_text("flags\t\t: fpu avx2 amx_bf16 avx512_bf16\n")
    assert bf16_units(info) == ("amx_bf16", "avx512_bf16")
    assert bf16_units(tmp_path / "missing") == ()


def test_train_says_what_bfloat16_gives_on_this_cpu():
    from alexnet_jax.training.report import bf16_cpu_note, compiled_lines

    assert "no bf16 units" in bf16_cpu_note(()) and "float32's speed" in bf16_cpu_note(())
    assert "only avx512_bf16" in bf16_cpu_note(("avx512_bf16",))
    assert "AMX" in bf16_cpu_note(("amx_bf16", "avx512_bf16"))
    assert len(compiled_lines(1.0, "cpu", "bfloat16")) == len(compiled_lines(1.0, "cpu")) + 1
    assert compiled_lines(1.0, "gpu", "bfloat16") == compiled_lines(1.0, "gpu")
