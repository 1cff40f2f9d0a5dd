"""Fashion-MNIST: release files, download, the tfds and IDX sources, preprocessing, pipelines.

Imports runtime/ and observe/ only.
"""
