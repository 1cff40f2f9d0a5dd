"""The CPU-fast ops that build_model injects: Winograd convolutions, a cheap max-pool gradient.

Imports nothing of the package.
"""
