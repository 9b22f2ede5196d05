"""Batching for the training CLI: ``DataLoader``, batch augmentation, and (re-exported)
the dataset readers and samplers.

``DataLoader`` yields (images, labels) Tensor batches. One ``np.random.Generator``
drives both the per-epoch shuffle and the optional batch augmentation
(``random_crop_flip``), so a seed, or a ``state_dict()`` taken between epochs,
reproduces every batch exactly. Given a ``sampler`` (``DistributedSampler`` for
data-parallel training), the loader visits the sampler's indices instead.

The readers (``load_digits``, ``load_mnist``, ``load_cifar10``, ``load_synthetic``,
``load_dataset``, ``DatasetError``, ``DATASETS``, ``label_problem``) live in
``gpukernels.datasets`` and the samplers (``Sampler``, ``SequentialSampler``,
``RandomSampler``, ``DistributedSampler``) in ``gpukernels.samplers``; both are
importable from here, as they always were.
"""

from __future__ import annotations

import math

import numpy as np

from .creation import tensor
from .datasets import (
    DATASETS,
    DatasetError,
    label_problem,
    load_cifar10,
    load_dataset,
    load_digits,
    load_mnist,
    load_synthetic,
)
from .samplers import DistributedSampler, RandomSampler, Sampler, SequentialSampler

__all__ = [
    "DATASETS", "DatasetError", "label_problem", "load_digits", "load_mnist", "load_cifar10",
    "load_synthetic", "load_dataset", "random_crop_flip", "DataLoader",
    "Sampler", "SequentialSampler", "RandomSampler", "DistributedSampler",
]


# ----------------------------------------------------------------------------- augmentation


class _RandomCropFlip:
    """See ``random_crop_flip``. A class rather than a closure so it pickles."""

    def __init__(self, padding: int):
        self.padding = padding

    def __repr__(self):
        return f"random_crop_flip(padding={self.padding})"

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"random_crop_flip expects an (N, C, H, W) batch, got shape {images.shape}")
        n, c, h, w = images.shape
        p = self.padding
        # The draws happen in a fixed order (rows, cols, flips) so a seed reproduces them.
        top = rng.integers(0, 2 * p + 1, size=n)
        left = rng.integers(0, 2 * p + 1, size=n)
        flip = rng.random(n) < 0.5
        padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p))) if p else images
        rows = top[:, None] + np.arange(h)  # (N, H)
        # A flipped image reads its crop's columns right to left: crop and flip in one gather.
        cols = left[:, None] + np.where(flip[:, None], np.arange(w - 1, -1, -1), np.arange(w))  # (N, W)
        return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip(padding: int = 4):
    """The standard CIFAR augmentation as a batch callable for ``DataLoader(augment=...)``.

    For each image independently: zero-pad H and W by ``padding`` on every side, take
    an H x W crop at a random offset (top, left) in 0..2*padding, and mirror it
    horizontally with probability 0.5::

        out[n, c, i, j] = padded[n, c, top[n] + i, left[n] + j']
        j' = W - 1 - j if flip[n] else j

    Done for the whole batch with one fancy-indexing gather, no loop over images. The
    images are usually already standardised, so the zero padding is the mean colour.

    Args:
        padding: pixels of zero padding per side (>= 0; 0 leaves only the flips).

    Returns:
        ``augment(images, rng) -> images``: images is (N, C, H, W), rng a
        ``np.random.Generator``; returns a new array of the same shape and dtype.
    """
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    return _RandomCropFlip(int(padding))


# ----------------------------------------------------------------------------- loader


