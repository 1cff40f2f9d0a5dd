"""The seed's PyTorch model for the tests (kept in the package for the benchmark too)."""

from alexnet_jax.d2l_reference import d2l_alexnet, d2l_net, init_weights, nhwc_to_nchw

__all__ = ["d2l_alexnet", "d2l_net", "init_weights", "nhwc_to_nchw"]
