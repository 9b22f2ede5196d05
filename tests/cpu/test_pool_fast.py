"""The block kernels of ``gpukernels.cpu.pool`` against the reference, on every path:
windows that tile the image (the direct scatter), overlapping windows whose classes fit
the output (the shift scatter: 3x3 s2 p1, 3x3 s1 p1), those that do not (the padded
scatter: odd sizes, dilation, stride 3 over 3x3), taps that miss a class (1x1 s2), 128
taps and more (int32 argmax); ties, NaN, -inf and an infinite upstream gradient; one
plane per block and whole blocks; on the calling thread and on two threads; in the
planes layout and planes-last (every case is run in each); and numba's compiled max
pool where installed.

Max pooling must agree exactly (y, argmax and dx: the same first maximum and the same
sums in the same order); average pooling to rounding."""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels.cpu import _jit, _pool_plan
from gpukernels.cpu import pool as cpu_pool
from gpukernels.reference import pool as ref_pool
from tests.helpers import assert_close

CASES = [  # (N, C, H, W), kernel, stride, padding, dilation
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0), (1, 1)),     # tiles
    ((3, 2, 9, 12), (3, 2), (3, 2), (0, 0), (1, 1)),    # tiles, not square
    ((2, 2, 9, 7), (2, 2), (2, 2), (0, 0), (1, 1)),     # kernel == stride, a row and column left over
    ((2, 3, 8, 10), (3, 3), (2, 2), (1, 1), (1, 1)),    # the ResNet stem's pool: shift scatter
    ((2, 3, 9, 7), (3, 3), (2, 2), (1, 1), (1, 1)),     # odd sizes: padded scatter
    ((1, 4, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1)),     # stride 1: one class
    ((2, 2, 11, 11), (5, 5), (2, 2), (2, 2), (1, 1)),
    ((1, 3, 11, 12), (3, 3), (1, 2), (1, 0), (2, 3)),   # dilation
    ((2, 2, 9, 9), (3, 3), (3, 3), (1, 1), (1, 1)),
    ((2, 3, 7, 8), (1, 1), (2, 2), (0, 0), (1, 1)),     # pixels no window reads
    ((1, 2, 6, 5), (2, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 2, 14, 13), (12, 11), (1, 2), (0, 0), (1, 1)),  # 132 taps: int32 argmax
    ((2, 1, 4, 4), (4, 4), (1, 1), (0, 0), (1, 1)),     # one output pixel a plane
]
IDS = [f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}".replace(" ", "") for c in CASES]
DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]


@pytest.fixture(params=["serial", "forced", "plane-blocks", "planes-last", "numba-serial", "numba-forced"])
def driver(request, knob, monkeypatch):
    """The NumPy block kernels in the planes layout: the calling thread, two threads in
    the smallest pieces, or one plane a block; or every call planes-last. Or numba's
    compiled max pool (``cpu/_jit``; skipped without numba) on one or two threads."""
    if request.param.startswith("numba"):
        if not _jit.enabled():
            pytest.skip(f"compiled kernels off: {_jit.why_not()}")
        knob(cpu_threads=request.param.split("-")[1])
        return request.param
    knob(cpu_jit="off")
    last = request.param == "planes-last"
    monkeypatch.setattr(_pool_plan, "LAST_MAX_OW", 1 << 30 if last else 0)
    monkeypatch.setattr(_pool_plan, "LAST_MAX_BYTES", 1 << 62 if last else 0)
    if request.param == "plane-blocks":
        monkeypatch.setattr(_pool_plan, "BLOCK_BYTES", 1)
        monkeypatch.setattr(_pool_plan, "SCATTER_BLOCK_BYTES", 1)
    elif not last:
        knob(cpu_threads=request.param)
    return request.param


def _ties(rng, shape, dtype):
    return rng.integers(0, 4, shape).astype(dtype)  # ties in most windows


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_pool_is_the_reference(case, dtype, driver):
    shape, kernel, stride, padding, dilation = case
    args = (kernel, stride, padding, dilation)
    rng = np.random.default_rng(7)
    x = _ties(rng, shape, dtype)
    x.reshape(-1)[::17] = -np.inf
    x.reshape(-1)[5::23] = np.nan
    (y, am), (y_ref, am_ref) = cpu_pool.max_pool2d_forward(x, *args), ref_pool.max_pool2d_forward(x, *args)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape and y.flags.c_contiguous
    np.testing.assert_array_equal(y, y_ref)
    assert am.dtype == am_ref.dtype and am.shape == am_ref.shape
    np.testing.assert_array_equal(am, am_ref)
    g = rng.standard_normal(y.shape).astype(dtype)
    want = ref_pool.max_pool2d_backward(g, am_ref, shape, *args)
    for state in (am, am_ref, np.ascontiguousarray(am)):  # ours, the reference's, a copy
        dx = cpu_pool.max_pool2d_backward(g, state, shape, *args)
        assert dx.dtype == want.dtype and dx.shape == want.shape and dx.flags.c_contiguous
        np.testing.assert_array_equal(dx, want)
    np.testing.assert_array_equal(ref_pool.max_pool2d_backward(g, am, shape, *args), want)


