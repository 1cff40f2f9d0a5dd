"""d2l's AlexNet (chapter 7.1) as a Flax Linen module, NHWC.

Layer for layer the `nn.Sequential` of the d2l notebook, initialised as d2l's run
initialises it: Xavier-uniform weights (d2l's `init_weights`) and PyTorch's default
bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which d2l leaves in place.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..config import D2L, IMAGE_SIZE

ModuleDef = Any

# (name, out channels, kernel, stride, padding, followed by a 3/2 max-pool)
CONV_LAYERS = (
    ("conv1", 96, 11, 4, 1, True),
    ("conv2", 256, 5, 1, 2, True),
    ("conv3", 384, 3, 1, 1, False),
    ("conv4", 384, 3, 1, 1, False),
    ("conv5", 256, 3, 1, 1, True),
)
DENSE_LAYERS = (("fc1", 4096), ("fc2", 4096))  # then fc3, with one output per class
POOL_WINDOW, POOL_STRIDE = 3, 2
IN_CHANNELS = 1


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def layers(image_size: int = IMAGE_SIZE, num_classes: int = D2L.num_classes,
           dropout: float = D2L.dropout) -> list[dict]:
    """d2l's `nn.Sequential` layer by layer for one image, in its order: `layer` (a label),
    `shape` (the output, HWC or features), `kernel` (the Flax kernel's shape; None without
    weights). The one walk of the tables above: the summary, the PyTorch state-dict shapes and
    the valid input sizes all read it."""
    rows, size, chans = [], image_size, IN_CHANNELS
    for name, out_c, kernel, stride, pad, pool in CONV_LAYERS:
        size = conv_out(size, kernel, stride, pad)
        rows.append(dict(layer=f"{name} (Conv {kernel}x{kernel}/{stride})", name=name,
                         shape=(size, size, out_c), kernel=(kernel, kernel, chans, out_c)))
        rows.append(dict(layer="ReLU", shape=(size, size, out_c), kernel=None))
        if pool:
            size = conv_out(size, POOL_WINDOW, POOL_STRIDE, 0)
            rows.append(dict(layer=f"MaxPool {POOL_WINDOW}/{POOL_STRIDE}",
                             shape=(size, size, out_c), kernel=None))
        chans = out_c
    features = size * size * chans
    rows.append(dict(layer="Flatten", shape=(features,), kernel=None))
    for name, out_f in (*DENSE_LAYERS, ("fc3", num_classes)):
        rows.append(dict(layer=f"{name} (Dense)", name=name, shape=(out_f,),
                         kernel=(features, out_f)))
        if name != "fc3":
            rows.append(dict(layer="ReLU", shape=(out_f,), kernel=None))
            rows.append(dict(layer=f"Dropout {dropout}", shape=(out_f,), kernel=None))
        features = out_f
    return rows


def trunk_output_size(size: int) -> int:
    """Spatial size after the conv/pool trunk for a square input of `size` pixels (0 when
    the input is too small for it)."""
    spatial = [r["shape"][0] for r in layers(size) if len(r["shape"]) == 3]
    return spatial[-1] if min(spatial) >= 1 else 0


FEATURE_HW, FEATURE_C = trunk_output_size(IMAGE_SIZE), CONV_LAYERS[-1][1]  # 5 x 5 x 256
VALID_SIZES = tuple(s for s in range(1, 512) if trunk_output_size(s) == FEATURE_HW)


def torch_bias_init(fan_in: int):
    """PyTorch's default bias init for Conv2d/Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def check_input(x) -> None:
    """Raise a ValueError that says what AlexNet expects when `x` cannot be its input."""
    shape = tuple(x.shape)
    sizes = f"{VALID_SIZES[0]}..{VALID_SIZES[-1]}"
    expected = (
        f"AlexNet expects NHWC images of shape (batch, H, W, {IN_CHANNELS}) with H and W in "
        f"{sizes} ({IMAGE_SIZE} as in d2l), which give the {FEATURE_HW}x{FEATURE_HW}x{FEATURE_C} = "
        f"{FEATURE_HW * FEATURE_HW * FEATURE_C} features the first dense layer needs"
    )
    if len(shape) != 4:
        raise ValueError(f"{expected}; got an array of rank {len(shape)} with shape {shape}")
    if shape[-1] != IN_CHANNELS:
        hint = ""
        if shape[1] == IN_CHANNELS:
            hint = " (this looks like NCHW: transpose with x.transpose(0, 2, 3, 1))"
        raise ValueError(f"{expected}; got {shape[-1]} channels in shape {shape}{hint}")
    if shape[1] not in VALID_SIZES or shape[2] not in VALID_SIZES:
        raise ValueError(f"{expected}; got spatial size {shape[1]}x{shape[2]} in shape {shape}")


class AlexNet(nn.Module):
    """AlexNet for 224x224x1 Fashion-MNIST, as in d2l.

    `dtype` is the computation dtype (bfloat16 for mixed precision); parameters are kept
    in `param_dtype` (float32 by default) and the logits are returned in float32 or wider.
    `conv`, `pool` and `dense` are stock Flax unless another with their signature is injected.
    """

    num_classes: int = D2L.num_classes
    dropout_rate: float = D2L.dropout
    dtype: Any = None
    param_dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv
    pool: Callable = nn.max_pool
    dense: ModuleDef = nn.Dense

    @nn.compact
    def __call__(self, x, *, train: bool):
        check_input(x)
        x = jnp.asarray(x, self.dtype) if self.dtype is not None else x
        in_c = IN_CHANNELS
        for name, features, kernel, stride, pad, pool in CONV_LAYERS:
            x = self.conv(
                features,
                (kernel, kernel),
                strides=(stride, stride),
                padding=((pad, pad), (pad, pad)),
                kernel_init=nn.initializers.xavier_uniform(),
                bias_init=torch_bias_init(in_c * kernel * kernel),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )(x)
            # d2l's ReLU then MaxPool2d, run as max-pool then ReLU: the two commute (values
            # and gradients, ties included), and the ReLU then touches a quarter of the values.
            if pool:
                x = self.pool(x, (POOL_WINDOW, POOL_WINDOW), strides=(POOL_STRIDE, POOL_STRIDE))
            x = nn.relu(x)
            in_c = features
        x = x.reshape((x.shape[0], -1))  # H, W, C order; d2l/torch_weights.py permutes fc1
        in_f = x.shape[-1]
        for name, features in DENSE_LAYERS:
            x = self._dense(features, in_f, name)(x)
            x = nn.relu(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            in_f = features
        x = self._dense(self.num_classes, in_f, "fc3")(x)
        return x.astype(jnp.promote_types(x.dtype, jnp.float32))

    def _dense(self, features: int, in_features: int, name: str) -> nn.Dense:
        return self.dense(
            features,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=torch_bias_init(in_features),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )


@functools.partial(jax.jit, static_argnames=("model", "image_size"))
def init_params(model: AlexNet, key, image_size: int = IMAGE_SIZE):
    """Parameters for `model`, initialised as d2l's run initialises its net."""
    # lazy_init runs only the initialisers, not the forward pass; jit makes them one program
    # (one compile, which a persistent compilation cache can keep), not hundreds of ops, and
    # one trace per model in a process.
    x = jax.ShapeDtypeStruct((1, image_size, image_size, IN_CHANNELS), model.param_dtype)
    return model.lazy_init({"params": key}, x, train=False)["params"]
