"""d2l's AlexNet on Fashion-MNIST in JAX/Flax: the names a harness of your own needs.

The model and its d2l init, the train state with the pure train and eval steps, the data in
d2l's preprocessing, and the weights between this model and d2l's PyTorch `nn.Sequential`.
"""

from .d2l.torch_weights import params_from_torch, params_to_torch
from .data.fashion_mnist import CLASS_NAMES, Split, load_split
from .data.input_pipeline import make_pipeline
from .data.preprocess import model_input
from .model import AlexNet, init_params
from .training.run_dir import build_model
from .training.steps import (
    TrainState,
    create_train_state,
    cross_entropy,
    empty_metrics,
    eval_step,
    evaluate,
    train_step,
)

__all__ = [
    "CLASS_NAMES",
    "AlexNet",
    "Split",
    "TrainState",
    "build_model",
    "create_train_state",
    "cross_entropy",
    "empty_metrics",
    "eval_step",
    "evaluate",
    "init_params",
    "load_split",
    "make_pipeline",
    "model_input",
    "params_from_torch",
    "params_to_torch",
    "train_step",
]
__version__ = "0.1.0"
