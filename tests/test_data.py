"""Datasets and DataLoader: MNIST/CIFAR-10 from small fake files in the real formats,
every user-caused file problem as a one-line DatasetError, the synthetic set, the
crop/flip augmentation and the loader's resumable RNG state."""

import gzip
import json
import pickle

import numpy as np
import pytest

from gpukernels.data import (
    DATASETS,
    DataLoader,
    DatasetError,
    load_cifar10,
    load_dataset,
    load_mnist,
    load_synthetic,
    random_crop_flip,
)

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616])


# ----------------------------------------------------------------------------- writers


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 00 00 08 ndim, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_file(path, data: bytes, gz: bool):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist(directory, n_train=5, n_test=3, gz=True, dotted=False, seed=0):
    """Four fake MNIST files; returns the raw arrays (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8))
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in zip(MNIST_NAMES, arrays):
        if dotted:
            name = name[::-1].replace("-", ".", 1)[::-1]
        write_file(directory / (name + (".gz" if gz else "")), idx_bytes(array), gz)
    return arrays


def mnist_path(directory, i, gz=True):
    return directory / (MNIST_NAMES[i] + (".gz" if gz else ""))


def write_cifar(directory, rows=4, seed=0):
    """Five fake training batches and a test batch of ``rows`` images each."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, rows)]}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = batch
    return batches


