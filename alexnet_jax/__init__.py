"""d2l's AlexNet on Fashion-MNIST in JAX/Flax."""

from .model import AlexNet, init_params

__all__ = ["AlexNet", "init_params"]
__version__ = "0.1.0"
