"""gpukernels.reference.conv against torch.nn.functional.conv2d in float64: the output
and the three gradients for one random upstream gradient, on awkward shapes (odd and
non-square sizes, 1x1 and 5x5 kernels, per-axis stride / padding / dilation, groups and
depthwise, a batch of one and of none), each activation, and the ``needs`` flags."""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels.reference import conv
from tests.helpers import assert_close
from tests.reference.common import ATOL, RTOL, torch, torch_run

F = torch.nn.functional

# (N, C, H, W, O, (KH, KW), stride, padding, dilation, groups, bias, activation)
CASES = [
    (2, 3, 7, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, True, None),
    (1, 1, 5, 5, 1, (3, 3), (1, 1), (0, 0), (1, 1), 1, False, "relu"),
    (3, 2, 9, 13, 5, (1, 1), (1, 1), (0, 0), (1, 1), 1, True, "leaky_relu"),
    (2, 3, 5, 8, 4, (1, 1), (2, 3), (1, 2), (1, 1), 1, True, None),  # 1x1 with padding
    (2, 3, 13, 11, 2, (5, 5), (2, 2), (2, 1), (1, 1), 1, True, "relu"),
    (1, 3, 13, 10, 3, (5, 3), (1, 2), (0, 2), (2, 1), 1, False, None),
    (2, 4, 8, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), 2, True, "leaky_relu"),  # groups 2
    (2, 5, 9, 9, 5, (3, 3), (2, 2), (1, 1), (1, 1), 5, True, None),  # depthwise
    (1, 3, 7, 6, 6, (3, 2), (1, 1), (2, 0), (2, 2), 3, False, "relu"),  # depthwise x2, dilated
    (2, 6, 4, 4, 4, (4, 4), (1, 1), (0, 0), (1, 1), 2, True, None),  # 1x1 output
    (3, 2, 3, 3, 3, (3, 3), (1, 1), (3, 3), (1, 1), 1, True, None),  # padding > kernel / 2
    (2, 8, 6, 5, 16, (2, 2), (3, 2), (1, 0), (1, 2), 4, True, "leaky_relu"),
]
IDS = [f"n{c[0]}c{c[1]}h{c[2]}w{c[3]}o{c[4]}k{c[5][0]}x{c[5][1]}s{c[6][0]}{c[6][1]}g{c[9]}-{c[11]}" for c in CASES]


def _torch_conv(stride, padding, dilation, groups, activation, slope):
    def run(x, w, b):
        z = F.conv2d(x, w, b, stride, padding, dilation, groups)
        if activation == "relu":
            return F.relu(z)
        return F.leaky_relu(z, slope) if activation == "leaky_relu" else z
    return run


def _inputs(case, seed=0):
    n, c, h, w, o, (kh, kw), _, _, _, groups, bias, _ = case
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c // groups, kh, kw)),
            rng.standard_normal(o) if bias else None)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_backward_match_torch(case):
    *_, stride, padding, dilation, groups, bias, activation = case
    x, w, b = _inputs(case)
    slope = 0.2
    y_ref, g, (gx_ref, gw_ref, gb_ref) = torch_run(
        _torch_conv(stride, padding, dilation, groups, activation, slope), x, w, b)
    args = (stride, padding, dilation, groups, activation, slope)
    y = conv.conv2d_forward(x, w, b, *args)
    assert y.dtype == np.float64
    assert_close(y, y_ref, atol=ATOL, rtol=RTOL, name="y")
    gx, gw, gb = conv.conv2d_backward(g, x, w, y, *args, needs=(True, True, bias))
    assert_close(gx, gx_ref, atol=ATOL, rtol=RTOL, name="grad_x")
    assert_close(gw, gw_ref, atol=ATOL, rtol=RTOL, name="grad_w")
    if bias:
        assert_close(gb, gb_ref, atol=ATOL, rtol=RTOL, name="grad_b")
    else:
        assert gb is None


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, False, False)])
def test_needs_flags_leave_out_what_is_not_wanted(needs):
    case = CASES[6]
    x, w, b = _inputs(case, seed=1)
    args = (*case[6:10], "relu", 0.01)
    y = conv.conv2d_forward(x, w, b, *args)
    g = np.random.default_rng(2).standard_normal(y.shape)
    full = conv.conv2d_backward(g, x, w, y, *args)
    part = conv.conv2d_backward(g, x, w, y, *args, needs=needs)
    for want, got, ref in zip(needs, part, full):
        assert (got is None) == (not want)
        if want:
            np.testing.assert_array_equal(got, ref)


def test_float32_stays_float32():
    x, w, b = (a.astype(np.float32) for a in _inputs(CASES[0]))
    y = conv.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1), 1, "relu")
    grads = conv.conv2d_backward(np.ones_like(y), x, w, y, (1, 1), (1, 1), (1, 1), 1, "relu")
    assert {a.dtype for a in (y, *grads)} == {np.dtype(np.float32)}


def test_an_empty_batch_gives_empty_outputs_and_zero_parameter_gradients():
    x, w, b = np.zeros((0, 3, 5, 5)), np.ones((2, 3, 3, 3)), np.ones(2)
    y = conv.conv2d_forward(x, w, b, (1, 1), (0, 0), (1, 1), 1)
    assert y.shape == (0, 2, 3, 3)
    gx, gw, gb = conv.conv2d_backward(np.zeros(y.shape), x, w, y, (1, 1), (0, 0), (1, 1), 1)
    assert gx.shape == x.shape and not gw.any() and not gb.any()


def test_strided_views_are_read_as_their_values():
    x, w, b = _inputs(CASES[4], seed=3)
    xv = np.asfortranarray(x)[:, :, ::-1]
    args = (*CASES[4][6:10], None, 0.01)
    np.testing.assert_allclose(conv.conv2d_forward(xv, w[:, :, ::-1], b, *args),
                               conv.conv2d_forward(xv.copy(), w[:, :, ::-1].copy(), b, *args), rtol=1e-13)