def write_pickle(path, obj, protocol=2):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def raises_one_line(match, fn, *args, **kwargs):
    with pytest.raises(DatasetError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_shapes_dtypes_and_normalisation(tmp_path, gz):
    tx, ty, vx, vy = write_mnist(tmp_path, gz=gz)
    (x_train, y_train), (x_test, y_test) = load_mnist(tmp_path)
    assert x_train.shape == (5, 1, 28, 28) and x_test.shape == (3, 1, 28, 28)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64 and y_test.dtype == np.int64
    np.testing.assert_allclose(x_train[:, 0], (tx / 255.0 - 0.1307) / 0.3081, rtol=0, atol=1e-5)
    np.testing.assert_allclose(x_test[:, 0], (vx / 255.0 - 0.1307) / 0.3081, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(y_train, ty)
    np.testing.assert_array_equal(y_test, vy)


def test_mnist_dotted_names_fashion_and_dataset_dispatch(tmp_path):
    tx, ty, _, _ = write_mnist(tmp_path, gz=False, dotted=True)
    (x_train, y_train), _ = load_mnist(tmp_path, fashion=True)
    np.testing.assert_allclose(x_train[:, 0], (tx / 255.0 - 0.2860) / 0.3530, rtol=0, atol=1e-5)
    (x_train, y_train), _ = load_dataset("mnist", str(tmp_path))
    np.testing.assert_allclose(x_train[:, 0], (tx / 255.0 - 0.1307) / 0.3081, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(y_train, ty)


def test_mnist_prefers_plain_file_and_sniffs_gzip_content(tmp_path):
    tx, *_ = write_mnist(tmp_path, gz=True)
    # A plain file beside the .gz wins (no decompression) ...
    other = np.zeros((5, 28, 28), np.uint8)
    write_file(tmp_path / MNIST_NAMES[0], idx_bytes(other), gz=False)
    (x_train, _), _ = load_mnist(tmp_path)
    np.testing.assert_allclose(x_train, -0.1307 / 0.3081, atol=1e-6)
    # ... and gzip is recognised by content: a browser-decompressed "x.gz" and a
    # gzipped file without the suffix both load.
    write_file(tmp_path / MNIST_NAMES[0], idx_bytes(tx), gz=True)
    write_file(mnist_path(tmp_path, 1), idx_bytes(np.arange(5, dtype=np.uint8)), gz=False)
    (x_train, y_train), _ = load_mnist(tmp_path)
    np.testing.assert_allclose(x_train[:, 0], (tx / 255.0 - 0.1307) / 0.3081, atol=1e-5)
    np.testing.assert_array_equal(y_train, np.arange(5))


def test_mnist_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw")
    (x_train, _), (x_test, _) = load_mnist(tmp_path)
    assert len(x_train) == 5 and len(x_test) == 3


def test_mnist_directory_errors(tmp_path):
    raises_one_line(r"^MNIST: no such directory: .*nowhere$", load_mnist, tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    raises_one_line(r"MNIST: .*file is a file, expected a directory", load_mnist, tmp_path / "file")
    (tmp_path / "empty").mkdir()
    raises_one_line(r"MNIST: .*empty is an empty directory, expected train-images-idx3-ubyte\[\.gz\]",
                    load_mnist, tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    raises_one_line(r"MNIST: .*other contains none of train-images-idx3-ubyte\[\.gz\], train-labels",
                    load_mnist, tmp_path / "other")
    write_mnist(tmp_path / "partial")
    mnist_path(tmp_path / "partial", 3).unlink()
    raises_one_line(r"MNIST: .*partial is missing t10k-labels-idx1-ubyte\[\.gz\]$", load_mnist, tmp_path / "partial")
    raises_one_line(r"^--data-dir is required for mnist", load_dataset, "mnist")
    raises_one_line(r"^--data-dir is required for cifar10", load_dataset, "cifar10", None)


def test_mnist_truncated_files(tmp_path):
    tx, *_ = write_mnist(tmp_path)
    path = mnist_path(tmp_path, 0)
    write_file(path, idx_bytes(tx)[:-100], gz=True)
    raises_one_line(r"train-images-idx3-ubyte\.gz is truncated: header says 5x28x28 = 3920 bytes of pixels, "
                    r"file has 3820$", load_mnist, tmp_path)
    write_file(path, idx_bytes(tx)[:10], gz=True)
    raises_one_line(r"train-images-idx3-ubyte\.gz is truncated: 10 bytes, the IDX header needs 16",
                    load_mnist, tmp_path)
    write_file(path, b"\0\0", gz=False)
    raises_one_line(r"train-images-idx3-ubyte\.gz is truncated: 2 bytes, too short", load_mnist, tmp_path)
    write_file(path, idx_bytes(tx) + b"xx", gz=True)
    raises_one_line(r"train-images-idx3-ubyte\.gz has 2 bytes after the data", load_mnist, tmp_path)
    write_file(path, idx_bytes(tx), gz=True)
    write_file(mnist_path(tmp_path, 1), idx_bytes(np.arange(5, dtype=np.uint8))[:-2], gz=True)
    raises_one_line(r"train-labels-idx1-ubyte\.gz is truncated: header says 5 labels, file has 3", load_mnist, tmp_path)


def test_mnist_corrupt_gzip_and_wrong_magic(tmp_path):
    tx, ty, *_ = write_mnist(tmp_path)
    path = mnist_path(tmp_path, 0)
    path.write_bytes(gzip.compress(idx_bytes(tx))[:-20])  # cut inside the deflate stream
    raises_one_line(r"train-images-idx3-ubyte\.gz is a corrupt gzip file \(EOFError", load_mnist, tmp_path)
    blob = bytearray(gzip.compress(idx_bytes(tx)))
    blob[-8] ^= 0xFF  # wrong CRC
    path.write_bytes(bytes(blob))
    raises_one_line(r"train-images-idx3-ubyte\.gz is a corrupt gzip file \(BadGzipFile", load_mnist, tmp_path)
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    raises_one_line(r"train-images-idx3-ubyte\.gz is a corrupt gzip file", load_mnist, tmp_path)
    path.write_bytes(b"<html>Not found</html>")
    raises_one_line(r"train-images-idx3-ubyte\.gz is not an IDX file \(magic 0x3c68746d, expected 0x00000803\)",
                    load_mnist, tmp_path)
    # Images and labels swapped.
    write_file(path, idx_bytes(ty), gz=True)
    raises_one_line(r"is not an IDX file \(magic 0x00000801, expected 0x00000803; it holds labels\)",
                    load_mnist, tmp_path)


def test_mnist_label_problems(tmp_path):
    write_mnist(tmp_path)
    labels = mnist_path(tmp_path, 1)
    write_file(labels, idx_bytes(np.arange(4, dtype=np.uint8)), gz=True)
    raises_one_line(r"train-images-idx3-ubyte\.gz has 5 images but .*train-labels-idx1-ubyte\.gz has 4 labels",
                    load_mnist, tmp_path)
    write_file(labels, idx_bytes(np.array([1, 2, 12, 3, 4], np.uint8)), gz=True)
    raises_one_line(r"train-labels-idx1-ubyte\.gz has label 12 at index 2, expected 0\.\.9", load_mnist, tmp_path)


def test_mnist_directory_in_place_of_a_file_counts_as_missing(tmp_path):
    write_mnist(tmp_path)
    path = mnist_path(tmp_path, 2)
    path.unlink()
    path.mkdir()  # a directory is not a candidate, so the error says what is missing
    raises_one_line(r"is missing t10k-images-idx3-ubyte\[\.gz\]", load_mnist, tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("nested", [False, True])
def test_cifar_shapes_dtypes_and_normalisation(tmp_path, nested):
    directory = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    batches = write_cifar(directory)
    (x_train, y_train), (x_test, y_test) = load_cifar10(tmp_path)
    assert x_train.shape == (20, 3, 32, 32) and x_test.shape == (4, 3, 32, 32)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64 and y_test.dtype == np.int64
    raw = batches["data_batch_2"][b"data"][1]  # the 6th training image
    expected = (raw.reshape(3, 32, 32) / 255.0 - CIFAR_MEAN[:, None, None]) / CIFAR_STD[:, None, None]
    np.testing.assert_allclose(x_train[5], expected, rtol=0, atol=1e-5)
    assert x_train[5, 0, 0, 1] == pytest.approx((raw[1] / 255 - 0.4914) / 0.2470, abs=1e-5)  # red, row 0, col 1
    assert x_train[5, 2, 1, 0] == pytest.approx((raw[2048 + 32] / 255 - 0.4465) / 0.2616, abs=1e-5)  # blue, row 1
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    np.testing.assert_array_equal(y_train, labels)
    np.testing.assert_array_equal(y_test, batches["test_batch"][b"labels"])
    (x2, _), _ = load_dataset("cifar10", tmp_path)
    np.testing.assert_array_equal(x2, x_train)


def test_cifar_reads_python2_pickles_with_numpy_core_names(tmp_path):
    batches = write_cifar(tmp_path)
    # The official files were written by Python 2 against numpy.core; protocol-2 GLOBAL
    # opcodes name modules as plain text, so rewrite them the way those files spell them.
    path = tmp_path / "test_batch"
    blob = path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in blob
    path.write_bytes(blob)
    _, (x_test, y_test) = load_cifar10(tmp_path)
    np.testing.assert_array_equal(y_test, batches["test_batch"][b"labels"])
    # Protocol 5 pickles (NumPy's _frombuffer path) and str keys load too.
    write_pickle(path, {"data": batches["test_batch"][b"data"], "labels": [1, 2, 3, 4]}, protocol=5)
    _, (_, y_test) = load_cifar10(tmp_path)
    np.testing.assert_array_equal(y_test, [1, 2, 3, 4])


def test_cifar_directory_errors(tmp_path):
    raises_one_line(r"^CIFAR-10: no such directory", load_cifar10, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    raises_one_line(r"CIFAR-10: .*empty is an empty directory", load_cifar10, tmp_path / "empty")
    raises_one_line(r"CIFAR-10: .* is a file, expected a directory", load_cifar10,
                    write_file(tmp_path / "f", b"x", gz=False))
    write_cifar(tmp_path / "partial")
    (tmp_path / "partial" / "data_batch_3").unlink()
    (tmp_path / "partial" / "test_batch").unlink()
    raises_one_line(r"CIFAR-10: .*partial is missing data_batch_3, test_batch$", load_cifar10, tmp_path / "partial")
    (tmp_path / "tar").mkdir()
    (tmp_path / "tar" / "cifar-10-python.tar.gz").write_bytes(b"x")
    raises_one_line(r"holds cifar-10-python\.tar\.gz but no extracted batches: run tar xzf", load_cifar10,
                    tmp_path / "tar")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "data_batch_1.bin").write_bytes(b"x")
    raises_one_line(r"holds the binary version", load_cifar10, tmp_path / "bin")


@pytest.mark.parametrize("content, match", [
    (b"", r"unpickling failed: EOFError"),
    (b"\x80\x02garbage", r"unpickling failed"),
    (gzip.compress(b"not a pickle", mtime=0), r"unpickling failed"),
    (pickle.dumps([1, 2, 3]), r"it holds a list, expected a dict with b'data' and b'labels'"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), r"no b'data' or no b'labels' entry; keys: b'data'"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),
     r"b'data' is uint8 \(2, 100\), expected uint8 \(N, 3072\)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), r"b'data' is float32"),
    (pickle.dumps({b"data": [[0] * 3072], b"labels": [0]}), r"b'data' is list"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}),
     r"b'labels' are not integers: ValueError"),
])
def test_cifar_not_a_batch(tmp_path, content, match):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(content)
    message = raises_one_line(r"CIFAR-10: .*data_batch_1 is not a CIFAR-10 python batch \(" + match, load_cifar10,
                              tmp_path)
    assert str(tmp_path / "data_batch_1") in message


def test_cifar_label_count_and_range(tmp_path):
    write_cifar(tmp_path)
    write_pickle(tmp_path / "test_batch", {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]})
    raises_one_line(r"test_batch has 4 images but 3 labels", load_cifar10, tmp_path)
    write_pickle(tmp_path / "test_batch", {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 10, 2]})
    raises_one_line(r"test_batch has label 10 at index 2, expected 0\.\.9", load_cifar10, tmp_path)
    write_pickle(tmp_path / "test_batch", {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, -1, 1, 2]})
    raises_one_line(r"test_batch has label -1 at index 1", load_cifar10, tmp_path)


