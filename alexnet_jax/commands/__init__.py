"""The CLI's commands beyond train: evaluate, predict, convert, plot, benchmark, summary.

Imports d2l/, training/ and below; never cli.
"""
