"""d2l's AlexNet on Fashion-MNIST in JAX/Flax: the names a harness of your own needs.

The model and its d2l init, the train state with the pure train and eval steps, the data in
d2l's preprocessing, and the weights between this model and d2l's PyTorch `nn.Sequential`.
Each name imports its module (and so JAX) on first use, so the `alexnet-jax` command answers
`--help` and usage errors without loading JAX.
"""

import importlib
import importlib.metadata

# Name -> the module that defines it.
_WHERE = {
    "params_from_torch": "d2l.torch_weights",
    "params_to_torch": "d2l.torch_weights",
    "CLASS_NAMES": "data.fashion_mnist",
    "Split": "data.fashion_mnist",
    "load_split": "data.fashion_mnist",
    "make_pipeline": "data.input_pipeline",
    "model_input": "data.preprocess",
    "AlexNet": "model.alexnet",
    "init_params": "model.alexnet",
    "TrainConfig": "config",
    "build_model": "model.build",
    **{name: "training.steps" for name in (
        "TrainState", "create_train_state", "cross_entropy", "empty_metrics", "eval_step",
        "evaluate", "train_step")},
}
__all__ = sorted(_WHERE)
try:  # the one home of the version is pyproject.toml
    __version__ = importlib.metadata.version("alexnet-jax")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
    __version__ = "unknown (not installed)"


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'alexnet_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_WHERE})
