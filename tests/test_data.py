"""Fashion-MNIST sources, Pillow-exact resize and the two pipelines."""

from __future__ import annotations

import gzip
import shutil

import jax
import numpy as np
import pytest

from alexnet_jax.d2l.pillow import pillow_resize
from alexnet_jax.data.fashion_mnist import (
    Split,
    load_idx_split,
    load_split,
    load_tfds_split,
)
from alexnet_jax.data.input_pipeline import (
    DevicePipeline,
    HostPipeline,
    epoch_order,
    num_batches,
)
from alexnet_jax.data.preprocess import resize_uint8_jax, resize_uint8_tf
from alexnet_jax.data.release import IDX_SHA256, DataError

jit_resize = jax.jit(resize_uint8_jax)


def test_resize_matches_pillow_on_random_images():
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    expected = pillow_resize(images)
    np.testing.assert_array_equal(np.asarray(jit_resize(images)), expected)
    np.testing.assert_array_equal(resize_uint8_tf(images).numpy(), expected)


@pytest.mark.parametrize("size", [(28, 17), (13, 40), (224, 100)])
def test_resize_matches_pillow_other_sizes(size):
    """The coefficients follow Pillow's algorithm, not just the 28 -> 224 case."""
    from PIL import Image

    src, dst = size
    images = np.random.default_rng(1).integers(0, 256, (8, src, src), dtype=np.uint8)
    expected = np.stack([np.asarray(Image.fromarray(im).resize((dst, dst), Image.BILINEAR))
                         for im in images])
    np.testing.assert_array_equal(np.asarray(resize_uint8_jax(images, dst)), expected)
    np.testing.assert_array_equal(resize_uint8_tf(images, dst).numpy(), expected)


def test_float_bilinear_is_not_enough():
    """Why we re-implement Pillow: jax.image's float bilinear misses many pixels by a level."""
    images = np.random.default_rng(2).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    plain = jax.image.resize(images.astype(np.float32), (8, 224, 224), "bilinear")
    off = np.mean(np.round(np.asarray(plain)).astype(int) != pillow_resize(images))
    assert off > 0.01


def test_epoch_order_and_batches():
    a, b = epoch_order(1000, 0, 0, True), epoch_order(1000, 0, 1, True)
    assert sorted(a) == list(range(1000)) and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, epoch_order(1000, 0, 0, True))
    assert not np.array_equal(a, epoch_order(1000, 1, 0, True))
    np.testing.assert_array_equal(epoch_order(10, 0, 3, False), np.arange(10))
    assert num_batches(60000, 128) == 469


def _tiny_split(n=50) -> Split:
    rng = np.random.default_rng(3)
    return Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                 rng.integers(0, 10, n).astype(np.int32))


def _batches(pipe, epoch, start=0):
    return [(np.asarray(b.images), np.asarray(b.labels), b.size)
            for b in pipe.epoch(epoch, start)]


def test_pipelines_agree_on_synthetic_data():
    split = _tiny_split()
    host, device = HostPipeline(split, 16, True, 5), DevicePipeline(split, 16, True, 5)
    assert len(host) == len(device) == 4
    h, d = _batches(host, 2), _batches(device, 2)
    assert [b[2] for b in h] == [16, 16, 16, 2]
    for (hi, hl, _), (di, dl, _) in zip(h, d):
        np.testing.assert_array_equal(hl, dl)
        np.testing.assert_array_equal(hi, di)
        assert hi.shape[1:] == di.shape[1:] == (224, 224, 1)
        assert hi.dtype == di.dtype == np.float32
    order = epoch_order(50, 5, 2, True)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in d]), split.labels[order])
    resumed = _batches(device, 2, start=2)  # a resumed epoch continues with the same batches
    np.testing.assert_array_equal(resumed[0][1], d[2][1])


def test_tfds_pipeline_on_mock_data(monkeypatch):
    """Pipeline logic on tfds.testing.mock_data (no files needed)."""
    import tensorflow_datasets as tfds

    from alexnet_jax.data import fashion_mnist

    # mock_data fakes the loading, not is_prepared(): no release files needed.
    monkeypatch.setattr(fashion_mnist, "release_dir", lambda manual_dir: "unused")
    with tfds.testing.mock_data(num_examples=40):
        split = load_tfds_split("train")
    assert split.images.shape == (40, 28, 28) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32 and split.labels.max() < 10
    batches = _batches(HostPipeline(split, 16, True, 0), 0)
    assert [b[2] for b in batches] == [16, 16, 8]
    expected = pillow_resize(split.images[epoch_order(40, 0, 0, True)[:16]])
    np.testing.assert_array_equal(batches[0][0][..., 0], expected.astype(np.float32) / 255.0)


def test_tfds_record_order_is_md5_of_split_and_index():
    """tfds writes fashion_mnist sorted by md5(split name + str(index)); we undo that order
    through tfds' private hashing, so this fails the day tfds changes it."""
    import hashlib

    from alexnet_jax.data.fashion_mnist import tfds_release_order

    for split in ("train", "test"):
        md5 = [int(hashlib.md5(f"{split}{i}".encode()).hexdigest(), 16) for i in range(500)]
        np.testing.assert_array_equal(tfds_release_order(500, split),
                                      np.argsort(md5, kind="stable"))


