"""Fashion-MNIST as uint8 arrays in the release order, from tfds or straight from the IDX files.

Both sources give the same arrays: (N, 28, 28) uint8 images and (N,) int32 labels, in the
order of the original release files (tfds stores a hash-shuffled order; we undo it).
The TF-free source needs neither TensorFlow nor tfds, for machines that have neither.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import D2L, SOURCES
from ..observe.progress import duration
from ..runtime.tf_import import import_quietly, quiet_requested
from .download import download
from .release import (
    FILES,
    DataError,
    find_idx_file,
    missing_files,
    read_idx,
    where_to_put_files,
)

# d2l's get_fashion_mnist_labels, in label order.
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
               "bag", "ankle boot")
SPLITS = ("train", "test")
@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int32

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        """The first `n` examples (all when n is None)."""
        return self if n is None else Split(self.images[:n], self.labels[:n])


def release_dir(manual_dir: str | os.PathLike | None) -> Path:
    """The folder with the four release files: `manual_dir`, checked at once and never with
    the network, or else the cache, downloaded on first use (download.py)."""
    if manual_dir is None:
        return download()
    if not Path(manual_dir).is_dir():
        raise DataError(f"data folder {manual_dir} does not exist. " + where_to_put_files())
    missing = missing_files(manual_dir)
    if missing:
        raise DataError(f"{manual_dir} lacks {', '.join(missing)}. "
                        + where_to_put_files(manual_dir))
    return Path(manual_dir)


def load_idx_split(folder: str | os.PathLike, split: str) -> Split:
    """One split from the four IDX files in `folder` (the TF-free source)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist. " + where_to_put_files())
    arrays = {}
    for kind in ("images", "labels"):
        name = FILES[(split, kind)]
        arrays[kind] = read_idx(find_idx_file(folder, name), name)
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
                    manual_dir: str | None = None, out=print) -> Split:
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
        out(f"preparing tensorflow-datasets' copy of Fashion-MNIST in {builder.data_dir} "
            "(first use only)")
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
        out(f"prepared it in {duration(time.monotonic() - start)}")
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


def load_split(split: str, source: str = D2L.source, data_dir: str | None = None,
               manual_dir: str | None = None, out=print) -> Split:
    """A split from `source`: 'tfds', 'idx' (the release files read directly, TF-free) or
    'auto' (tfds when TensorFlow and tfds import). The release files come from `manual_dir`,
    or from the cache, downloaded on first use; `out` says when tfds prepares its copy."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    # every missing file named at once, before TensorFlow loads
    checked = release_dir(manual_dir) if manual_dir is not None else None
    if source == "auto":
        source = "tfds" if tf_available() else "idx"
    if source == "tfds":
        return load_tfds_split(split, data_dir=data_dir, manual_dir=manual_dir, out=out)
    if source == "idx":
        return load_idx_split(checked or release_dir(None), split)
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