class _Exploit:
    def __reduce__(self):
        import os  # noqa: PLC0415

        return (os.system, ("echo pwned",))


def test_cifar_refuses_pickles_that_call_functions(tmp_path):
    write_cifar(tmp_path)
    write_pickle(tmp_path / "data_batch_1", {b"data": _Exploit(), b"labels": []})
    raises_one_line(r"unpickling failed: UnpicklingError: refusing to load (posix|nt)\.system", load_cifar10, tmp_path)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_determinism_and_balance():
    (x_train, y_train), (x_test, y_test) = load_synthetic(100, 30, shape=(2, 9, 7), num_classes=4, seed=3)
    assert x_train.shape == (100, 2, 9, 7) and x_test.shape == (30, 2, 9, 7)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert set(y_train.tolist()) == {0, 1, 2, 3} and np.bincount(y_train).tolist() == [25] * 4
    assert abs(x_train.mean()) < 1e-4 and abs(x_train.std() - 1) < 1e-4  # standardised
    again = load_synthetic(100, 30, shape=(2, 9, 7), num_classes=4, seed=3)
    np.testing.assert_array_equal(again[0][0], x_train)
    np.testing.assert_array_equal(again[1][1], y_test)
    other = load_synthetic(100, 30, shape=(2, 9, 7), num_classes=4, seed=4)
    assert not np.array_equal(other[0][0], x_train)
    (x1, _), _ = load_synthetic(1, 1, shape=(1, 1, 1), num_classes=2)  # degenerate sizes work
    assert x1.shape == (1, 1, 1, 1)


