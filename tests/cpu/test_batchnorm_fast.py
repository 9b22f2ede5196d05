"""gpukernels.cpu.batchnorm's fast paths: sub-blocks of the elementwise passes (uneven
ones too), the one-copy coefficient rows, the GEMV sums, the size threshold for two
threads (with BLAS held to one thread), and outputs that are not views (autograd
would copy a view). Against the reference (float64 to rounding, float32 looser) and
against the serial run."""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels.cpu import batchnorm
from gpukernels.reference import batchnorm as ref
from tests.helpers import assert_close

TOLS = {np.float64: 1e-11, np.float32: 2e-5}


@pytest.fixture(autouse=True)
def numpy_passes(knob):
    """These are the NumPy passes' own paths: numba's compiled kernels (``cpu/_jit``,
    tested in test_batchnorm.py) stay off."""
    knob(cpu_jit="off")


def _inputs(shape, dtype, seed=0, offset=0.5):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(c)).astype(dtype)
    b = (0.1 * rng.standard_normal(c)).astype(dtype)
    return x, g, w, b


def _close(actual, expected, dtype, name):
    assert actual.dtype == expected.dtype, name
    tol = TOLS[dtype]
    scale = max(1.0, float(np.abs(expected).max()))
    assert_close(actual, expected, atol=tol * scale, rtol=tol, name=name)


def _both(x, g, w, b, training, needs=(True, True, True)):
    c = x.shape[1]
    rm, rv = np.zeros(c, x.dtype), np.ones(c, x.dtype)
    y, mean, inv = batchnorm.batch_norm_forward(x, rm, rv, w, b, training, 0.1, 1e-5)
    grads = batchnorm.batch_norm_backward(g, x, mean, inv, w, training, needs)
    return (y, mean, inv, rm, rv) + grads


def _reference(x, g, w, b, training, needs=(True, True, True)):
    c = x.shape[1]
    rm, rv = np.zeros(c, x.dtype), np.ones(c, x.dtype)
    y, mean, inv = ref.batch_norm_forward(x, rm, rv, w, b, training, 0.1, 1e-5)
    grads = ref.batch_norm_backward(g, x, mean, inv, w, training, needs)
    return (y, mean, inv, rm, rv) + grads


NAMES = ("y", "mean", "inv_std", "running_mean", "running_var", "dx", "dgamma", "dbeta")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", [(7, 3, 5, 9), (5, 6, 16, 16), (3, 2, 70), (9, 4)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mode", ["serial", "forced"])
def test_uneven_sub_blocks_match_the_reference(knob, monkeypatch, shape, dtype, training, mode):
    knob(cpu_threads=mode)
    x, g, w, b = _inputs(shape, dtype)
    image = x[:1].nbytes
    monkeypatch.setattr(batchnorm, "BLOCK_BYTES", 2 * image + 1)  # sub-blocks of 2 images
    monkeypatch.setattr(batchnorm, "THREADED_BLOCK_BYTES", 3 * image - 1)  # of 2, uneven pieces
    for name, got, want in zip(NAMES, _both(x, g, w, b, training), _reference(x, g, w, b, training)):
        _close(got, want, dtype, name)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, True), (True, True, False)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_needs_on_the_threaded_size(needs, training):
    """(32, 64, 32, 32) float32 is 8 MiB: the default run takes two threads."""
    x, g, w, b = _inputs((32, 64, 32, 32), np.float32, seed=1)
    assert x.nbytes >= batchnorm.THREADS_FROM_BYTES
    got = _both(x, g, w, b, training, needs)
    want = _reference(x, g, w, b, training, needs)
    for name, a, e in zip(NAMES, got, want):
        if e is None:
            assert a is None, name
        else:
            _close(a, e, np.float32, name)


def test_threaded_and_serial_runs_agree(knob):
    x, g, w, b = _inputs((32, 64, 32, 32), np.float32, seed=2, offset=30.0)  # shifted sums too
    threaded = _both(x, g, w, b, True)
    knob(cpu_threads="serial")
    serial = _both(x, g, w, b, True)
    for name, a, e in zip(NAMES, threaded, serial):
        _close(a, e, np.float32, name)


def test_outputs_are_not_views():
    x, g, w, b = _inputs((4, 3, 5, 5), np.float64)
    y, mean, inv, _, _, dx, dgamma, dbeta = _both(x, g, w, b, True)
    for name, a in (("y", y), ("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)):
        assert a.base is None, f"{name} is a view: autograd would copy it"
    assert y.shape == dx.shape == x.shape


def test_rows_in_one_copy():
    x3 = np.zeros((2, 3, 4), np.float32)
    a, k, k0 = batchnorm._rows(np.array([1.0, 2.0, 3.0]), x3, np, np.arange(3.0), -np.arange(3.0))
    for r, v in ((a, [1, 2, 3]), (k, [0, 1, 2]), (k0, [0, -1, -2])):
        assert r.shape == (3, 4) and r.dtype == np.float32 and r.flags.c_contiguous
        np.testing.assert_array_equal(r, np.repeat(np.array(v, np.float32)[:, None], 4, axis=1))


@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 2, 33, 3)])
def test_gemv_sums_and_strided_fallback(shape):
    rng = np.random.default_rng(3)
    a3 = rng.standard_normal(shape).astype(np.float32).reshape(shape[0], shape[1], -1)
    want = a3.astype(np.float64).sum(axis=(0, 2))
    assert_close(batchnorm._sums(a3, np), want, atol=1e-5, rtol=1e-6)
    strided = np.ascontiguousarray(np.concatenate([a3, a3], axis=2))[:, :, ::2]  # not contiguous
    assert_close(batchnorm._sums(strided, np), strided.astype(np.float64).sum(axis=(0, 2)), atol=1e-5, rtol=1e-6)
