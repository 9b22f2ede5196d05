"""The dataset readers: every loader returns ``((x_train, y_train), (x_test, y_test))``
as NumPy arrays, float32 images in NCHW layout and int64 labels.

- ``load_digits``: scikit-learn's bundled 8x8 digits (1797 images, no download),
  (N, 1, 8, 8) in [0, 1], with a deterministic stratified train/test split.
- ``load_mnist``: the four IDX files of MNIST (or Fashion-MNIST) from a directory,
  gzipped or not, (N, 1, 28, 28) standardised with the usual mean/std.
- ``load_cifar10``: the python-pickle batches of CIFAR-10, (N, 3, 32, 32) standardised
  per channel.
- ``load_synthetic``: a learnable synthetic set of any size and image shape, for
  throughput runs on machines without data.
- ``load_dataset``: dispatch by name (``DATASETS``).
- ``label_problem``: what is wrong with an array of class labels, in words (the
  ``DataLoader`` refuses floating labels with it).

Nothing is downloaded. Anything wrong with the files a user points us at raises
``DatasetError`` with one line naming the path and the problem, never a traceback from
deep inside gzip, pickle or NumPy.

``gpukernels.data`` re-exports every public name here (``from gpukernels.data import
load_mnist`` keeps working); this module imports nothing of the library but NumPy.
"""

from __future__ import annotations

import gzip
import math
import pickle
import zlib
from pathlib import Path

import numpy as np

DATASETS = ("digits", "mnist", "cifar10", "synthetic")


class DatasetError(ValueError):
    """A dataset that cannot be loaded because of something the user controls: a missing
    directory or file, a truncated or corrupt file, a file of the wrong format. The
    message is one line and names the path."""


def _error(dataset: str, what, problem: str, cause: BaseException | None = None) -> DatasetError:
    """Build a one-line DatasetError ``"<dataset>: <path> <problem>"``.

    Messages of wrapped low-level exceptions can span lines (pickle, zlib); the CLI
    prints errors as a single ``error: ...`` line, so newlines are folded here.
    """
    text = f"{dataset}: {what} {problem}"
    if cause is not None:
        text += f" ({type(cause).__name__}: {cause})"
    return DatasetError(" ".join(text.split()))


def label_problem(labels) -> str | None:
    """``None`` when ``labels`` hold integer class indices; else what is wrong, in words.

    Floating labels are refused, whole or not: truncating 1.7 to class 1 (what a cast
    would do) hides a broken label file; whole floats name the cast that makes them
    integers. Booleans and other dtypes are refused too.
    """
    try:
        a = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        return f"labels are not an array of integers ({type(exc).__name__}: {exc})"
    kind = a.dtype.kind
    if kind in "iu":
        return None
    if kind == "f":
        flat = a.reshape(-1)
        bad = ~np.isfinite(flat)
        bad[~bad] = flat[~bad] != np.round(flat[~bad])
        if bad.any():
            i = int(np.argmax(bad))
            return (f"labels must be integer class indices, got the non-integer label {flat[i].item()!r} "
                    f"at index {i} (dtype {a.dtype}); refusing to truncate it")
        return (f"labels must be integer class indices, got dtype {a.dtype} (whole values: convert them "
                "with labels.astype(np.int64) if that is what they mean)")
    if kind == "b":
        return "labels must be integer class indices, got booleans (convert with labels.astype(np.int64))"
    return f"labels must be integer class indices, got dtype {a.dtype}"


def _check_directory(dataset: str, data_dir) -> Path:
    if data_dir is None:
        raise DatasetError(f"{dataset}: no data directory given")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DatasetError(f"{dataset}: no such directory: {path}")
    if not path.is_dir():
        raise DatasetError(f"{dataset}: {path} is a file, expected a directory")
    return path


