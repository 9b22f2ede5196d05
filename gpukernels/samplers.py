"""Samplers: the order in which a ``DataLoader`` visits a dataset's indices, shaped like
``torch.utils.data``'s.

- ``Sampler``: the base, an iterable of int indices with a ``len()``.
- ``SequentialSampler``: 0, 1, ..., n-1.
- ``RandomSampler``: a permutation (or draws with replacement) per iteration, from a
  ``np.random.Generator``.
- ``DistributedSampler``: one replica's equal share of the indices for data-parallel
  training, with PyTorch's ``DistributedSampler`` semantics (padding, ``drop_last``,
  ``set_epoch``).

A data source is anything with ``len()`` or an int length. The process group of
``gpukernels.distributed`` is consulted only when ``DistributedSampler`` is not given
``num_replicas`` / ``rank``, through an import inside the constructor.
"""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np

from . import random as _random


def _length(data_source, who: str) -> int:
    """The number of indices of a data source: an int (>= 0) or anything with ``len()``."""
    if isinstance(data_source, (int, np.integer)) and not isinstance(data_source, bool):
        if data_source < 0:
            raise ValueError(f"{who}: a dataset length must be >= 0, got {int(data_source)}")
        return int(data_source)
    try:
        return len(data_source)
    except TypeError:
        raise TypeError(f"{who}: expected a dataset with len() or an int length, "
                        f"got {type(data_source).__name__}") from None


