"""The small families of gpukernels.reference against torch in float64: activations
(relu, leaky relu with slopes 0 .. 2, sigmoid at |x| = 800, tanh, heaviside, the fused
add + ReLU and autograd's add), linear (any leading shape, no bias, one feature, no
rows), MSE (each reduction, both inputs' gradients), dropout (the mask's values, share
and seed) and casts (bf16 bits as torch rounds them, NaN, float16)."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels.dtypes import bfloat16
from gpukernels.reference import activation, cast, dropout, linear, loss
from tests.helpers import assert_close
from tests.reference.common import ATOL, RTOL, torch, torch_run

F = torch.nn.functional
SHAPES = [(7,), (3, 5), (2, 3, 4, 5), ()]


def _x(shape, seed=0, scale=3.0):
    return np.asarray(np.random.default_rng(seed).standard_normal(shape) * scale)


# ----------------------------------------------------------------------------- activation

UNARY = {  # name: (torch function, reference forward, reference backward from y)
    "relu": (F.relu, activation.relu_forward, activation.relu_backward),
    "sigmoid": (torch.sigmoid, activation.sigmoid_forward, activation.sigmoid_backward),
    "tanh": (torch.tanh, activation.tanh_forward, activation.tanh_backward),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_activations_match_torch(name, shape):
    fn, forward, backward = UNARY[name]
    x = _x(shape)
    y_ref, g, (gx_ref,) = torch_run(fn, x)
    y = forward(x)
    assert_close(y, y_ref, atol=ATOL, rtol=RTOL, name=f"{name} y")
    assert_close(backward(g, y), gx_ref, atol=ATOL, rtol=RTOL, name=f"{name} dx")


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 1.0, 2.0])
def test_leaky_relu_matches_torch(slope):
    x = _x((4, 9), seed=1)
    y_ref, g, (gx_ref,) = torch_run(lambda t: F.leaky_relu(t, slope), x)
    y = activation.leaky_relu_forward(x, slope)
    assert_close(y, y_ref, atol=ATOL, rtol=RTOL, name="y")
    assert_close(activation.leaky_relu_backward(g, y, slope), gx_ref, atol=ATOL, rtol=RTOL, name="dx")


def test_sigmoid_does_not_overflow():
    x = np.array([-800.0, -30.0, 0.0, 30.0, 800.0])
    with np.errstate(over="raise", invalid="raise"):
        y = activation.sigmoid_forward(x)
    assert_close(y, torch.sigmoid(torch.tensor(x)), atol=0, rtol=1e-15, name="sigmoid")


def test_heaviside_matches_torch():
    x = np.array([[-2.0, 0.0, 3.0], [0.0, -0.0, np.inf]])
    for values in (np.array(0.5), np.array([[1.0, 2.0, 3.0]]), np.array([[7.0], [-1.0]])):
        want = torch.heaviside(torch.tensor(x), torch.tensor(values)).numpy()
        np.testing.assert_array_equal(activation.heaviside_forward(x, values), want)


def test_add_relu_and_add_match_torch():
    a, b = _x((3, 4, 5), seed=2), _x((3, 4, 5), seed=3)
    y_ref, g, (ga_ref, gb_ref) = torch_run(lambda ta, tb: F.relu(ta + tb), a, b)
    y = activation.add_relu_forward(a, b)
    assert_close(y, y_ref, atol=ATOL, rtol=RTOL, name="add_relu y")
    dz = activation.relu_backward(g, y)  # the gradient of a and of b alike
    assert_close(dz, ga_ref, atol=ATOL, rtol=RTOL, name="da")
    assert_close(dz, gb_ref, atol=ATOL, rtol=RTOL, name="db")
    np.testing.assert_array_equal(activation.add_forward(a, b), a + b)


@pytest.mark.parametrize("op", [activation.add_forward, activation.add_relu_forward])
def test_add_refuses_other_shapes_and_dtypes(op):
    a = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"a shape \(3, 4\) differs from b shape \(4, 3\)"):
        op(a, np.zeros((4, 3)))
    with pytest.raises(TypeError, match="a and b must share one dtype, got float64 and float32"):
        op(a, np.zeros((3, 4), np.float32))


def test_add_of_bf16_rounds_once():
    a32, b32 = _x((50,), seed=4).astype(np.float32), _x((50,), seed=5).astype(np.float32)
    a, b = cast.cast(a32, bfloat16), cast.cast(b32, bfloat16)
    ta, tb = (torch.tensor(v).to(torch.bfloat16) for v in (a32, b32))
    want = (ta.float() + tb.float()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(activation.add_forward(a, b), want)


# ----------------------------------------------------------------------------- linear

@pytest.mark.parametrize("x_shape, out, bias", [((5, 3), 4, True), ((2, 3, 7), 1, False), ((4, 1), 6, True),
                                                ((0, 3), 2, True), ((2, 1, 1, 5), 3, True)])
def test_linear_matches_torch(x_shape, out, bias):
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal(x_shape), rng.standard_normal((out, x_shape[-1]))
    b = rng.standard_normal(out) if bias else None
    y_ref, g, (gx_ref, gw_ref, gb_ref) = torch_run(F.linear, x, w, b)
    assert_close(linear.linear_forward(x, w, b), y_ref, atol=ATOL, rtol=RTOL, name="y")
    gx, gw, gb = linear.linear_backward(g, x, w, needs=(True, True, bias))
    assert_close(gx, gx_ref, atol=ATOL, rtol=RTOL, name="dx")
    assert_close(gw, gw_ref, atol=ATOL, rtol=RTOL, name="dW")
    assert (gb is None) == (not bias)
    if bias:
        assert_close(gb, gb_ref, atol=ATOL, rtol=RTOL, name="db")


# ----------------------------------------------------------------------------- loss

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), ()], ids=str)
def test_mse_matches_torch(shape, reduction):
    a, t = _x(shape, seed=7), _x(shape, seed=8)
    loss_ref, g, (ga_ref, gt_ref) = torch_run(lambda ta, tt: F.mse_loss(ta, tt, reduction=reduction), a, t)
    value, diff = loss.mse_loss_forward(a, t, reduction)
    assert_close(value, loss_ref, atol=ATOL, rtol=RTOL, name="loss")
    ga = loss.mse_loss_backward(np.asarray(g), diff, reduction)
    assert_close(ga, ga_ref, atol=ATOL, rtol=RTOL, name="d input")
    assert_close(-ga, gt_ref, atol=ATOL, rtol=RTOL, name="d target")


# ----------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_dropout_mask_is_inverted_and_seeded(p):
    x = _x((200, 50), seed=9)
    gk.manual_seed(3)
    y, mask = dropout.dropout_forward(x, p)
    assert set(np.unique(mask)) <= {0.0, 1.0 / (1.0 - p)}
    np.testing.assert_array_equal(y, x * mask)
    assert abs((mask == 0).mean() - p) < 0.02  # 10000 draws: the share dropped is p
    np.testing.assert_array_equal(dropout.dropout_backward(x, mask), x * mask)
    gk.manual_seed(3)
    np.testing.assert_array_equal(dropout.dropout_forward(x, p)[1], mask)  # same seed, same mask
    assert dropout.dropout_forward(x.astype(np.float32), p)[1].dtype == np.float32


# ----------------------------------------------------------------------------- cast

def test_cast_to_bf16_rounds_as_torch_and_back_is_exact():
    x = np.concatenate([_x((1000,), seed=10, scale=100.0), [np.inf, -np.inf, 0.0, -0.0, 3.0e38, 1e-40]])
    x = x.astype(np.float32)
    bits = cast.cast(x, bfloat16)
    want = torch.tensor(x).to(torch.bfloat16)
    np.testing.assert_array_equal(bits, want.view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(cast.cast(bits, np.float32), want.float().numpy())
    nan = cast.cast(np.array([np.nan, -np.nan], np.float32), bfloat16)
    assert np.isnan(cast.cast(nan, np.float32)).all()


def test_cast_between_floats_is_astype():
    x = _x((9,), seed=11)
    for dtype in (np.float16, np.float32, np.float64):
        y = cast.cast(x, dtype)
        assert y.dtype == dtype and y is not x
        np.testing.assert_array_equal(y, x.astype(dtype))
