"""Samplers (gpukernels.samplers, re-exported by gpukernels.data): DistributedSampler's
shards against PyTorch's index arithmetic and, where torch is installed, against
torch.utils.data.distributed.DistributedSampler itself; the DataLoader with a sampler;
the dataset readers still importable from gpukernels.data after the split."""

import math
import sys
import types
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpukernels
from gpukernels import data
from gpukernels.data import DataLoader, DistributedSampler, RandomSampler, Sampler, SequentialSampler

LENGTHS = list(range(0, 24)) + [31, 64, 97]
REPLICAS = range(1, 6)


def torch_shards(order, num_replicas, drop_last):
    """PyTorch's DistributedSampler.__iter__ after its shuffle, written out plainly: the
    epoch's ``order`` padded (or cut) to total_size, then every replica's stride."""
    n = len(order)
    if drop_last and n % num_replicas != 0:
        num_samples = math.ceil((n - num_replicas) / num_replicas)
    else:
        num_samples = math.ceil(n / num_replicas)
    total_size = num_samples * num_replicas
    indices = list(order)
    if not drop_last:
        padding_size = total_size - len(indices)
        if padding_size <= len(indices):
            indices += indices[:padding_size]
        else:
            indices += (indices * math.ceil(padding_size / len(indices)))[:padding_size]
    else:
        indices = indices[:total_size]
    assert len(indices) == total_size
    return [indices[rank:total_size:num_replicas] for rank in range(num_replicas)], num_samples, total_size


def shards(n, num_replicas, **kwargs):
    return [list(DistributedSampler(n, num_replicas, rank, **kwargs)) for rank in range(num_replicas)]


def epoch_order(n, shuffle, seed=0, epoch=0):
    return list(np.random.default_rng(seed + epoch).permutation(n)) if shuffle else list(range(n))