class DataLoader:
    """Batches of (inputs, targets) as Tensors; reshuffled every epoch when ``shuffle``.

    One ``np.random.Generator`` (``self.rng``, seeded with ``seed``) draws each epoch's
    permutation at the start of the epoch and then every batch's augmentation, so the
    seed fixes every batch. ``state_dict()`` taken between epochs and restored with
    ``load_state_dict`` replays the following epochs exactly (mid-epoch the generator
    has already moved past this epoch's draws).

    With a ``sampler``, each epoch visits the indices the sampler yields, in its order,
    in batches of ``batch_size`` (``drop_last`` as without one), and ``len(loader)`` is
    ``len(sampler) / batch_size`` rounded as ``drop_last`` says; ``self.rng`` then draws
    only the augmentation. The sampler's own state (a ``RandomSampler``'s generator, a
    ``DistributedSampler``'s epoch) is not in ``state_dict()``. Data-parallel training
    gives each process a ``DistributedSampler(len(inputs), num_replicas, rank)`` and,
    as in PyTorch, calls ``sampler.set_epoch(epoch)`` itself before each epoch's
    iteration (the loader never does): without it every epoch repeats one shuffle.
    A ``DistributedSampler``'s order depends only on its seed and epoch, so a resumed
    run that sets the epoch again replays it.

    Args:
        inputs, targets: arrays with the same first dimension.
        batch_size: examples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: draw a new order every epoch. Not with ``sampler`` (the sampler
            decides the order: use ``RandomSampler`` or ``DistributedSampler(shuffle=True)``).
        seed: seeds the generator.
        drop_last: skip the last batch when it is smaller than ``batch_size``.
        augment: ``augment(images, rng) -> images`` applied to each NumPy batch of
            inputs before it becomes a Tensor (e.g. ``random_crop_flip()``); use it on
            the training loader only.
        float_targets: targets are real numbers (regression, ``F.mse_loss``). By
            default they are class labels and must be integers: floating ones (1.7,
            or even 2.0 in a float array) are refused, never truncated.
        sampler: where each epoch's indices come from (a ``Sampler``: any object with
            ``__iter__`` yielding ints in ``[0, len(inputs))`` and ``__len__``); None
            visits ``range(len(inputs))``, shuffled when ``shuffle``.
    """

    def __init__(self, inputs, targets, batch_size: int = 64, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, augment=None, float_targets: bool = False,
                 sampler=None):
        if len(inputs) != len(targets):
            raise ValueError(f"DataLoader: {len(inputs)} inputs but {len(targets)} targets")
        if not float_targets:
            problem = label_problem(targets.numpy() if hasattr(targets, "numpy") and not isinstance(targets, np.ndarray)
                                    else targets)
            if problem is not None:
                raise ValueError(f"DataLoader: {problem}; pass float_targets=True for regression targets")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be a callable augment(images, rng) or None, got {type(augment).__name__}")
        if sampler is not None:
            if not (hasattr(sampler, "__iter__") and hasattr(sampler, "__len__")):
                raise TypeError(f"DataLoader: sampler must have __iter__ and __len__ (a Sampler), "
                                f"got {type(sampler).__name__}")
            if shuffle:
                raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle "
                                 f"(got shuffle={shuffle!r} and sampler={type(sampler).__name__})")
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.sampler = augment, sampler
        self.rng = np.random.default_rng(seed)

    def _num_batches(self, examples: int) -> int:
        n = examples / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __len__(self):
        return self._num_batches(len(self.inputs) if self.sampler is None else len(self.sampler))

    def _sampled_order(self) -> np.ndarray:
        """This epoch's indices from the sampler, checked: ints in ``[0, len(inputs))``."""
        order = np.asarray(list(self.sampler))
        n = len(self.inputs)
        if order.size and (order.ndim != 1 or order.dtype.kind not in "iu"):
            raise TypeError(f"DataLoader: the sampler must yield int indices, got {order.dtype} of shape {order.shape}")
        bad = (order < 0) | (order >= n)
        if bad.any():
            raise ValueError(f"DataLoader: the sampler yielded index {order[bad][0].item()}, "
                             f"outside [0, {n}) for {n} inputs")
        return order.astype(np.int64, copy=False)

    def __iter__(self):
        if self.sampler is not None:
            order = self._sampled_order()
        else:  # the draws of every loader before samplers existed: checkpoints replay them
            order = self.rng.permutation(len(self.inputs)) if self.shuffle else np.arange(len(self.inputs))
        for i in range(self._num_batches(len(order))):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            images = self.inputs[idx]  # fancy indexing copies, so augment may work in place
            if self.augment is not None:
                images = self.augment(images, self.rng)
                if len(images) != len(idx):
                    raise ValueError(f"augment returned {len(images)} images for a batch of {len(idx)}")
            yield tensor(images), tensor(self.targets[idx])

    def state_dict(self) -> dict:
        """The generator's state, ``{"rng": bit_generator.state}``: plain dicts, strs and
        ints, so it pickles and JSON-serialises. Take it between epochs."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` (or a bare ``bit_generator.state``) so the next
        epochs draw exactly the shuffles and augmentations they would have."""
        rng_state = state.get("rng", state) if isinstance(state, dict) else state
        if not isinstance(rng_state, dict) or "bit_generator" not in rng_state:
            raise ValueError(f"DataLoader.load_state_dict expects the dict state_dict() returns, got {state!r:.200}")
        expected = type(self.rng.bit_generator).__name__
        if rng_state["bit_generator"] != expected:
            raise ValueError(f"DataLoader.load_state_dict: state is for {rng_state['bit_generator']!r}, "
                             f"this loader uses {expected!r}")
        self.rng.bit_generator.state = rng_state