def test_changed_tfds_hashing_is_a_clear_error(monkeypatch):
    from tensorflow_datasets.core import hashing

    from alexnet_jax.data.fashion_mnist import tfds_release_order

    monkeypatch.delattr(hashing, "Hasher")
    with pytest.raises(DataError, match="changed its private hashing.*--source idx"):
        tfds_release_order(10, "train")


# ---- the real data (FASHION_MNIST_DIR) ----


def test_real_data_counts_and_order(train_split, test_split):
    assert train_split.images.shape == (60000, 28, 28)
    assert test_split.images.shape == (10000, 28, 28)
    assert list(np.bincount(train_split.labels)) == [6000] * 10
    assert list(np.bincount(test_split.labels)) == [1000] * 10
    assert list(train_split.labels[:10]) == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert list(test_split.labels[:10]) == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


@pytest.mark.slow
def test_every_resized_pixel_equals_pillow(train_split, test_split):
    """Device (JAX) and host (TF) resize give Pillow's pixels on 2,000 test and 2,000 train
    images in four blocks spread over the splits (all 70,000 were checked once: NOTES.md;
    the random and odd-sized images above cover every pixel value and size class)."""
    import tensorflow as tf

    tf_resize = tf.function(resize_uint8_tf)
    for split, every in ((test_split, 5), (train_split, 30)):
        for start in range(0, len(split), 1000 * every):
            chunk = split.images[start:start + 1000]
            expected = pillow_resize(chunk)
            np.testing.assert_array_equal(np.asarray(jit_resize(chunk)), expected)
            np.testing.assert_array_equal(tf_resize(chunk).numpy(), expected)


@pytest.mark.slow
def test_real_pipelines_agree(train_split):
    host, device = HostPipeline(train_split, 128, True, 0), DevicePipeline(train_split, 128,
                                                                           True, 0)
    assert len(host) == len(device) == 469
    labels_d = [train_split.labels[i] for i in device.batch_indices(0, 0)]  # no pixels: cheap
    sizes = [len(b) for b in labels_d]
    assert sizes[-1] == 96 and set(sizes[:-1]) == {128}
    np.testing.assert_array_equal(np.sort(np.concatenate(labels_d)), np.sort(train_split.labels))
    for start in (0, 468):  # the first and the last (partial) batch, pixels and labels
        h, d = next(host.epoch(0, start)), next(device.epoch(0, start))
        np.testing.assert_array_equal(h.labels, labels_d[start])
        np.testing.assert_array_equal(d.labels, labels_d[start])
        np.testing.assert_array_equal(h.images, np.asarray(d.images))
    first_next_epoch = next(host.epoch(1)).labels
    assert not np.array_equal(labels_d[0], first_next_epoch)  # epochs differ
    again = next(HostPipeline(train_split, 128, True, 0).epoch(0)).labels
    np.testing.assert_array_equal(again, labels_d[0])  # seeds repeat


# ---- bad files ----


@pytest.fixture
def data_copy(fashion_mnist_dir, tmp_path):
    folder = tmp_path / "fm"
    shutil.copytree(fashion_mnist_dir, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def test_flipped_byte_is_rejected_with_both_sums(data_copy):
    path = data_copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[100] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError) as err:
        load_idx_split(data_copy, "test")
    message = str(err.value)
    assert str(path) in message and IDX_SHA256["t10k-labels-idx1-ubyte"] in message
    import hashlib

    assert hashlib.sha256(bytes(raw)).hexdigest() in message


@pytest.mark.parametrize("damage", ["truncated", "deflate"])
def test_a_damaged_gzip_file_is_named_in_one_line_with_what_to_do(damage, data_copy):
    """Truncated, or 40 bytes of its deflate stream overwritten (zlib's "invalid block type"
    and the like): one line that names the file, says it is damaged and how to fetch it."""
    path = data_copy / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[:100000]
    else:
        raw[5000:5040] = bytes(range(40))
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        load_idx_split(data_copy, "test")
    message = str(err.value)
    assert message.startswith(f"{path} is damaged: its gzip stream cannot be decompressed")
    assert f"alexnet-jax download --dir {data_copy}` to fetch it again" in message
    assert "\n" not in message


def test_raw_and_regzipped_files_are_accepted(data_copy, test_split):
    """Other copies (torchvision's raw files, Debian's gzip headers) have the same bytes."""
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        gz = data_copy / f"{name}.gz"
        raw = gzip.decompress(gz.read_bytes())
        gz.unlink()
        (data_copy / name).write_bytes(raw)
    split = load_idx_split(data_copy, "test")
    np.testing.assert_array_equal(split.images, test_split.images)
    (data_copy / "t10k-labels-idx1-ubyte").unlink()
    (data_copy / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(raw, mtime=123456789))  # another header, same content
    np.testing.assert_array_equal(load_idx_split(data_copy, "test").labels, test_split.labels)


def test_missing_files_name_all_four_and_their_sums(tmp_path):
    with pytest.raises(DataError) as err:
        load_split("test", source="idx", manual_dir=str(tmp_path))
    message = str(err.value)
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in message
    assert "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84" in message


def test_tfds_offline_without_manual_dir_fails_fast(tmp_path, monkeypatch):
    """Not prepared, no release files in the cache, no server: a clear error at once."""
    import socket
    import time

    from alexnet_jax.data import download

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "BASE_URLS", (f"http://127.0.0.1:{port}/",))
    t0 = time.monotonic()
    with pytest.raises(DataError, match="Offline"):
        load_tfds_split("test", data_dir=str(tmp_path / "empty"))
    assert time.monotonic() - t0 < 30
