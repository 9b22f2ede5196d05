"""Triton max/avg pooling (gpukernels/triton/pool.py) on Triton's interpreter vs the NumPy
reference in float64: forward (y, and the argmax tap of max pooling), then the backward
with the same random upstream gradient, on odd shapes (masks and tails), overlapping
and non-overlapping windows, ties, -inf/NaN, strided and broadcast inputs."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.reference import pool as ref
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

# (N, C, H, W, kernel, stride, padding, dilation): kernels 1/2/3, strides 1/2/3, padding
# 0/1, dilation 1/2, H and W among 1/7/13, overlapping (stride < extent) and not.
CASES = [
    (2, 3, 13, 13, 3, 2, 1, 1),  # ResNet stem pool: overlapping windows
    (1, 5, 7, 13, 2, 2, 0, 1),  # the classic 2x2/s2: one window per pixel
    (2, 3, 13, 7, 3, 1, 1, 2),  # dilated, stride 1: up to 9 windows per pixel
    (1, 2, 1, 7, 1, 1, 0, 1),  # H = 1, identity window
    (2, 3, 7, 7, 3, 3, 0, 1),  # kernel == stride == 3, last row/column unused
    (1, 3, 1, 1, 3, 1, 1, 1),  # 1x1 input: the window is mostly padding
    (1, 4, 13, 13, 2, 3, 1, 2),  # dilated taps with gaps, stride == extent
    (1, 2, 7, 13, (3, 2), (2, 1), (1, 0), (1, 2)),  # every parameter a distinct pair
    (1, 3, 13, 7, 1, 2, 0, 1),  # stride > kernel: pixels no window reaches
    (1, 1, 3, 1025, 3, 2, 1, 1),  # long rows: 1025 and 1023 along the vectorised axis
    (1, 2, 2, 1023, 2, 1, 0, 1),
]
IDS = [f"case{i}" for i in range(len(CASES))]
TOLS = {np.float32: (1e-5, 1e-5), np.float16: (2e-3, 2e-3)}


@pytest.fixture
def tri():
    gk.set_backend("interpret")
    from gpukernels.triton import pool

    return pool


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _geom(case):
    *_, k, s, p, d = case
    return _pair(k), _pair(s), _pair(p), _pair(d)


def _input(case, dtype, seed):
    n, c, h, w = case[:4]
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(dtype)


def _upstream(shape, dtype, seed=7):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _check_max(tri, x, geom, dtype, gy=None, name=""):
    """Forward vs the float64 reference (y and argmax exactly: a max rounds nothing),
    backward with the same upstream gradient."""
    atol, rtol = TOLS[dtype]
    y, am = tri.max_pool2d_forward(x, *geom)
    y_ref, am_ref = ref.max_pool2d_forward(x.astype(np.float64), *geom)
    assert y.dtype == x.dtype and y.flags.c_contiguous
    assert am.dtype == am_ref.dtype  # int8, or int32 for windows of 128 taps or more
    assert_close(y, y_ref, atol=0, rtol=0, name=f"{name} max forward")
    # the reference keeps its offsets in (OH, OW, N, C) order; ours are NCHW
    np.testing.assert_array_equal(am, am_ref.transpose(2, 3, 0, 1), err_msg=f"{name} argmax")
    if gy is None:
        gy = _upstream(y.shape, dtype)
    dx = tri.max_pool2d_backward(gy, am, x.shape, *geom)
    dx_ref = ref.max_pool2d_backward(gy.astype(np.float64), am_ref, x.shape, *geom)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert_close(dx, dx_ref, atol=atol, rtol=rtol, name=f"{name} max backward")
    return y, am, dx


def _check_avg(tri, x, geom, count_include_pad, dtype, gy=None, name=""):
    atol, rtol = TOLS[dtype]
    k, s, p, _ = geom
    y = tri.avg_pool2d_forward(x, k, s, p, count_include_pad)
    y_ref = ref.avg_pool2d_forward(x.astype(np.float64), k, s, p, count_include_pad)
    assert y.dtype == x.dtype
    assert_close(y, y_ref, atol=atol, rtol=rtol, name=f"{name} avg forward")
    if gy is None:
        gy = _upstream(y.shape, dtype)
    dx = tri.avg_pool2d_backward(gy, x.shape, k, s, p, count_include_pad)
    dx_ref = ref.avg_pool2d_backward(gy.astype(np.float64), x.shape, k, s, p, count_include_pad)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert_close(dx, dx_ref, atol=atol, rtol=rtol, name=f"{name} avg backward")
    return y, dx


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_pool_forward_argmax_and_backward_match_the_reference(tri, case):
    x = _input(case, np.float32, seed=CASES.index(case))
    _check_max(tri, x, _geom(case), np.float32, name=str(case))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_avg_pool_forward_and_backward_match_the_reference(tri, case):
    x = _input(case, np.float32, seed=CASES.index(case))
    k, s, p, _ = _geom(case)  # average pooling has no dilation
    for cip in (True, False):
        _check_avg(tri, x, (k, s, p, (1, 1)), cip, np.float32, name=f"{case} count_include_pad={cip}")


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[7]], ids=["overlap", "2x2s2", "pairs"])
def test_float16_computes_in_float32(tri, case):
    x = _input(case, np.float16, seed=3)
    _check_max(tri, x, _geom(case), np.float16, name=f"{case} fp16")
    k, s, p, _ = _geom(case)
    _check_avg(tri, x, (k, s, p, (1, 1)), False, np.float16, name=f"{case} fp16")


def test_ties_go_to_the_first_maximum(tri):
    geom = ((3, 3), (2, 2), (1, 1), (1, 1))
    x = np.full((2, 3, 7, 13), 0.5, np.float32)  # every window is one big tie
    y, am, dx = _check_max(tri, x, geom, np.float32, name="constant")
    # the first real tap of each window: tap 0 unless that is padding, which holds -inf
    assert am[0, 0, 0, 0] == 4 and am[0, 0, 1, 1] == 0
    # values drawn from {0, 1, 2}: ties inside most windows, overlapping ones too
    x = np.random.default_rng(1).integers(0, 3, (2, 3, 13, 13)).astype(np.float32)
    _check_max(tri, x, geom, np.float32, name="small integers")
    _check_max(tri, x, ((2, 2), (1, 1), (0, 0), (1, 1)), np.float32, name="small integers 2x2 s1")


def test_minus_infinity_and_nan_follow_the_reference(tri):
    geom = ((3, 3), (2, 2), (1, 1), (1, 1))
    x = np.random.default_rng(2).standard_normal((1, 2, 7, 7)).astype(np.float32)
    x[0, 0, :3, :3] = -np.inf  # a window of -inf and padding: y = -inf, argmax 0
    x[0, 0, 4, 5] = np.nan  # NaN wins every window it is in, with argmax 0 (as the reference)
    x[0, 1, 0, 0] = np.inf
    x[0, 1, 3, 2] = -np.inf
    y, am, dx = _check_max(tri, x, geom, np.float32, name="inf/nan")
    assert y[0, 0, 0, 0] == -np.inf and am[0, 0, 0, 0] == 0
    assert np.isnan(y[0, 0, 2, 2]) and np.isnan(y[0, 0, 2, 3]) and am[0, 0, 2, 2] == 0
    assert y[0, 1, 0, 0] == np.inf
    k, s, p, _ = geom
    y, _ = _check_avg(tri, x, (k, s, p, (1, 1)), True, np.float32, name="inf/nan")
    assert np.isnan(y[0, 0, 2, 2]) and y[0, 0, 0, 0] == -np.inf


def test_strided_inputs_and_broadcast_gradients(tri):
    rng = np.random.default_rng(4)
    geom = ((3, 3), (2, 2), (1, 1), (1, 1))
    base = rng.standard_normal((2, 13, 9, 5)).astype(np.float32)
    x_cl = base.transpose(0, 3, 1, 2)  # NHWC memory, NCHW shape (2, 5, 13, 9)
    assert not x_cl.flags.c_contiguous
    _check_max(tri, x_cl, geom, np.float32, name="channels-last")
    x_sl = rng.standard_normal((2, 8, 13, 15)).astype(np.float32)[:, 1::2, ::2, 1:]  # every stride odd
    _check_max(tri, x_sl, geom, np.float32, name="sliced")
    _check_avg(tri, x_sl, geom, False, np.float32, name="sliced")
    # a stride-0 upstream gradient (what sum().backward() may hand down) is read as such
    y, _ = tri.max_pool2d_forward(x_sl, *geom)
    g = np.broadcast_to(np.float32(1.5), y.shape)
    _check_max(tri, x_sl, geom, np.float32, gy=g, name="broadcast gy")
    _check_avg(tri, x_sl, geom, True, np.float32, gy=np.broadcast_to(np.float32(-2.0), y.shape),
               name="broadcast gy")
    # broadcast along some axes only (strides (0, s, 0, s')), and a reversed (negative-stride) view
    g = np.broadcast_to(rng.standard_normal((1, y.shape[1], 1, y.shape[3])).astype(np.float32), y.shape)
    _check_max(tri, x_sl, geom, np.float32, gy=g, name="partly broadcast gy")
    _check_avg(tri, x_sl, geom, False, np.float32, gy=g, name="partly broadcast gy")
    x_rev = x_sl[:, :, ::-1]
    _check_max(tri, x_rev, geom, np.float32, gy=g[:, ::-1], name="negative strides")
    _check_avg(tri, x_rev, geom, True, np.float32, gy=g[..., ::-1], name="negative strides")


def test_read_only_inputs_are_read_not_refused(tri):
    # np.broadcast_to(a, a.shape) is C-contiguous but read-only (as is a read-only memmap)
    x = _input(CASES[0], np.float32, seed=11)
    geom = _geom(CASES[0])
    y, am = tri.max_pool2d_forward(x, *geom)
    gy = _upstream(y.shape, np.float32)
    am.setflags(write=False)
    _check_max(tri, np.broadcast_to(x, x.shape), geom, np.float32, gy=np.broadcast_to(gy, gy.shape),
               name="read-only")
    ref_dx = tri.max_pool2d_backward(gy, am.copy(), x.shape, *geom)
    np.testing.assert_array_equal(tri.max_pool2d_backward(gy, am, x.shape, *geom), ref_dx)
    _check_avg(tri, np.broadcast_to(x, x.shape), geom, False, np.float32, gy=np.broadcast_to(gy, gy.shape),
               name="read-only")


def test_windows_of_128_taps_or_more_keep_an_int32_argmax(tri):
    x = np.random.default_rng(5).standard_normal((1, 2, 25, 24)).astype(np.float32)
    _, am, _ = _check_max(tri, x, ((12, 12), (12, 12), (0, 0), (1, 1)), np.float32, name="12x12")
    assert am.dtype == np.int32


def test_small_tiles_and_many_column_tiles(tri, monkeypatch, knob):
    # 128-element tiles 8 wide: many row and column programs, tails in both directions
    for kernel in tri.KERNELS.values():
        knob(configs={kernel: (128, 4, 1)})
    monkeypatch.setattr(tri, "MAX_BLOCK_W", 8)
    for case in (CASES[0], CASES[2], CASES[7]):
        x = _input(case, np.float32, seed=6)
        _check_max(tri, x, _geom(case), np.float32, name=f"{case} small tiles")
        k, s, p, _ = _geom(case)
        _check_avg(tri, x, (k, s, p, (1, 1)), False, np.float32, name=f"{case} small tiles")


def test_int64_offsets_give_the_same_result(tri, monkeypatch):
    # tensors of 2**31 elements do not fit a test; the INT64 code path runs on small ones
    monkeypatch.setattr(tri, "needs_int64", lambda *arrays: True)
    x = _input(CASES[2], np.float32, seed=8).transpose(0, 1, 3, 2)  # strided too
    _check_max(tri, x, _geom(CASES[2]), np.float32, name="int64")
    _check_avg(tri, x, ((3, 3), (2, 2), (1, 1), (1, 1)), False, np.float32, name="int64")


def test_functional_pooling_dispatches_to_triton_under_interpret():
    gk.set_backend("interpret")
    xs = np.random.default_rng(9).standard_normal((2, 3, 9, 7)).astype(np.float32)
    g = np.random.default_rng(10).standard_normal((2, 3, 5, 4)).astype(np.float32)

    def run():
        x = gk.tensor(xs, requires_grad=True)
        y = F.max_pool2d(x, 3, 2, 1) * 2 + F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        y.backward(gk.tensor(g))
        return y.numpy(), x.grad.numpy()

    y, gx = run()
    assert backend.last_dispatch["pool"] == "gpukernels.triton.pool"
    gk.set_backend("numpy")
    y_np, gx_np = run()
    assert backend.last_dispatch["pool"] == "gpukernels.cpu.pool"
    assert_close(y, y_np, atol=1e-6, rtol=1e-6, name="y")
    assert_close(gx, gx_np, atol=1e-5, rtol=1e-5, name="x.grad")


def test_bad_arguments_are_clear_errors(tri):
    x = np.zeros((1, 2, 5, 5), np.float32)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16 .as uint16. arrays, got float64"):
        tri.max_pool2d_forward(x.astype(np.float64), 2, 2, 0, 1)
    with pytest.raises(ValueError, match=r"max_pool2d: expected a 4-d \(N, C, H, W\) input, got shape \(2, 5, 5\)"):
        tri.max_pool2d_forward(x[0], 2, 2, 0, 1)
    with pytest.raises(ValueError, match="avg_pool2d: window .* does not fit the input"):
        tri.avg_pool2d_forward(x, 7, 1, 0)
    y, am = tri.max_pool2d_forward(x, 2, 2, 0, 1)
    with pytest.raises(ValueError, match=r"grad_y must have shape \(1, 2, 2, 2\)"):
        tri.max_pool2d_backward(np.zeros((1, 2, 3, 3), np.float32), am, x.shape, 2, 2, 0, 1)
    with pytest.raises(ValueError, match="argmax must be the contiguous int8 array"):
        tri.max_pool2d_backward(y, am.astype(np.int64), x.shape, 2, 2, 0, 1)
    with pytest.raises(ValueError, match="argmax must be"):  # the reference's (OH, OW, N, C) order
        tri.max_pool2d_backward(y, am.transpose(2, 3, 0, 1).copy(), x.shape, 2, 2, 0, 1)
