"""The Fashion-MNIST release: its four files, their SHA-256 sums, and reading one, checked.

Shared by the download (which verifies what it fetched) and the sources (which read it).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# SHA-256 of the decompressed IDX files (the same whatever the gzip header).
IDX_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# SHA-256 of the release's .gz files, which tfds registers for fashion_mnist 3.0.1.
GZ_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz":
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000
RELEASE_URL = "https://github.com/zalandoresearch/fashion-mnist"


class DataError(RuntimeError):
    """The data cannot be found, read or trusted; the message says how to fix it."""


def where_to_put_files(folder: str | os.PathLike | None = None) -> str:
    sums = "\n".join(f"  {sha}  {name}" for name, sha in GZ_SHA256.items())
    place = f"in {folder}" if folder else "in one folder and pass it with --manual-dir"
    place += " (or fetch them with `alexnet-jax download`)"
    return (
        f"Put the four Fashion-MNIST release files ({RELEASE_URL}) {place}. "
        f"Their SHA-256 sums:\n{sums}"
    )


def missing_files(folder: str | os.PathLike) -> list[str]:
    """The release files (NAME.gz, or NAME uncompressed) that `folder` lacks."""
    return [f"{name}.gz" for name in IDX_SHA256
            if not any((Path(folder) / n).is_file() for n in (f"{name}.gz", name))]


def find_idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"{name}(.gz) not found in {folder}. " + where_to_put_files(folder))


def fetch_again(path: Path, name: str) -> str:
    """What to do about a damaged or wrong release file: one line, its sum on it."""
    return (f"delete it and run `alexnet-jax download --dir {path.parent}` to fetch it again, "
            f"or put the release file {name}.gz there ({RELEASE_URL}; SHA-256 "
            f"{GZ_SHA256[name + '.gz']})")


def read_idx(path: Path, name: str) -> np.ndarray:
    """Read one IDX file (gzip with any header, or raw) after checking its SHA-256."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}; check the disk and the "
                        "file's permissions, or " + fetch_again(path, name)) from err
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{path} is damaged: its gzip stream cannot be decompressed "
                        f"({type(err).__name__}: {err}); " + fetch_again(path, name)) from err
    got = hashlib.sha256(data).hexdigest()
    want = IDX_SHA256[name]
    if got != want:
        raise DataError(
            f"{path} is not the Fashion-MNIST file {name}: SHA-256 of its decompressed bytes is "
            f"{got}, expected {want}; " + fetch_again(path, name))
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)
