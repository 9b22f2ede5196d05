"""gpukernels.reference.pool against torch max_pool2d / avg_pool2d in float64: output and
input gradient for one random upstream gradient, on odd sizes, overlapping and strided
windows, per-axis padding and dilation, ``count_include_pad`` both ways; ties (the
gradient goes to the first maximum, as in torch) and the argmax's layout and dtype."""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels.reference import pool
from tests.helpers import assert_close
from tests.reference.common import ATOL, RTOL, torch, torch_run

F = torch.nn.functional

# (N, C, H, W, kernel, stride, padding, dilation)
CASES = [
    (2, 3, 7, 9, (3, 3), (2, 2), (1, 1), (1, 1)),
    (1, 1, 5, 5, (2, 2), (2, 2), (0, 0), (1, 1)),
    (2, 2, 8, 5, (3, 2), (1, 1), (1, 1), (1, 1)),  # overlapping windows
    (3, 2, 13, 6, (5, 3), (2, 3), (2, 1), (1, 1)),
    (1, 3, 11, 12, (3, 3), (1, 2), (1, 0), (2, 3)),  # dilated
    (2, 1, 4, 4, (4, 4), (1, 1), (0, 0), (1, 1)),  # one window
    (1, 2, 6, 7, (1, 1), (2, 1), (0, 0), (1, 1)),
]
IDS = [f"n{c[0]}c{c[1]}h{c[2]}w{c[3]}k{c[4][0]}{c[4][1]}s{c[5][0]}{c[5][1]}p{c[6][0]}{c[6][1]}d{c[7][0]}{c[7][1]}"
       for c in CASES]


def _x(case, seed=0):
    return np.random.default_rng(seed).standard_normal(case[:4])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_pool_matches_torch(case):
    geom = case[4:]
    x = _x(case)
    y_ref, g, (gx_ref,) = torch_run(lambda t: F.max_pool2d(t, *geom), x)
    y, argmax = pool.max_pool2d_forward(x, *geom)
    assert_close(y, y_ref, atol=0, rtol=0, name="y")
    assert argmax.dtype == np.int8 and argmax.shape == y.shape[2:] + y.shape[:2]  # (OH, OW, N, C)
    gx = pool.max_pool2d_backward(g, argmax, x.shape, *geom)
    assert_close(gx, gx_ref, atol=ATOL, rtol=RTOL, name="grad_x")


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_avg_pool_matches_torch(case, count_include_pad):
    kernel, stride, padding, _ = case[4:]
    x = _x(case, seed=1)
    y_ref, g, (gx_ref,) = torch_run(
        lambda t: F.avg_pool2d(t, kernel, stride, padding, count_include_pad=count_include_pad), x)
    y = pool.avg_pool2d_forward(x, kernel, stride, padding, count_include_pad)
    assert_close(y, y_ref, atol=ATOL, rtol=RTOL, name="y")
    gx = pool.avg_pool2d_backward(g, x.shape, kernel, stride, padding, count_include_pad)
    assert_close(gx, gx_ref, atol=ATOL, rtol=RTOL, name="grad_x")


def test_ties_send_the_gradient_to_the_first_maximum():
    x = np.random.default_rng(2).integers(0, 3, (2, 3, 9, 9)).astype(np.float64)
    for geom in (((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 2), (1, 1), (0, 0), (1, 1))):
        y_ref, g, (gx_ref,) = torch_run(lambda t: F.max_pool2d(t, *geom), x)
        y, argmax = pool.max_pool2d_forward(x, *geom)
        assert_close(pool.max_pool2d_backward(g, argmax, x.shape, *geom), gx_ref, atol=ATOL, rtol=RTOL,
                     name=f"ties {geom}")


def test_padding_is_minus_infinity_and_nan_wins_with_tap_zero():
    x = np.random.default_rng(3).standard_normal((1, 1, 5, 5))
    x[0, 0, :2, :2] = -np.inf
    x[0, 0, 4, 4] = np.nan
    y, argmax = pool.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1), (1, 1))
    assert y[0, 0, 0, 0] == -np.inf and argmax[0, 0, 0, 0] == 0  # the first tap is padding
    assert np.isnan(y[0, 0, 2, 2]) and argmax[2, 2, 0, 0] == 0  # NaN equals no tap
    gx = pool.max_pool2d_backward(np.full(y.shape, np.inf), argmax, x.shape, (3, 3), (2, 2), (1, 1), (1, 1))
    assert not np.isnan(gx).any()  # a select, not inf * 0


def test_windows_of_128_taps_or_more_keep_int32_offsets():
    x = np.random.default_rng(4).standard_normal((1, 2, 12, 12))
    y, argmax = pool.max_pool2d_forward(x, (12, 12), (1, 1), (0, 0), (1, 1))
    assert argmax.dtype == np.int32
    assert int(argmax[0, 0, 0, 1]) == int(np.argmax(x[0, 1]))
