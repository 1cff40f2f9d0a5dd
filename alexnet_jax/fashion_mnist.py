"""Fashion-MNIST as uint8 arrays in the release order, from tfds or straight from the IDX files.

Both sources give the same arrays: (N, 28, 28) uint8 images and (N,) int32 labels, in the
order of the original release files (tfds stores a hash-shuffled order; we undo it).
The TF-free source needs neither TensorFlow nor tfds, for machines that have neither.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .progress import duration
from .tf_import import import_quietly, quiet_requested

# d2l's get_fashion_mnist_labels, in label order.
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
               "bag", "ankle boot")
SPLITS = ("train", "test")
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
RELEASE_URL = "https://github.com/zalandoresearch/fashion-mnist"


class DataError(RuntimeError):
    """The data cannot be found, read or trusted; the message says how to fix it."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        """The first `n` examples (all when n is None)."""
        return self if n is None else Split(self.images[:n], self.labels[:n])


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


def release_dir(manual_dir: str | os.PathLike | None) -> Path:
    """The folder with the four release files: `manual_dir`, checked at once and never with
    the network, or else the cache, downloaded on first use (download.py)."""
    if manual_dir is None:
        from . import download

        return download.download()
    if not Path(manual_dir).is_dir():
        raise DataError(f"data folder {manual_dir} does not exist. " + where_to_put_files())
    missing = missing_files(manual_dir)
    if missing:
        raise DataError(f"{manual_dir} lacks {', '.join(missing)}. "
                        + where_to_put_files(manual_dir))
    return Path(manual_dir)


def _find_idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"{name}(.gz) not found in {folder}. " + where_to_put_files(folder))


def read_idx(path: Path, name: str) -> np.ndarray:
    """Read one IDX file (gzip with any header, or raw) after checking its SHA-256."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(
            f"cannot read {path}: {err}. It is truncated or corrupted; "
            + where_to_put_files(path.parent)
        ) from err
    got = hashlib.sha256(data).hexdigest()
    want = IDX_SHA256[name]
    if got != want:
        raise DataError(
            f"{path} is not the Fashion-MNIST file {name}: SHA-256 of its decompressed bytes is "
            f"{got}, expected {want}. Replace it with the release file ({RELEASE_URL})."
        )
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_idx_split(folder: str | os.PathLike, split: str) -> Split:
    """One split from the four IDX files in `folder` (the TF-free source)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist. " + where_to_put_files())
    arrays = {}
    for kind in ("images", "labels"):
        name = FILES[(split, kind)]
        arrays[kind] = read_idx(_find_idx_file(folder, name), name)
    return Split(np.ascontiguousarray(arrays["images"]), arrays["labels"].astype(np.int32))


def tfds_release_order(num_examples: int, split: str) -> np.ndarray:
    """Release index of each tfds record: tfds writes examples sorted by md5(split, key).

    The one use of tfds' private `core.hashing`; tests/test_data.py fails if it changes.
    """
    try:
        hashing = import_quietly("tensorflow_datasets.core.hashing")
        hasher = hashing.Hasher(salt=split)
        keys = [hasher.hash_key(i) for i in range(num_examples)]
    except (ImportError, AttributeError, TypeError) as err:
        raise DataError(
            f"this tensorflow-datasets changed its private hashing ({type(err).__name__}: {err}), "
            "so the tfds source cannot restore the release order; use --source idx with "
            "--manual-dir"
        ) from err
    return np.argsort(keys, kind="stable")


def load_tfds_split(split: str, data_dir: str | None = None,
                    manual_dir: str | None = None) -> Split:
    """One split through `tfds.load('fashion_mnist')`, reordered to the release order."""
    try:
        tf = import_quietly("tensorflow")
        tfds = import_quietly("tensorflow_datasets")
    except ImportError as err:
        raise DataError(
            f"the tfds source needs tensorflow and tensorflow-datasets ({err}); "
            "use the TF-free source (--source idx) with --manual-dir instead"
        ) from err
    tf.config.set_visible_devices([], "GPU")  # TensorFlow only reads data: no GPU memory
    if quiet_requested():
        tfds.disable_progress_bar()  # its bars would draw cursor codes into a log
    builder = tfds.builder("fashion_mnist", data_dir=data_dir)
    prepared, start = builder.is_prepared(), time.monotonic()
    if not prepared:  # tfds prepares it from the release files, not the network
        manual_dir = str(release_dir(manual_dir))
        print(f"preparing tensorflow-datasets' copy of Fashion-MNIST in {builder.data_dir} "
              "(first use only)", flush=True)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        # tfds prints "Downloading and preparing dataset ..." itself: ours said it above.
        with contextlib.redirect_stdout(io.StringIO()) if quiet_requested() else (
                contextlib.nullcontext()):
            ds = tfds.load("fashion_mnist", split=split, data_dir=data_dir, as_supervised=True,
                           download_and_prepare_kwargs={"download_config": config})
        # Chunks rather than batch_size=-1, which aborts on tfds.testing.mock_data.
        chunks = list(tfds.as_numpy(ds.batch(10000)))
        images = np.concatenate([c[0] for c in chunks])
        labels = np.concatenate([c[1] for c in chunks])
    except Exception as err:  # tfds raises many types: checksum, missing file, network
        raise DataError(
            f"tfds could not load fashion_mnist: {err}. " + where_to_put_files(manual_dir)
        ) from err
    if not prepared:
        print(f"prepared it in {duration(time.monotonic() - start)}", flush=True)
    order = np.empty(len(labels), np.int64)
    order[tfds_release_order(len(labels), split)] = np.arange(len(labels))
    return Split(np.ascontiguousarray(images[order, :, :, 0]), labels[order].astype(np.int32))


def tf_available() -> bool:
    try:
        import_quietly("tensorflow")
        import_quietly("tensorflow_datasets")
    except ImportError:
        return False
    return True


def load_split(split: str, source: str = "auto", data_dir: str | None = None,
               manual_dir: str | None = None) -> Split:
    """A split from `source`: 'tfds', 'idx' (the release files read directly, TF-free) or
    'auto' (tfds when TensorFlow and tfds import). The release files come from `manual_dir`,
    or from the cache, downloaded on first use."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if manual_dir is not None:
        release_dir(manual_dir)  # every missing file named at once, before TensorFlow loads
    if source == "auto":
        source = "tfds" if tf_available() else "idx"
    if source == "tfds":
        return load_tfds_split(split, data_dir=data_dir, manual_dir=manual_dir)
    if source == "idx":
        return load_idx_split(release_dir(manual_dir), split)
    raise ValueError(f"source must be 'auto', 'tfds' or 'idx', got {source!r}")
