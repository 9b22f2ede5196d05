"""gpukernels.cpu.optim (blocked, threaded updates) against the reference's updates: bit
for bit, since every operation is the reference's in the same order, on odd sizes that
cut blocks unevenly, float32 and float64, on the calling thread and on the forced
two-thread driver, with segments, gradient scales, step arrays and the fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels.cpu import _blocks
from gpukernels.cpu import optim as cpu_optim
from gpukernels.reference import optim as ref_optim

DTYPES = [np.float64, np.float32]


@pytest.fixture(params=["serial", "forced"])
def threads(request, knob, monkeypatch):
    """Calling thread only, or two threads on blocks of 1000 elements (many pieces)."""
    knob(cpu_threads=request.param)
    if request.param == "forced":
        monkeypatch.setattr(_blocks, "BLOCK_BYTES", 1000 * 8)
    return request.param


def _arrays(n, dtype, count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(dtype) for _ in range(count)]


def _same(name, mine, ref):
    for i, (a, b) in enumerate(zip(mine, ref)):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: array {i}")


def _both(update, arrays, positive=(), **kwargs):
    """Run cpu's and the reference's ``update`` on copies; returns both array lists."""
    for i in positive:  # second moments and sums are >= 0
        arrays[i] = np.abs(arrays[i])
    mine = [None if a is None else a.copy() for a in arrays]
    ref = [None if a is None else a.copy() for a in arrays]
    getattr(cpu_optim, update)(*mine, **kwargs)
    getattr(ref_optim, update)(*ref, **kwargs)
    return mine, ref


SIZES = [1, 7, 1001, 40_013]

ADAM = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decoupled": True},
    {"amsgrad": True, "maximize": True},
    {"beta1": 0.3, "grad_scale": 0.5},  # lerp's second branch
    {"grad_scale": np.array([0.25]), "maximize": True, "weight_decay": 0.01},
    {"grad_scale": np.array([0.25], np.float64), "amsgrad": True, "decoupled": True, "weight_decay": 0.02},
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kwargs", ADAM, ids=range(len(ADAM)))
def test_adam(threads, n, dtype, kwargs):
    arrays = _arrays(n, dtype, 5)
    mine, ref = _both("adam_update", arrays, positive=(3, 4), step=3, lr=1e-2, **kwargs)
    _same("adam", mine, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_adam_segments_and_step_array(threads, dtype):
    n = 40_013
    segments = ((0, 5), (5, 17_000), (17_003, 17_003), (20_000, n))
    arrays = _arrays(n, dtype, 5, seed=1)
    steps = [np.array([2.0, 7.0, 2.0], np.float32) for _ in range(2)]
    arrays[3] = np.abs(arrays[3])
    mine = [a.copy() for a in arrays]
    ref = [a.copy() for a in arrays]
    cpu_optim.adam_update(*mine, step=steps[0], step_index=(0, 2), lr=1e-2, amsgrad=True,
                          segments=segments)
    ref_optim.adam_update(*ref, step=steps[1], step_index=(0, 2), lr=1e-2, amsgrad=True,
                          segments=segments)
    _same("adam segments", mine, ref)
    np.testing.assert_array_equal(steps[0], [3.0, 7.0, 3.0])
    np.testing.assert_array_equal(steps[0], steps[1])
    untouched = np.r_[17_000:20_000]
    np.testing.assert_array_equal(mine[0][untouched], arrays[0][untouched])


SGD = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
    {"momentum": 0.9, "first_step": True, "maximize": True, "grad_scale": 2.0},
    {"weight_decay": 0.05, "grad_scale": np.array([0.5])},
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kwargs", SGD, ids=range(len(SGD)))
def test_sgd(threads, n, dtype, kwargs):
    arrays = _arrays(n, dtype, 3)
    if not kwargs.get("momentum"):
        arrays[2] = None
    mine, ref = _both("sgd_update", arrays, lr=0.1, **kwargs)
    _same("sgd", [a for a in mine if a is not None], [a for a in ref if a is not None])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kwargs", [{}, {"lr_decay": 0.1, "weight_decay": 0.1, "maximize": True}])
def test_adagrad(threads, n, dtype, kwargs):
    arrays = _arrays(n, dtype, 3)
    mine, ref = _both("adagrad_update", arrays, positive=(2,), step=4, lr=0.1, **kwargs)
    _same("adagrad", mine, ref)


def test_adagrad_step_array(threads):
    arrays = _arrays(1001, np.float32, 3)
    arrays[2] = np.abs(arrays[2])
    steps = [np.array([3], np.int32), np.array([3], np.int32)]
    mine, ref = [a.copy() for a in arrays], [a.copy() for a in arrays]
    cpu_optim.adagrad_update(*mine, step=steps[0], lr=0.1, lr_decay=0.2)
    ref_optim.adagrad_update(*ref, step=steps[1], lr=0.1, lr_decay=0.2)
    _same("adagrad step array", mine + steps[:1], ref + steps[1:])


RMSPROP = [
    {},
    {"centered": True},
    {"momentum": 0.9},
    {"centered": True, "momentum": 0.9, "weight_decay": 0.1, "maximize": True},
    {"alpha": 0.3, "centered": True, "grad_scale": 0.5},
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kwargs", RMSPROP, ids=range(len(RMSPROP)))
def test_rmsprop(threads, n, dtype, kwargs):
    arrays = _arrays(n, dtype, 5)
    arrays[2] = np.abs(arrays[2]) + 1  # v > m^2: no NaN from the centered sqrt
    arrays[3] *= 0.1
    mine, ref = _both("rmsprop_update", arrays, lr=0.01, **kwargs)
    _same("rmsprop", mine, ref)


def test_gradient_is_not_written_and_views_stay_views(threads):
    p, g, m, v = _arrays(40_013, np.float32, 4)
    v = np.abs(v)
    g0, view = g.copy(), p[10:20]
    cpu_optim.adam_update(p, g, m, v, None, step=1, lr=0.1)
    np.testing.assert_array_equal(g, g0)
    assert view.base is p and np.array_equal(view, p[10:20])


def test_what_the_fast_path_does_not_take_goes_to_the_reference(threads):
    # a strided parameter (any array, without segments) and mixed dtypes
    base = _arrays(2002, np.float64, 4)
    mine = [a.reshape(2, 1001)[:, ::2] for a in (b.copy() for b in base)]
    ref = [a.reshape(2, 1001)[:, ::2] for a in (b.copy() for b in base)]
    for arrs in (mine, ref):
        arrs[3] = np.abs(arrs[3])
    cpu_optim.adam_update(*mine, None, step=2, lr=0.1)
    ref_optim.adam_update(*ref, None, step=2, lr=0.1)
    _same("strided adam", mine, ref)
    p, g, b = _arrays(100, np.float64, 3)
    g32 = g.astype(np.float32)
    p2, b2 = p.copy(), b.copy()
    cpu_optim.sgd_update(p, g32, b, lr=0.1, momentum=0.9)
    ref_optim.sgd_update(p2, g32, b2, lr=0.1, momentum=0.9)
    _same("mixed sgd", [p, b], [p2, b2])


def test_errors_are_the_reference_s():
    p, g, m, v = _arrays(10, np.float32, 4)
    with pytest.raises(ValueError, match=r"segments: \(5, 11\) is not a range inside the 10 elements"):
        cpu_optim.adam_update(p, g, m, v, None, step=1, lr=0.1, segments=((0, 2), (5, 11)))
    np.testing.assert_array_equal(p, _arrays(10, np.float32, 4)[0])  # checked before any update
    with pytest.raises(ValueError, match="grad_scale: expected one element"):
        cpu_optim.sgd_update(p, g, None, lr=0.1, grad_scale=np.ones(2))
    with pytest.raises(TypeError, match="step must be a float32 or int32 array"):
        cpu_optim.adam_update(p, g, m, v, None, step=np.ones(1), lr=0.1)
    strided = np.zeros((4, 6), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="segments: p must be C-contiguous"):
        cpu_optim.sgd_update(strided, strided.copy(), None, lr=0.1, segments=((0, 2),))