def _int(name: str, value, who: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{who}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{who}: {name} must be >= {minimum}, got {int(value)}")
    return int(value)


class Sampler:
    """Base class: an iterable of dataset indices (ints) with a ``len()``.

    Subclasses define ``__iter__`` and ``__len__``; ``DataLoader(sampler=...)`` takes any
    object that has both.
    """

    def __iter__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __iter__")

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __len__")


class SequentialSampler(Sampler):
    """The indices 0, 1, ..., len(data_source) - 1, in order, every iteration."""

    def __init__(self, data_source):
        self.data_source = data_source
        self._n = _length(data_source, "SequentialSampler")

    def __iter__(self):
        return iter(range(self._n))

    def __len__(self):
        return self._n


class RandomSampler(Sampler):
    """A random order of the indices, drawn afresh every iteration.

    Without replacement (the default) each iteration is one permutation of
    ``range(n)``, ``generator.permutation(n)``; with ``replacement=True`` it is
    ``num_samples`` independent draws ``generator.integers(0, n)``.

    Args:
        data_source: a dataset with ``len()`` or an int length ``n``.
        replacement: draw with replacement.
        num_samples: how many indices per iteration (default ``n``). Without
            replacement, more than ``n`` chains fresh permutations and cuts the last
            one, as PyTorch does.
        generator: the ``np.random.Generator`` to draw from; it moves on every
            iteration, so consecutive epochs differ and the generator's state fixes them.
        seed: shorthand for ``generator=np.random.default_rng(seed)``.

    With neither ``generator`` nor ``seed``, each iteration draws its own seed from the
    library's generator (``gk.manual_seed`` makes it reproducible), as PyTorch draws
    one from torch's default generator.
    """

    def __init__(self, data_source, replacement: bool = False, num_samples: int | None = None,
                 generator: np.random.Generator | None = None, *, seed: int | None = None):
        who = "RandomSampler"
        self.data_source = data_source
        self._n = _length(data_source, who)
        if self._n == 0:
            raise ValueError(f"{who}: the dataset is empty (len 0); there is nothing to sample")
        if not isinstance(replacement, bool):
            raise TypeError(f"{who}: replacement must be a bool, got {replacement!r}")
        self.replacement = replacement
        self._num_samples = None if num_samples is None else _int("num_samples", num_samples, who, minimum=1)
        if generator is not None and seed is not None:
            raise ValueError(f"{who}: pass generator or seed, not both (got seed={seed!r})")
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise TypeError(f"{who}: generator must be a numpy.random.Generator, got {type(generator).__name__}")
        if seed is not None:
            generator = np.random.default_rng(_int("seed", seed, who, minimum=0))
        self.generator = generator

    @property
    def num_samples(self) -> int:
        return self._n if self._num_samples is None else self._num_samples

    def __iter__(self):
        n, k = self._n, self.num_samples
        gen = self.generator
        if gen is None:
            gen = np.random.default_rng(int(_random.generator().integers(0, 2**63)))
        if self.replacement:
            order = gen.integers(0, n, size=k)
        else:
            order = np.concatenate([gen.permutation(n) for _ in range(-(-k // n))])[:k]
        return iter(order.tolist())

    def __len__(self):
        return self.num_samples


def _default_group(who: str) -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised default process group of
    ``gpukernels.distributed``; an error that says to pass them when there is none."""
    hint = "pass num_replicas and rank explicitly"
    try:
        from . import distributed  # noqa: PLC0415 - optional: read only when no num_replicas/rank
    except ImportError:  # "cannot import name": absent, unless it exists and failed inside
        if sys.modules.get(__package__ + ".distributed") is not None or \
                importlib.util.find_spec(__package__ + ".distributed") is not None:
            raise
        raise RuntimeError(f"{who}: num_replicas/rank not given and gpukernels.distributed is not available: "
                           f"{hint}") from None
    initialised = getattr(distributed, "is_initialized", None)
    if initialised is not None and not initialised():
        raise ValueError(f"{who}: Default process group has not been initialized, please make sure to call "
                         f"gpukernels.distributed.init_process_group, or {hint}")
    return distributed.get_world_size(), distributed.get_rank()


class DistributedSampler(Sampler):
    """One replica's share of a dataset's indices for data-parallel training.

    The semantics of ``torch.utils.data.distributed.DistributedSampler``, index for
    index when ``shuffle=False``. With ``n = len(dataset)`` and ``R = num_replicas``:

    - ``num_samples = ceil(n / R)``, or ``ceil((n - R) / R)`` when ``drop_last`` and
      ``R`` does not divide ``n``; ``total_size = num_samples * R``.
    - the epoch's order is ``range(n)``, or when ``shuffle`` the permutation
      ``np.random.default_rng(seed + epoch).permutation(n)``: every replica draws the same
      one, so give them the same ``seed``. (PyTorch draws ``torch.randperm`` from a
      ``torch.Generator`` seeded with ``seed + epoch``, so a shuffled order differs from
      torch's; what is padded, dropped and sharded is the same.)
    - not ``drop_last``: the order is padded to ``total_size`` with its own first
      ``total_size - n`` entries (repeated whole as often as needed when the padding is
      longer than the order), so a few indices appear twice in an epoch.
      ``drop_last``: the order is cut to ``total_size``, dropping its tail.
    - replica ``rank`` gets ``order[rank:total_size:R]``: ``num_samples`` indices, the
      same number on every replica, disjoint between replicas apart from the padding.

    Call ``set_epoch(epoch)`` at the start of every epoch (before iterating the
    ``DataLoader``), or every epoch repeats the same order.

    Args:
        dataset: anything with ``len()``, or an int length.
        num_replicas: number of processes (``R``); default: the world size of the
            initialised process group of ``gpukernels.distributed``.
        rank: this process's rank in ``[0, R)``; default: the process group's rank.
        shuffle: permute the indices every epoch.
        seed: seeds the permutation; the same on every replica. An int >= 0.
        drop_last: drop the tail so that every replica gets ``floor(n / R)`` indices,
            instead of padding with repeats to ``ceil(n / R)``.

    Raises:
        ValueError: a rank outside ``[0, R)``, ``num_replicas < 1``, a negative seed;
            no ``num_replicas``/``rank`` and no initialised process group.
        RuntimeError: no ``num_replicas``/``rank`` and no ``gpukernels.distributed``.
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        who = "DistributedSampler"
        n = _length(dataset, who)
        if num_replicas is None or rank is None:
            world, own = _default_group(who)
            num_replicas = world if num_replicas is None else num_replicas
            rank = own if rank is None else rank
        num_replicas = _int("num_replicas", num_replicas, who, minimum=1)
        rank = _int("rank", rank, who)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"{who}: invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}] "
                             f"for num_replicas={num_replicas}")
        self.dataset, self._n = dataset, n
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = _int("seed", seed, who, minimum=0)
        self.epoch = 0
        if self.drop_last and n % num_replicas != 0:
            # the largest equal share: floor(n / R), written as PyTorch writes it
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next iteration's shuffle (``seed + epoch``)."""
        self.epoch = _int("epoch", epoch, "DistributedSampler.set_epoch", minimum=0)

    def _order(self) -> np.ndarray:
        """The whole epoch's order, padded or cut to ``total_size``, before sharding."""
        n = self._n
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            return order[: self.total_size]
        padding = self.total_size - n
        if padding <= n:
            return np.concatenate([order, order[:padding]])
        return np.concatenate([order, np.tile(order, -(-padding // n))[:padding]])

    def __iter__(self):
        shard = self._order()[self.rank : self.total_size : self.num_replicas]
        assert len(shard) == self.num_samples, (len(shard), self.num_samples)
        return iter(shard.tolist())

    def __len__(self):
        return self.num_samples

    def __repr__(self):
        return (f"DistributedSampler(len={self._n}, num_replicas={self.num_replicas}, rank={self.rank}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, epoch={self.epoch})")
