"""What a person watches: progress with an ETA, PNG plots, TensorBoard events, traces.

Imports runtime/ only.
"""
