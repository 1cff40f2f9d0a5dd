"""The model: d2l's AlexNet as a Linen module (alexnet.py) and the one a run trains (build.py).

Imports config and kernels/ (build.py, which injects the CPU-fast ops); alexnet.py config only.
"""
