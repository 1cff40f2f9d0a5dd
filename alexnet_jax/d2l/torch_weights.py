"""Flax params <-> the `state_dict()` of d2l's PyTorch `nn.Sequential` AlexNet.

torch is imported lazily, only to turn numpy back into tensors: the package and
training work without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import D2L
from ..model.alexnet import CONV_LAYERS, FEATURE_C, FEATURE_HW, layers

# Flax module name -> index of that layer in d2l's nn.Sequential.
TORCH_INDEX = {
    "conv1": 0,
    "conv2": 3,
    "conv3": 6,
    "conv4": 8,
    "conv5": 10,
    "fc1": 14,
    "fc2": 17,
    "fc3": 20,
}
CONV_NAMES = tuple(layer[0] for layer in CONV_LAYERS)


class StateDictError(ValueError):
    """A state dict or params tree that does not fit d2l's AlexNet."""


def _to_numpy(value: Any) -> np.ndarray:
    """A copy as numpy, so later changes to a torch tensor never reach us."""
    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        value = value.detach().cpu().numpy()
    return np.array(value, copy=True)


def _fc1_torch_to_flax(weight: np.ndarray) -> np.ndarray:
    """(out, C*H*W) in torch's flatten order -> (H*W*C, out) in Flax's."""
    out = weight.shape[0]
    w = weight.reshape(out, FEATURE_C, FEATURE_HW, FEATURE_HW)
    return w.transpose(2, 3, 1, 0).reshape(FEATURE_HW * FEATURE_HW * FEATURE_C, out)


def _fc1_flax_to_torch(kernel: np.ndarray) -> np.ndarray:
    out = kernel.shape[1]
    k = kernel.reshape(FEATURE_HW, FEATURE_HW, FEATURE_C, out)
    return k.transpose(3, 2, 0, 1).reshape(out, FEATURE_C * FEATURE_HW * FEATURE_HW)


def expected_torch_shapes(num_classes: int = D2L.num_classes) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the state dict of d2l's net with `num_classes` outputs."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in layers(num_classes=num_classes):
        if kernel := layer["kernel"]:  # Flax's (H, W, in, out) or (in, out); torch's out first
            index = TORCH_INDEX[layer["name"]]
            shapes[f"{index}.weight"] = (kernel[-1], kernel[-2], *kernel[:-2])
            shapes[f"{index}.bias"] = (kernel[-1],)
    return shapes


def _num_classes_of(state: dict[str, Any]) -> int:
    shape = tuple(getattr(state.get(f"{TORCH_INDEX['fc3']}.bias"), "shape", ()))
    return int(shape[0]) if len(shape) == 1 else 10


def _value_problem(key: str, value: Any) -> str | None:
    """What makes `value` unusable as a float parameter, or None."""
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        return f"{key} is a {type(value).__name__}, not a tensor"
    floating = value.is_floating_point() if hasattr(value, "is_floating_point") \
        else np.issubdtype(value.dtype, np.floating)
    if not floating:
        return f"{key} has dtype {value.dtype}; parameters are floating point"
    finite = bool(value.isfinite().all()) if hasattr(value, "isfinite") \
        else bool(np.isfinite(value).all())
    return None if finite else f"{key} holds NaN or infinite values"


def check_state_dict(state_dict: dict[str, Any]) -> None:
    """Raise one StateDictError listing every missing, unexpected and mis-shaped key."""
    if not hasattr(state_dict, "keys"):
        raise StateDictError(
            f"expected a state dict (a mapping of parameter names to tensors), "
            f"got {type(state_dict).__name__}"
        )
    expected = expected_torch_shapes(_num_classes_of(state_dict))
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for key, shape in expected.items():
        if key not in state_dict:
            continue
        got = tuple(getattr(state_dict[key], "shape", ()))
        problem = _value_problem(key, state_dict[key])
        if problem or got != shape:
            problems.append(problem or f"{key} has shape {got}, expected {shape}")
    if problems:
        raise StateDictError(
            "not a state dict of d2l's AlexNet nn.Sequential: " + "; ".join(problems)
        )


def params_from_torch(state_dict: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Flax params (numpy copies) from the state dict of d2l's `nn.Sequential`."""
    check_state_dict(state_dict)
    params = {}
    for name, idx in TORCH_INDEX.items():
        weight = _to_numpy(state_dict[f"{idx}.weight"])
        if name in CONV_NAMES:
            kernel = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif name == "fc1":
            kernel = _fc1_torch_to_flax(weight)
        else:
            kernel = weight.T
        params[name] = {
            "kernel": np.ascontiguousarray(kernel),
            "bias": _to_numpy(state_dict[f"{idx}.bias"]),
        }
    return params


def params_to_torch(params: dict[str, Any], *, as_tensors: bool = True) -> dict[str, Any]:
    """The state dict of d2l's `nn.Sequential` (torch tensors, or numpy arrays) from Flax params."""
    unknown = sorted(set(params) - set(TORCH_INDEX))
    if unknown:
        raise StateDictError(f"not the params of d2l's AlexNet: unexpected Flax modules {unknown}"
                             f" (expected {list(TORCH_INDEX)})")
    state = {}
    for name, idx in TORCH_INDEX.items():
        if name not in params:
            continue  # check_state_dict names it as a missing key
        kernel = _to_numpy(params[name]["kernel"])
        if name in CONV_NAMES:
            weight = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif name == "fc1" and kernel.ndim == 2 and kernel.shape[0] == FEATURE_HW**2 * FEATURE_C:
            weight = _fc1_flax_to_torch(kernel)
        else:
            weight = kernel.T
        state[f"{idx}.weight"] = np.ascontiguousarray(weight)
        state[f"{idx}.bias"] = _to_numpy(params[name]["bias"])
    check_state_dict(state)
    if not as_tensors:
        return state
    import torch  # lazy: only needed to hand tensors to PyTorch

    return {k: torch.from_numpy(v) for k, v in state.items()}