def test_synthetic_is_learnable_and_smooth():
    (x_train, y_train), (x_test, y_test) = load_synthetic(seed=1)
    assert x_train.shape == (2048, 3, 32, 32)
    means = np.stack([x_train[y_train == k].mean(0) for k in range(10)]).reshape(10, -1)
    dist = ((x_test.reshape(len(x_test), -1)[:, None] - means[None]) ** 2).sum(-1)
    accuracy = (dist.argmin(1) == y_test).mean()
    assert accuracy > 0.9, accuracy  # chance is 0.1
    # Templates are smooth: neighbouring pixels of a class mean are strongly correlated.
    m = means.reshape(10, 3, 32, 32)
    corr = np.corrcoef(m[..., :-1].ravel(), m[..., 1:].ravel())[0, 1]
    assert corr > 0.8, corr


@pytest.mark.parametrize("kwargs, match", [
    ({"num_train": 0}, "num_train"), ({"num_test": -1}, "num_test"), ({"num_train": 2.5}, "num_train"),
    ({"num_classes": 1}, "num_classes"), ({"shape": (3, 32)}, "shape"), ({"shape": (3, 0, 4)}, "shape"),
    ({"shape": 5}, "shape"), ({"seed": -1}, "seed"), ({"num_train": True}, "num_train"),
])
def test_synthetic_validates_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_synthetic(**kwargs)


def test_load_dataset_dispatch():
    assert DATASETS == ("digits", "mnist", "cifar10", "synthetic")
    (x, y), _ = load_dataset("synthetic", seed=2, num_train=12, num_test=4, shape=(1, 4, 4), num_classes=3)
    np.testing.assert_array_equal(x, load_synthetic(12, 4, (1, 4, 4), 3, seed=2)[0][0])
    load_dataset("synthetic", num_train=None, num_test=4, shape=(1, 4, 4))  # None means "default"
    (x, y), (xt, yt) = load_dataset("digits", seed=0)
    assert x.shape[1:] == (1, 8, 8) and x.dtype == np.float32 and len(x) + len(xt) == 1797
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choices: digits, mnist, cifar10, synthetic"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="num_train only apply to the synthetic dataset"):
        load_dataset("digits", num_train=10)
    assert not issubclass(ValueError, DatasetError) and issubclass(DatasetError, ValueError)


