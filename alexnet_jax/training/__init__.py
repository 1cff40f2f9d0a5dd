"""Training: the train state and pure steps, the one loop, its console lines, the run records.

Imports model, kernels/, data/, runtime/ and observe/; only the entry points import the loop.
"""