def _read_bytes(dataset: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _error(dataset, path, "cannot be read", exc) from exc


# ----------------------------------------------------------------------------- digits


def load_digits(test_fraction: float = 0.2, seed: int = 0):
    """Returns ((x_train, y_train), (x_test, y_test)) as NumPy arrays.

    Images are float32 (N, 1, 8, 8) in [0, 1] (the raw values 0..16 divided by 16),
    labels int64. The split is stratified per class and depends only on ``seed``.

    Args:
        test_fraction: share of each class held out for the test set, in (0, 1).
        seed: seeds the split.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits  # noqa: PLC0415
    except ImportError as exc:
        raise RuntimeError("the digits dataset ships with scikit-learn: pip install scikit-learn") from exc
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    bunch = sk_load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: int(round(len(idx) * test_fraction))]] = True
    return (images[~test], labels[~test]), (images[test], labels[test])


# ----------------------------------------------------------------------------- MNIST

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dims.
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
# the IDX element types other than unsigned bytes (type code -> name)
_IDX_TYPES = {0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# (mean, std) of the training pixels scaled to [0, 1]: the constants everyone uses.
_MNIST_STATS = {False: (0.1307, 0.3081), True: (0.2860, 0.3530)}


def _mnist_candidates(directory: Path, stem: str) -> list[Path]:
    """The names a mirror may use for one IDX file, in order of preference.

    Plain files first: they need no decompression, and torchvision leaves both the
    ``.gz`` and the extracted file side by side. Some mirrors write ``train-images.idx3-ubyte``.
    """
    dotted = stem[::-1].replace("-", ".", 1)[::-1]  # train-images-idx3-ubyte -> train-images.idx3-ubyte
    names = [stem, dotted, stem + ".gz", dotted + ".gz"]
    return [directory / n for n in names]


def _find_mnist_files(dataset: str, data_dir, fashion: bool) -> list[Path]:
    root = _check_directory(dataset, data_dir)
    wanted = ", ".join(f"{s}[.gz]" for s in _MNIST_FILES)
    # torchvision's layout (root/MNIST/raw) is common enough to look there too.
    sub = root / ("FashionMNIST" if fashion else "MNIST") / "raw"
    for directory in (root, sub):
        found = [next((p for p in _mnist_candidates(directory, s) if p.is_file()), None) for s in _MNIST_FILES]
        if any(found):
            break
    else:
        if not any(root.iterdir()):
            raise DatasetError(f"{dataset}: {root} is an empty directory, expected {wanted}")
        raise DatasetError(f"{dataset}: {root} contains none of {wanted}")
    missing = [f"{s}[.gz]" for s, p in zip(_MNIST_FILES, found) if p is None]
    if missing:
        raise DatasetError(f"{dataset}: {directory} is missing {', '.join(missing)}")
    return found


def _read_idx(dataset: str, path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes into an array of the shape its header gives.

    Layout (big-endian): 4-byte magic ``00 00 08 ndim``, ``ndim`` 4-byte sizes, then
    ``prod(sizes)`` bytes. Gzip is recognised by its content (1f 8b), not by the name:
    browsers often decompress a download and keep the ``.gz`` name.
    """
    raw = _read_bytes(dataset, path)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise _error(dataset, path, "is a corrupt gzip file", exc) from exc
    if len(raw) < 4:
        raise DatasetError(f"{dataset}: {path} is truncated: {len(raw)} bytes, too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic and found >> 16 == 0 and (found & 0xFF) == (magic & 0xFF) and (found >> 8) & 0xFF in _IDX_TYPES:
        kind = _IDX_TYPES[(found >> 8) & 0xFF]
        what = "labels" if magic == _IDX_LABELS_MAGIC else "pixels"
        detail = (" (non-integer labels are refused, not truncated)"
                  if magic == _IDX_LABELS_MAGIC and kind.startswith("float") else "")
        raise DatasetError(f"{dataset}: {path} holds {kind} {what} (IDX type code 0x{(found >> 8) & 0xFF:02x}), "
                           f"expected unsigned bytes (0x08){detail}")
    if found != magic:
        swapped = {_IDX_IMAGES_MAGIC: "; it holds images", _IDX_LABELS_MAGIC: "; it holds labels"}.get(found, "")
        raise DatasetError(f"{dataset}: {path} is not an IDX file (magic 0x{found:08x}, "
                           f"expected 0x{magic:08x}{swapped})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{dataset}: {path} is truncated: {len(raw)} bytes, the IDX header needs {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    need, have = math.prod(dims), len(raw) - header
    what = "x".join(map(str, dims)) + (" = " + str(need) + " bytes of pixels" if ndim > 1 else " labels")
    if have < need:
        raise DatasetError(f"{dataset}: {path} is truncated: header says {what}, file has {have}")
    if have > need:  # trailing bytes mean the header and the data disagree: not our format
        raise DatasetError(f"{dataset}: {path} has {have - need} bytes after the data: header says {what}")
    if dims[0] == 0:
        raise DatasetError(f"{dataset}: {path} holds no {'images' if ndim > 1 else 'labels'} (header says 0)")
    try:
        return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    except ValueError as exc:  # unreachable after the size checks; kept so no raw error escapes
        raise _error(dataset, path, "cannot be parsed", exc) from exc


def load_mnist(data_dir, fashion: bool = False):
    """Load MNIST (or Fashion-MNIST) from the four IDX files in ``data_dir``.

    Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally gzipped
    (``.gz``) and optionally spelt with a dot (``train-images.idx3-ubyte``); found in
    ``data_dir`` or in torchvision's ``data_dir/MNIST/raw``.

    Images are standardised with the training-set statistics::

        x = (pixel / 255 - mean) / std,   MNIST: mean 0.1307, std 0.3081
                                           Fashion-MNIST: mean 0.2860, std 0.3530

    Args:
        data_dir: directory holding the files.
        fashion: use the Fashion-MNIST statistics (same file names and format).

    Returns:
        ((x_train, y_train), (x_test, y_test)): float32 (N, 1, 28, 28), int64 labels in 0..9.

    Raises:
        DatasetError: missing directory or files, truncated/corrupt/non-IDX files,
            image and label counts that disagree, labels outside 0..9.
    """
    dataset = "Fashion-MNIST" if fashion else "MNIST"
    paths = _find_mnist_files(dataset, data_dir, fashion)
    mean, std = _MNIST_STATS[bool(fashion)]
    splits, image_shape = [], None
    for images_path, labels_path in (paths[0:2], paths[2:4]):
        images = _read_idx(dataset, images_path, _IDX_IMAGES_MAGIC)
        labels = _read_idx(dataset, labels_path, _IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise DatasetError(f"{dataset}: {images_path} has {len(images)} images "
                               f"but {labels_path} has {len(labels)} labels")
        if labels.max() > 9:
            bad = int(np.argmax(labels > 9))
            raise DatasetError(f"{dataset}: {labels_path} has label {labels[bad]} at index {bad}, expected 0..9")
        if image_shape is not None and images.shape[1:] != image_shape:
            raise DatasetError(f"{dataset}: {images_path} holds {images.shape[1]}x{images.shape[2]} images "
                               f"but the training images are {image_shape[0]}x{image_shape[1]}")
        image_shape = images.shape[1:]
        # One float32 pass: pixel * (1 / (255 std)) - mean / std, in place.
        x = images[:, None].astype(np.float32)
        x *= np.float32(1.0 / (255.0 * std))
        x -= np.float32(mean / std)
        splits.append((x, labels.astype(np.int64)))
    return splits[0], splits[1]


# ----------------------------------------------------------------------------- CIFAR-10

_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"

# What a CIFAR-10 batch may reference: NumPy's array and dtype reconstructors. The
# official files were pickled by Python 2 with numpy.core; NumPy 2 pickles name
# numpy._core, and protocol 5 uses _frombuffer.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol <= 2 (re-pickled batches)
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only NumPy's array/dtype constructors.

    Unpickling can call any importable function; a CIFAR batch needs none but these,
    so anything else (``os.system``, ``builtins.eval``, ...) is refused. This narrows the
    attack surface; it is not a sandbox.
    """

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}, which a CIFAR-10 batch never references")
        if module.startswith("numpy.core.") and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            module = "numpy._core." + module[len("numpy.core."):]  # avoids NumPy 2's deprecation warning
        return super().find_class(module, name)


def _get(batch: dict, key: str):
    """A batch's entry under bytes (Python 2 pickles) or str (Python 3 re-pickles) keys."""
    return batch[key.encode()] if key.encode() in batch else batch.get(key)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    dataset = "CIFAR-10"

    def bad(problem, cause=None):
        detail = f": {type(cause).__name__}: {cause}" if cause is not None else ""
        return _error(dataset, path, f"is not a CIFAR-10 python batch ({problem}{detail})")

    try:
        with open(path, "rb") as f:
            # Same as pickle.load(f, encoding="bytes"), restricted to NumPy arrays.
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise _error(dataset, path, "cannot be read", exc) from exc
    except Exception as exc:  # garbage can make the unpickler raise almost anything
        raise bad("unpickling failed", exc) from exc
    if not isinstance(batch, dict):
        raise bad(f"it holds a {type(batch).__name__}, expected a dict with b'data' and b'labels'")
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in list(batch)[:8])
        raise bad(f"no b'data' or no b'labels' entry; keys: {keys or 'none'}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__)
        raise bad(f"b'data' is {got}, expected uint8 (N, 3072)")
    try:
        kind = np.asarray(labels).dtype.kind
    except (TypeError, ValueError) as exc:
        raise bad("b'labels' are not integers", exc) from exc
    if kind in "fb":  # a cast to int64 would truncate floats: 1.7 is not class 1
        raise bad(f"b'labels': {label_problem(labels)}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise bad("b'labels' are not integers", exc) from exc
    if labels.ndim != 1 or len(labels) != len(data):
        raise DatasetError(f"{dataset}: {path} has {len(data)} images but {labels.size} labels")
    if len(data) == 0:
        raise DatasetError(f"{dataset}: {path} holds no images")
    out_of_range = (labels < 0) | (labels > 9)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise DatasetError(f"{dataset}: {path} has label {labels[i]} at index {i}, expected 0..9")
    return data, labels


def _find_cifar_dir(data_dir) -> Path:
    dataset = "CIFAR-10"
    root = _check_directory(dataset, data_dir)
    names = (*_CIFAR_TRAIN, _CIFAR_TEST)
    for directory in (root, root / "cifar-10-batches-py"):
        present = [n for n in names if (directory / n).is_file()]
        if present:
            missing = [n for n in names if n not in present]
            if missing:
                raise DatasetError(f"{dataset}: {directory} is missing {', '.join(missing)}")
            return directory
    # Point at the two common mistakes: an unextracted archive and the binary version.
    if (root / "cifar-10-python.tar.gz").is_file():
        raise DatasetError(f"{dataset}: {root} holds cifar-10-python.tar.gz but no extracted batches: "
                           f"run tar xzf {root / 'cifar-10-python.tar.gz'} -C {root}")
    if (root / "data_batch_1.bin").is_file() or (root / "cifar-10-batches-bin").is_dir():
        raise DatasetError(f"{dataset}: {root} holds the binary version (data_batch_1.bin); "
                           f"this loader reads the python version (cifar-10-python.tar.gz)")
    if not any(root.iterdir()):
        raise DatasetError(f"{dataset}: {root} is an empty directory, expected {', '.join(names)}")
    raise DatasetError(f"{dataset}: {root} contains none of {', '.join(names)} "
                       f"(nor a cifar-10-batches-py directory holding them)")


def load_cifar10(data_dir):
    """Load CIFAR-10 from its python-pickle batches.

    Reads ``data_batch_1`` .. ``data_batch_5`` (training) and ``test_batch`` from
    ``data_dir`` or ``data_dir/cifar-10-batches-py``. Each batch is a pickled dict with
    ``b"data"``, uint8 (n, 3072) rows of 1024 red, 1024 green, 1024 blue pixels in
    row-major order, and ``b"labels"``, n ints in 0..9.

    Images are standardised per channel c::

        x[:, c] = (pixel / 255 - mean[c]) / std[c]
        mean = (0.4914, 0.4822, 0.4465),  std = (0.2470, 0.2435, 0.2616)

    Security: the batches are Python pickles, and unpickling an untrusted file can run
    arbitrary code. The unpickler here resolves only NumPy's array constructors, which
    blocks the usual payloads, but only load files from a source you trust.

    Args:
        data_dir: directory holding the batches (or their ``cifar-10-batches-py`` folder).

    Returns:
        ((x_train, y_train), (x_test, y_test)): float32 (N, 3, 32, 32), int64 labels in 0..9.

    Raises:
        DatasetError: missing directory or batches, a file that is not a CIFAR-10
            python batch, image and label counts that disagree, labels outside 0..9.
    """
    directory = _find_cifar_dir(data_dir)
    scale = (1.0 / (255.0 * np.asarray(_CIFAR_STD))).astype(np.float32)[:, None, None]
    shift = (np.asarray(_CIFAR_MEAN) / np.asarray(_CIFAR_STD)).astype(np.float32)[:, None, None]
    splits = []
    for names in (_CIFAR_TRAIN, (_CIFAR_TEST,)):
        batches = [_read_cifar_batch(directory / n) for n in names]
        data = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        # One float32 copy, then in-place scale/shift: no float64 temporary of 600 MB.
        x = data.reshape(-1, 3, 32, 32).astype(np.float32)
        x *= scale
        x -= shift
        splits.append((x, labels))
    return splits[0], splits[1]


# ----------------------------------------------------------------------------- synthetic


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _interpolation_matrix(size: int, knots: int) -> np.ndarray:
    """(size, knots) matrix that linearly interpolates ``knots`` evenly spaced values
    onto ``size`` points: a smooth template is ``Uy @ grid @ Ux.T``."""
    if knots == 1:
        return np.ones((size, 1))
    pos = np.linspace(0.0, knots - 1, size)
    eye = np.eye(knots)
    return np.stack([np.interp(pos, np.arange(knots), eye[k]) for k in range(knots)], axis=1)


def load_synthetic(num_train: int = 2048, num_test: int = 512, shape=(3, 32, 32),
                   num_classes: int = 10, seed: int = 0):
    """A learnable synthetic image-classification set of any size and image shape.

    Each class k has a fixed smooth template T_k (per channel, a random 4x4 grid of
    standard-normal values bilinearly interpolated to H x W, scaled to unit variance);
    an image of class k is::

        x = T_k + noise,   noise ~ N(0, 1) per pixel,

    then every image is standardised with the mean and std of the training images (as
    real datasets are). Classes are balanced and shuffled. The signal is spread over
    all pixels, so a model (even a nearest-class-mean classifier) learns it and a
    training run shows the loss falling. Everything depends only on ``seed``.

    Args:
        num_train, num_test: number of images in each split (>= 1).
        shape: image shape (C, H, W) of positive ints.
        num_classes: number of classes (>= 2).
        seed: seeds templates, labels and noise.

    Returns:
        ((x_train, y_train), (x_test, y_test)): float32 (N, C, H, W), int64 labels in
        0..num_classes-1.
    """
    num_train = _positive_int("num_train", num_train)
    num_test = _positive_int("num_test", num_test)
    num_classes = _positive_int("num_classes", num_classes, minimum=2)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple (C, H, W) of positive ints, got {shape!r}") from None
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
        raise ValueError(f"shape must be a tuple (C, H, W) of positive ints, got {shape!r}")
    c, h, w = map(int, shape)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")

    rng = np.random.default_rng(seed)
    uy, ux = _interpolation_matrix(h, min(h, 4)), _interpolation_matrix(w, min(w, 4))
    grid = rng.standard_normal((num_classes, c, uy.shape[1], ux.shape[1]))
    templates = uy @ grid @ ux.T  # (K, C, H, W), smooth because it interpolates a coarse grid
    templates /= templates.std(axis=(1, 2, 3), keepdims=True) + 1e-12
    templates = templates.astype(np.float32)

    def split(n):
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        images = rng.standard_normal((n, c, h, w), dtype=np.float32)
        images += templates[labels]
        return images, labels

    (x_train, y_train), (x_test, y_test) = split(num_train), split(num_test)
    mean, std = x_train.mean(dtype=np.float64), x_train.std(dtype=np.float64)
    std = std if std > 0 else 1.0  # a single one-pixel image has no spread
    for x in (x_train, x_test):
        x -= np.float32(mean)
        x /= np.float32(std)
    return (x_train, y_train), (x_test, y_test)


# ----------------------------------------------------------------------------- dispatch


def load_dataset(name: str, data_dir=None, seed: int = 0, **synthetic_kwargs):
    """Load a dataset by name; returns ((x_train, y_train), (x_test, y_test)).

    Args:
        name: one of ``DATASETS``: "digits", "mnist", "cifar10", "synthetic".
        data_dir: the directory of the files for "mnist" and "cifar10" (required there,
            ignored by "digits" and "synthetic", which need no files).
        seed: the train/test split of "digits" and everything in "synthetic"; the
            file datasets have fixed splits.
        **synthetic_kwargs: ``num_train``, ``num_test``, ``shape``, ``num_classes`` for
            "synthetic". Options set to None are dropped, so a CLI can pass its
            defaults through; any other value for another dataset is an error.

    Raises:
        ValueError: an unknown name, or synthetic options for another dataset.
        DatasetError: mnist/cifar10 without ``data_dir`` or with bad files.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choices: {', '.join(DATASETS)}")
    options = {k: v for k, v in synthetic_kwargs.items() if v is not None}
    if options and key != "synthetic":
        raise ValueError(f"{', '.join(sorted(options))} only apply to the synthetic dataset, not {key}")
    if key == "digits":
        return load_digits(seed=seed)
    if key == "synthetic":
        return load_synthetic(seed=seed, **options)
    if data_dir is None:
        raise DatasetError(f"--data-dir is required for {key}")
    return load_mnist(data_dir) if key == "mnist" else load_cifar10(data_dir)
