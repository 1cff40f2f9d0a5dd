"""The CPU-fast ops that model/build.py's CPU model injects: Winograd convolutions
(`conv.py`, `winograd.py`, `patches.py`), a cheap max-pool gradient (`pool.py`), and for
bfloat16 the layers (`layers.py`) and dense matmul (`dot.py`) that keep XLA's CPU off its bf16
path. GPUs and TPUs never run them.

Imports nothing of the package.
"""
