"""The model: d2l's AlexNet as a Linen module (alexnet.py) and the one a run trains (build.py).

Imports kernels/ (build.py plugs in the CPU-fast ops); alexnet.py config only.
"""
