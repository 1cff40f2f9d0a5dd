"""The model: d2l's AlexNet as a Linen module (alexnet.py) and the one a run trains (build.py).

Imports kernels/ and runtime/ (build.py: the CPU-fast ops, the CPU's bf16 units);
alexnet.py config only.
"""
