"""The CPU-fast ops that model/build.py's CPU model injects: Winograd convolutions
(`conv.py`, `winograd.py`, `patches.py`), a cheap max-pool gradient (`pool.py`), a dense
matmul (`dot.py`) whose kernel gradient needs no transpose and which keeps XLA's CPU off its
bf16 path, and the layers that call them (`layers.py`: Dense in every dtype, Conv for
bfloat16). GPUs and TPUs never run them.

Imports nothing of the package.
"""