# ----------------------------------------------------------------------------- augmentation


def _batch(n=64, c=3, h=8, w=6, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)


def test_crop_flip_shape_dtype_and_determinism():
    images = _batch()
    augment = random_crop_flip(4)
    out = augment(images.copy(), np.random.default_rng(5))
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(out, augment(images.copy(), np.random.default_rng(5)))
    assert not np.array_equal(out, augment(images.copy(), np.random.default_rng(6)))
    assert repr(pickle.loads(pickle.dumps(augment))) == "random_crop_flip(padding=4)"


def test_crop_without_padding_is_identity_or_exact_mirror():
    images = _batch(n=400)
    out = random_crop_flip(0)(images, np.random.default_rng(0))
    same = (out == images).all(axis=(1, 2, 3))
    mirrored = (out == images[..., ::-1]).all(axis=(1, 2, 3))
    assert (same | mirrored).all()
    assert 0.4 < mirrored.mean() < 0.6, mirrored.mean()  # p = 0.5 per image


def test_crop_matches_a_per_image_reference():
    images, p = _batch(n=16, h=5, w=7), 2
    rng = np.random.default_rng(9)
    out = random_crop_flip(p)(images, rng)
    # Replay the same draws and crop image by image.
    rng = np.random.default_rng(9)
    top, left = rng.integers(0, 2 * p + 1, 16), rng.integers(0, 2 * p + 1, 16)
    flip = rng.random(16) < 0.5
    padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))
    for i in range(16):
        crop = padded[i, :, top[i]: top[i] + 5, left[i]: left[i] + 7]
        np.testing.assert_array_equal(out[i], crop[..., ::-1] if flip[i] else crop)
    assert (out == 0).any()  # some crops show the zero padding


def test_crop_flip_rejects_bad_arguments():
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(-1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) batch, got shape \(4, 8\)"):
        random_crop_flip(1)(np.zeros((4, 8)), np.random.default_rng(0))


# ----------------------------------------------------------------------------- DataLoader


def _epoch(loader):
    return [(x.numpy(), y.numpy()) for x, y in loader]


def test_loader_batches_and_drop_last():
    x, y = np.arange(10, dtype=np.float32)[:, None], np.arange(10)
    loader = DataLoader(x, y, 4)
    assert len(loader) == 3 and [len(b[1]) for b in _epoch(loader)] == [4, 4, 2]
    loader = DataLoader(x, y, 4, drop_last=True)
    assert len(loader) == 2 and [len(b[1]) for b in _epoch(loader)] == [4, 4]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in _epoch(DataLoader(x, y, 3))]), y)
    shuffled = np.concatenate([b[1] for b in _epoch(DataLoader(x, y, 3, shuffle=True))])
    assert sorted(shuffled) == list(range(10)) and list(shuffled) != list(range(10))
    with pytest.raises(TypeError, match="augment"):
        DataLoader(x, y, 4, augment="flip")


def test_loader_applies_augment_to_inputs_only():
    x, y = _batch(n=10, h=4, w=4), np.arange(10)
    seen = []

    def augment(images, rng):
        seen.append(images.shape)
        return images * 0 + 7

    batches = _epoch(DataLoader(x, y, 4, augment=augment))
    assert seen == [(4, 3, 4, 4), (4, 3, 4, 4), (2, 3, 4, 4)]
    assert all((b[0] == 7).all() for b in batches)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    np.testing.assert_array_equal(x, _batch(n=10, h=4, w=4))  # the dataset itself is untouched


def test_loader_seed_reproduces_shuffle_and_augmentation():
    x, y = _batch(n=20), np.arange(20)

    def run(seed):
        loader = DataLoader(x, y, 8, shuffle=True, seed=seed, augment=random_crop_flip(2))
        return _epoch(loader) + _epoch(loader)

    a, b, c = run(1), run(1), run(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))