@pytest.mark.parametrize("case", CASES[:5], ids=IDS[:5])
def test_max_pool_backward_with_a_non_finite_gradient(case, driver):
    """inf * 0 would be NaN at the taps that are not the argmax: those blocks select."""
    shape, kernel, stride, padding, dilation = case
    args = (kernel, stride, padding, dilation)
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape)
    y, am = cpu_pool.max_pool2d_forward(x, *args)
    g = rng.standard_normal(y.shape)
    g.reshape(-1)[::5] = np.inf
    g.reshape(-1)[1::7] = -np.inf
    g.reshape(-1)[2::11] = np.nan
    np.testing.assert_array_equal(cpu_pool.max_pool2d_backward(g, am, shape, *args),
                                  ref_pool.max_pool2d_backward(g, am, shape, *args))


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["cip", "no-cip"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", [c for c in CASES if c[4] == (1, 1)], ids=[i for i, c in zip(IDS, CASES)
                                                                                if c[4] == (1, 1)])
def test_avg_pool_is_the_reference(case, dtype, count_include_pad, driver):
    shape, kernel, stride, padding, _ = case
    args = (kernel, stride, padding, count_include_pad)
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape).astype(dtype)
    tol = {np.float32: (1e-6, 1e-5), np.float64: (1e-14, 1e-13)}[dtype]
    y, y_ref = cpu_pool.avg_pool2d_forward(x, *args), ref_pool.avg_pool2d_forward(x, *args)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, atol=tol[0], rtol=tol[1], name="avg y")
    g = rng.standard_normal(y.shape).astype(dtype)
    kept = g.copy()
    dx, dx_ref = cpu_pool.avg_pool2d_backward(g, shape, *args), ref_pool.avg_pool2d_backward(g, shape, *args)
    assert dx.dtype == dx_ref.dtype and dx.shape == dx_ref.shape
    assert_close(dx, dx_ref, atol=tol[0], rtol=tol[1], name="avg dx")
    np.testing.assert_array_equal(g, kept, err_msg="the upstream gradient was written")


def test_strided_inputs_and_other_dtypes():
    rng = np.random.default_rng(10)
    base = rng.standard_normal((3, 4, 10, 12))
    args = ((3, 3), (2, 2), (1, 1), (1, 1))
    for x in (base[:, ::2], base.transpose(0, 1, 3, 2), base.astype(np.float16)):
        (y, am), (y_ref, am_ref) = (m.max_pool2d_forward(x, *args) for m in (cpu_pool, ref_pool))
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(am, am_ref)
        g = rng.standard_normal(y.shape).astype(x.dtype)[..., ::-1]  # a strided upstream gradient
        np.testing.assert_array_equal(cpu_pool.max_pool2d_backward(g, am, x.shape, *args),
                                      ref_pool.max_pool2d_backward(g, am_ref, x.shape, *args))
        a_args = ((3, 3), (2, 2), (1, 1), False)
        assert_close(cpu_pool.avg_pool2d_forward(x, *a_args), ref_pool.avg_pool2d_forward(x, *a_args),
                     atol=1e-3, rtol=1e-3, name="avg y")
        assert_close(cpu_pool.avg_pool2d_backward(g, x.shape, *a_args),
                     ref_pool.avg_pool2d_backward(g, x.shape, *a_args), atol=1e-3, rtol=1e-3, name="avg dx")


def test_empty_batch():
    x = np.zeros((0, 3, 8, 8), np.float32)
    y, am = cpu_pool.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), (1, 1))
    assert y.shape == (0, 3, 4, 4) and am.shape == (4, 4, 0, 3)
    assert cpu_pool.max_pool2d_backward(y, am, x.shape, (2, 2), (2, 2), (0, 0), (1, 1)).shape == x.shape
    assert cpu_pool.avg_pool2d_backward(y, x.shape, (3, 3), (2, 2), (1, 1)).shape == x.shape