# ----------------------------------------------------------------------------- DistributedSampler


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("num_replicas", REPLICAS)
@pytest.mark.parametrize("n", LENGTHS)
def test_distributed_sampler_shards(n, num_replicas, shuffle, drop_last):
    got = shards(n, num_replicas, shuffle=shuffle, drop_last=drop_last, seed=3)
    expected, num_samples, total_size = torch_shards(epoch_order(n, shuffle, seed=3), num_replicas, drop_last)
    assert got == expected  # the same arithmetic as PyTorch's, index for index

    samplers = [DistributedSampler(n, num_replicas, r, shuffle=shuffle, drop_last=drop_last) for r in range(num_replicas)]
    assert all(s.num_samples == num_samples and s.total_size == total_size and len(s) == num_samples
               for s in samplers)
    assert all(len(shard) == num_samples for shard in got)  # every replica the same number of steps
    counts = Counter(i for shard in got for i in shard)
    assert all(0 <= i < n for i in counts)
    if drop_last:
        assert num_samples == n // num_replicas
        assert max(counts.values(), default=1) == 1  # disjoint: nothing padded
        assert len(counts) == total_size == n - n % num_replicas
    else:
        assert num_samples == -(-n // num_replicas)
        assert set(counts) == set(range(n))  # every index at least once
        order = epoch_order(n, shuffle, seed=3)
        pad = total_size - n
        # the padding is the order's first entries, repeated whole when it is longer than n
        padded = Counter((order * (pad // n + 1))[:pad]) if n else Counter()
        assert counts == Counter(range(n)) + padded
    if n % num_replicas == 0:
        assert sorted(counts.elements()) == list(range(n))  # exactly once per epoch


@given(n=st.integers(0, 300), num_replicas=st.integers(1, 9), shuffle=st.booleans(), drop_last=st.booleans(),
       seed=st.integers(0, 2**32), epoch=st.integers(0, 1000))
@settings(max_examples=200, deadline=None)
def test_distributed_sampler_matches_torch_arithmetic_property(n, num_replicas, shuffle, drop_last, seed, epoch):
    samplers = [DistributedSampler(list(range(n)), num_replicas=num_replicas, rank=r, shuffle=shuffle,
                                   seed=seed, drop_last=drop_last) for r in range(num_replicas)]
    for s in samplers:
        s.set_epoch(epoch)
    got = [list(s) for s in samplers]
    expected, num_samples, _ = torch_shards(epoch_order(n, shuffle, seed, epoch), num_replicas, drop_last)
    assert got == expected
    assert {len(g) for g in got} <= {num_samples}
    flat = [i for g in got for i in g]
    if drop_last or n % num_replicas == 0:
        assert len(set(flat)) == len(flat)  # disjoint
    else:
        assert set(flat) == set(range(n))


def test_padding_longer_than_the_dataset_repeats_the_order():
    # 2 indices over 5 replicas: total_size 5, padding 3 > 2 -> order, order, order[:1]
    got = shards(2, 5, shuffle=False)
    assert got == [[0], [1], [0], [1], [0]]
    s = DistributedSampler(2, 5, 0, shuffle=False, drop_last=True)
    assert (s.num_samples, s.total_size, list(s)) == (0, 0, [])
    assert [list(DistributedSampler(1, 4, r, shuffle=False)) for r in range(4)] == [[0], [0], [0], [0]]


def test_empty_dataset_gives_empty_shards():
    for drop_last in (False, True):
        s = DistributedSampler(0, num_replicas=3, rank=2, drop_last=drop_last)
        assert (len(s), s.total_size, list(s)) == (0, 0, [])


def test_set_epoch_changes_the_shuffle_and_the_same_epoch_repeats_it():
    s = DistributedSampler(100, num_replicas=2, rank=0, seed=7)
    first, again = list(s), list(s)
    assert first == again  # no set_epoch: the same order every iteration
    s.set_epoch(1)
    second = list(s)
    assert second != first and sorted(second) != second
    s.set_epoch(0)
    assert list(s) == first
    other = DistributedSampler(100, num_replicas=2, rank=0, seed=7)
    other.set_epoch(1)
    assert list(other) == second  # depends on seed + epoch only
    assert list(DistributedSampler(100, num_replicas=2, rank=0, seed=8)) != first  # the seed matters
    assert list(DistributedSampler(100, num_replicas=2, rank=0, shuffle=False)) == list(range(0, 100, 2))
    unshuffled = DistributedSampler(100, num_replicas=2, rank=1, shuffle=False)
    unshuffled.set_epoch(5)
    assert list(unshuffled) == list(range(1, 100, 2))


def test_every_replica_draws_the_same_permutation():
    n, reps = 50, 4
    got = shards(n, reps, seed=11)
    perm = list(np.random.default_rng(11).permutation(n))
    padded = perm + perm[: 52 - n]
    assert [padded[r::reps] for r in range(reps)] == got


def test_dataset_may_be_a_sized_object_or_an_int():
    class Sized:
        def __len__(self):
            return 10

    assert list(DistributedSampler(Sized(), 3, 1, shuffle=False)) == [1, 4, 7, 0]
    assert list(DistributedSampler(np.int64(10), 3, 1, shuffle=False)) == [1, 4, 7, 0]
    assert list(DistributedSampler(np.zeros((10, 2)), 3, 1, shuffle=False)) == [1, 4, 7, 0]
    with pytest.raises(TypeError, match="len\\(\\) or an int length, got object"):
        DistributedSampler(object(), 2, 0)
    with pytest.raises(ValueError, match="got -1"):
        DistributedSampler(-1, 2, 0)


@pytest.mark.parametrize("num_replicas, rank, match", [
    (4, 4, r"invalid rank 4, rank should be in the interval \[0, 3\]"),
    (4, -1, r"invalid rank -1, rank should be in the interval \[0, 3\]"),
    (1, 1, r"invalid rank 1, rank should be in the interval \[0, 0\]"),
    (0, 0, "num_replicas must be >= 1, got 0"),
])
def test_rank_and_world_size_are_checked(num_replicas, rank, match):
    with pytest.raises(ValueError, match=match):
        DistributedSampler(10, num_replicas=num_replicas, rank=rank)


def test_bad_types_and_seeds_say_what_they_got():
    with pytest.raises(TypeError, match=r"rank must be an int, got 1.0"):
        DistributedSampler(10, num_replicas=2, rank=1.0)
    with pytest.raises(TypeError, match=r"num_replicas must be an int, got True"):
        DistributedSampler(10, num_replicas=True, rank=0)
    with pytest.raises(ValueError, match="seed must be >= 0, got -3"):
        DistributedSampler(10, num_replicas=2, rank=0, seed=-3)
    s = DistributedSampler(10, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        s.set_epoch(-1)
    with pytest.raises(TypeError, match="epoch must be an int"):
        s.set_epoch("1")


def _hide_distributed(monkeypatch, module):
    """Make ``from . import distributed`` inside gpukernels.samplers find ``module``
    (None: no such module)."""
    monkeypatch.delattr(gpukernels, "distributed", raising=False)
    monkeypatch.setitem(sys.modules, "gpukernels.distributed", module)
    if module is not None:
        monkeypatch.setattr(gpukernels, "distributed", module, raising=False)


def test_defaults_come_from_the_initialised_process_group(monkeypatch):
    fake = types.ModuleType("gpukernels.distributed")
    fake.is_initialized = lambda: True
    fake.get_world_size = lambda: 3
    fake.get_rank = lambda: 2
    _hide_distributed(monkeypatch, fake)
    s = DistributedSampler(10, shuffle=False)
    assert (s.num_replicas, s.rank, list(s)) == (3, 2, [2, 5, 8, 1])
    s = DistributedSampler(10, rank=0, shuffle=False)  # only the missing one is looked up
    assert (s.num_replicas, s.rank) == (3, 0)
    s = DistributedSampler(10, num_replicas=5, shuffle=False)
    assert (s.num_replicas, s.rank) == (5, 2)
    with pytest.raises(ValueError, match=r"invalid rank 2.*\[0, 1\]"):
        DistributedSampler(10, num_replicas=2)


def test_no_process_group_says_to_pass_num_replicas_and_rank(monkeypatch):
    fake = types.ModuleType("gpukernels.distributed")
    fake.is_initialized = lambda: False
    fake.get_world_size = fake.get_rank = lambda: pytest.fail("read the world size of no group")
    _hide_distributed(monkeypatch, fake)
    with pytest.raises(ValueError, match="Default process group has not been initialized.*init_process_group.*"
                                         "pass num_replicas and rank"):
        DistributedSampler(10)
    _hide_distributed(monkeypatch, None)
    with pytest.raises(RuntimeError, match="gpukernels.distributed is not available.*pass num_replicas and rank"):
        DistributedSampler(10, num_replicas=2)
    assert len(DistributedSampler(10, num_replicas=2, rank=1)) == 5  # explicit: no group needed


def test_the_real_distributed_module_without_a_group_is_refused():
    """Whatever gpukernels.distributed holds today (or its absence): a fresh process has
    no initialised group, so the defaults are refused with advice."""
    try:
        from gpukernels import distributed  # noqa: F401
    except ImportError:  # not written yet
        pass
    else:
        if getattr(distributed, "is_initialized", lambda: False)():
            pytest.skip("a process group is initialised in this process")
    with pytest.raises((ValueError, RuntimeError), match="pass num_replicas and rank"):
        DistributedSampler(10)


# ----------------------------------------------------------------------------- against torch


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("num_replicas", REPLICAS)
def test_identical_to_torch_without_shuffle(num_replicas, drop_last):
    torch_sampler = pytest.importorskip("torch.utils.data.distributed").DistributedSampler
    for n in LENGTHS:
        for rank in range(num_replicas):
            ours = DistributedSampler(n, num_replicas, rank, shuffle=False, drop_last=drop_last)
            theirs = torch_sampler(range(n), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=drop_last)
            assert list(ours) == list(theirs), (n, rank)
            assert (len(ours), ours.num_samples, ours.total_size) == (len(theirs), theirs.num_samples,
                                                                        theirs.total_size)


@pytest.mark.parametrize("drop_last", [False, True])
def test_torch_shuffled_shards_follow_the_same_arithmetic(drop_last):
    """torch's shuffled shards are ``torch_shards`` of its own permutation: the reference
    above is PyTorch's, so matching it is matching PyTorch up to the permutation."""
    torch = pytest.importorskip("torch")
    from torch.utils.data.distributed import DistributedSampler as TorchSampler

    for n in (1, 2, 7, 10, 23):
        for num_replicas in REPLICAS:
            theirs = []
            for rank in range(num_replicas):
                s = TorchSampler(range(n), num_replicas=num_replicas, rank=rank, seed=5, drop_last=drop_last)
                s.set_epoch(2)
                theirs.append(list(s))
            g = torch.Generator()
            g.manual_seed(5 + 2)
            perm = torch.randperm(n, generator=g).tolist()
            assert theirs == torch_shards(perm, num_replicas, drop_last)[0], (n, num_replicas)


# ----------------------------------------------------------------------------- other samplers


def test_sequential_and_random_samplers():
    assert list(SequentialSampler(5)) == [0, 1, 2, 3, 4] and len(SequentialSampler([1, 2])) == 2
    assert list(SequentialSampler(0)) == []
    a, b = RandomSampler(20, seed=1), RandomSampler(20, generator=np.random.default_rng(1))
    first = list(a)
    assert first == list(b) == list(np.random.default_rng(1).permutation(20))
    assert sorted(first) == list(range(20)) and len(a) == 20
    assert list(a) != first  # the generator moves on: the next epoch differs
    with_rep = list(RandomSampler(5, replacement=True, num_samples=40, seed=2))
    assert len(with_rep) == 40 and set(with_rep) <= set(range(5))
    chained = list(RandomSampler(5, num_samples=12, seed=3))
    assert len(chained) == 12 and sorted(chained[:5]) == sorted(chained[5:10]) == list(range(5))
    gpukernels.manual_seed(4)
    one = list(RandomSampler(30))
    gpukernels.manual_seed(4)
    assert list(RandomSampler(30)) == one  # no generator: seeded from the library's generator
    assert all(isinstance(i, int) for i in one)
    with pytest.raises(ValueError, match="not both"):
        RandomSampler(5, generator=np.random.default_rng(), seed=1)
    with pytest.raises(ValueError, match="empty"):
        RandomSampler(0)
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        RandomSampler(5, num_samples=0)
    with pytest.raises(NotImplementedError):
        iter(Sampler())
    assert isinstance(DistributedSampler(3, 1, 0), Sampler)


# ----------------------------------------------------------------------------- DataLoader


def _loader_data(n=23):
    x = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)
    return x, np.arange(n, dtype=np.int64)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4, 5])
def test_loader_batches_cover_the_shard(batch_size, drop_last):
    x, y = _loader_data()
    seen = []
    for rank in range(3):
        sampler = DistributedSampler(len(x), num_replicas=3, rank=rank, seed=9)
        sampler.set_epoch(4)
        loader = DataLoader(x, y, batch_size=batch_size, drop_last=drop_last, sampler=sampler)
        expect = list(sampler)
        assert len(loader) == (len(expect) // batch_size if drop_last else -(-len(expect) // batch_size))
        batches = list(loader)
        assert len(batches) == len(loader)
        labels = [int(v) for _, t in batches for v in t.numpy()]
        kept = len(loader) * batch_size if drop_last else len(expect)
        assert labels == expect[:kept]
        assert all(np.array_equal(xb.numpy()[:, 0, 0, 0], tb.numpy()) for xb, tb in batches)
        seen += expect
    assert set(seen) == set(range(len(x)))


def test_loader_with_a_sampler_still_augments_from_its_rng():
    x, y = _loader_data(12)
    calls = []

    def augment(images, rng):
        calls.append(rng.integers(1000))
        return images

    loader = DataLoader(x, y, batch_size=5, sampler=SequentialSampler(12), augment=augment, seed=3)
    assert [t.numpy().tolist() for _, t in loader] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    assert calls == list(np.random.default_rng(3).integers(1000, size=3))


def test_loader_without_sampler_draws_as_before():
    """The permutation first, then the augmentations, all from the loader's rng."""
    x, y = _loader_data(10)
    order, crops = [], []
    loader = DataLoader(x, y, batch_size=4, shuffle=True, seed=12, augment=lambda im, rng: crops.append(
        rng.random()) or im)
    for _, t in loader:
        order += t.numpy().tolist()
    rng = np.random.default_rng(12)
    assert order == rng.permutation(10).tolist()
    assert crops == [rng.random() for _ in range(3)]
    assert loader.sampler is None and len(loader) == 3


def test_loader_refuses_shuffle_with_a_sampler_and_bad_samplers():
    x, y = _loader_data(6)
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        DataLoader(x, y, shuffle=True, sampler=SequentialSampler(6))
    with pytest.raises(TypeError, match="sampler must have __iter__ and __len__.*got int"):
        DataLoader(x, y, sampler=6)

    class Wild(Sampler):
        def __init__(self, indices):
            self.indices = indices

        def __iter__(self):
            return iter(self.indices)

        def __len__(self):
            return len(self.indices)

    with pytest.raises(ValueError, match=r"index 6, outside \[0, 6\) for 6 inputs"):
        list(DataLoader(x, y, sampler=Wild([0, 6])))
    with pytest.raises(ValueError, match=r"index -1"):
        list(DataLoader(x, y, sampler=Wild([-1])))
    with pytest.raises(TypeError, match="int indices"):
        list(DataLoader(x, y, sampler=Wild([0.5])))
    assert list(DataLoader(x, y, sampler=Wild([]))) == []


def test_loader_state_dict_is_unchanged_by_a_sampler():
    x, y = _loader_data(8)
    loader = DataLoader(x, y, batch_size=3, sampler=DistributedSampler(8, 2, 0))
    assert set(loader.state_dict()) == {"rng"}
    loader.load_state_dict(DataLoader(x, y, seed=5).state_dict())


# ----------------------------------------------------------------------------- the split


def test_data_still_exports_the_readers():
    from gpukernels import datasets, samplers

    for name in ("DATASETS", "DatasetError", "label_problem", "load_digits", "load_mnist", "load_cifar10",
                 "load_synthetic", "load_dataset"):
        assert getattr(data, name) is getattr(datasets, name)
        assert name in data.__all__
    for name in ("Sampler", "SequentialSampler", "RandomSampler", "DistributedSampler"):
        assert getattr(data, name) is getattr(samplers, name)
        assert name in data.__all__
    assert all(hasattr(data, name) for name in data.__all__)
    assert data.random_crop_flip(2).__class__.__module__ == "gpukernels.data"  # pickled checkpoints
