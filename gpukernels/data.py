"""Datasets and batching.

``load_digits`` gives scikit-learn's bundled 8x8 digits (1797 images, no download) as
float32 (N, 1, 8, 8) arrays in [0, 1] with a deterministic stratified train/test split.
``DataLoader`` yields (images, labels) Tensor batches with seeded shuffling.
"""

from __future__ import annotations

import math

import numpy as np

from .tensor import tensor


def load_digits(test_fraction: float = 0.2, seed: int = 0):
    """Returns ((x_train, y_train), (x_test, y_test)) as NumPy arrays.

    The split is stratified per class and depends only on ``seed``.
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


class DataLoader:
    """Batches of (inputs, targets) as Tensors; reshuffled every epoch when ``shuffle``.

    Args:
        inputs, targets: arrays with the same first dimension.
        batch_size: examples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: draw a new order every epoch from a generator seeded with ``seed``.
    """

    def __init__(self, inputs, targets, batch_size: int = 64, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False):
        if len(inputs) != len(targets):
            raise ValueError(f"DataLoader: {len(inputs)} inputs but {len(targets)} targets")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        n = len(self.inputs) / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __iter__(self):
        order = self.rng.permutation(len(self.inputs)) if self.shuffle else np.arange(len(self.inputs))
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield tensor(self.inputs[idx]), tensor(self.targets[idx])