def test_loader_state_dict_resumes_next_epoch_exactly():
    x, y = _batch(n=20), np.arange(20)
    make = lambda: DataLoader(x, y, 8, shuffle=True, seed=3, augment=random_crop_flip(2))  # noqa: E731
    loader = make()
    _epoch(loader)
    state = loader.state_dict()
    state = json.loads(json.dumps(state))  # JSON- and pickle-friendly
    state = pickle.loads(pickle.dumps(state))
    expected = _epoch(loader) + _epoch(loader)

    resumed = make()  # a fresh process: same seed, then the checkpoint's state
    resumed.load_state_dict(state)
    got = _epoch(resumed) + _epoch(resumed)
    for (xe, ye), (xg, yg) in zip(expected, got):
        np.testing.assert_array_equal(ye, yg)
        np.testing.assert_array_equal(xe, xg)
    # Without the state the fresh loader repeats epoch 1 instead.
    assert not np.array_equal(_epoch(make())[0][1], expected[0][1])
    # A bare bit_generator.state is accepted too; junk is refused.
    resumed.load_state_dict(state["rng"])
    np.testing.assert_array_equal(_epoch(resumed)[0][1], expected[0][1])
    with pytest.raises(ValueError, match="state_dict"):
        resumed.load_state_dict({"foo": 1})
    with pytest.raises(ValueError, match="'MT19937'"):
        resumed.load_state_dict(np.random.Generator(np.random.MT19937(0)).bit_generator.state)


# ----------------------------------------------------------------------------- integer labels
# Labels are class indices: floating labels are refused, never truncated (1.7 is not
# class 1), whole ones too (a float dtype says the file or array is not what it seems).


@pytest.mark.parametrize("labels, match", [
    ([0, 1, 1.7, 2], r"non-integer label 1\.7 at index 2 \(dtype float64\)"),
    ([0.0, 1.0, 2.0, 3.0], r"got dtype float64 \(whole values"),
    (np.array([0, 1, 2, 3], np.float32), r"got dtype float32"),
    ([0, 1, float("nan"), 2], r"non-integer label nan at index 2"),
    ([True, False, True, False], r"got booleans"),
])
def test_cifar_refuses_non_integer_labels(tmp_path, labels, match):
    write_cifar(tmp_path)
    write_pickle(tmp_path / "data_batch_3", {b"data": np.zeros((4, 3072), np.uint8), b"labels": labels})
    message = raises_one_line(r"CIFAR-10: .*data_batch_3 is not a CIFAR-10 python batch \(b'labels': labels must "
                              r"be integer class indices, .*" + match, load_cifar10, tmp_path)
    assert str(tmp_path / "data_batch_3") in message


@pytest.mark.parametrize("code, kind", [(0x0D, "float32"), (0x0E, "float64"), (0x0C, "int32")])
def test_mnist_refuses_label_files_that_are_not_unsigned_bytes(tmp_path, code, kind):
    write_mnist(tmp_path)
    values = np.array([0, 1.5, 2], ">f4" if code == 0x0D else ">f8" if code == 0x0E else ">i4")
    data = bytes([0, 0, code, 1]) + (3).to_bytes(4, "big") + values.tobytes()
    write_file(mnist_path(tmp_path, 1), data, gz=True)
    message = raises_one_line(rf"MNIST: .*train-labels-idx1-ubyte\.gz holds {kind} labels \(IDX type code "
                              rf"0x{code:02x}\), expected unsigned bytes \(0x08\)", load_mnist, tmp_path)
    assert ("non-integer labels are refused, not truncated" in message) == kind.startswith("float")


@pytest.mark.parametrize("targets, match", [
    (np.array([0.5, 1.7, 2.0, 3.0]), r"non-integer label 0\.5 at index 0 \(dtype float64\)"),
    (np.array([0.0, 1.0, 2.0, 3.0], np.float32), r"got dtype float32 \(whole values"),
    (np.array([True, False, True, False]), r"got booleans"),
    (np.array(["a", "b", "c", "d"]), r"got dtype <U1"),
])
def test_loader_refuses_non_integer_labels_unless_told_they_are_regression_targets(targets, match):
    x = np.zeros((4, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"^DataLoader: labels must be integer class indices, .*" + match
                       + r".*pass float_targets=True for regression targets$"):
        DataLoader(x, targets, 2)
    if targets.dtype.kind == "f":
        (_, y), _ = _epoch(DataLoader(x, targets, 2, float_targets=True))
        np.testing.assert_array_equal(y, targets[:2])  # kept as they are, not truncated
    for ints in (np.arange(4), np.arange(4, dtype=np.uint8), np.arange(4, dtype=np.int32)):
        assert len(_epoch(DataLoader(x, ints, 2))) == 2
