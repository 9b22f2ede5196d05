"""Triton activations (gpukernels/triton/activation.py) on Triton's interpreter vs the
NumPy reference: forward, then backward from the saved output with the same random
upstream gradient, on sizes around the interpreter's block (1024: tail only, full
block + tail, full blocks only), odd 4-D shapes, float32 and float16, NaN/inf, dense
and non-dense layouts, Heaviside broadcasting, and through ``gk.functional``."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.reference import activation as ref
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

SHAPES = [(1,), (7,), (1023,), (1025,), (2048,), (3, 5, 7, 11), (2, 3, 13, 17), (1, 1, 1, 1)]
# float16: one rounding of the float32 result (half an ulp: 4.9e-4 relative)
TOLS = {np.float32: (1e-6, 1e-5), np.float16: (1e-4, 1e-3)}
ACTS = ["relu", "leaky_relu", "sigmoid", "tanh"]


@pytest.fixture
def tri():
    gk.set_backend("interpret")
    from gpukernels.triton import activation

    return activation


def _params(name):
    return (0.1,) if name == "leaky_relu" else ()


def _check(tri, name, x, g=None, label=""):
    """Forward and backward of ``name`` on x vs the float64 reference; returns (y, dx)."""
    dtype = x.dtype.type
    atol, rtol = TOLS[dtype]
    params = _params(name)
    y = getattr(tri, f"{name}_forward")(x, *params)
    y_ref = getattr(ref, f"{name}_forward")(x.astype(np.float64), *params)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(y, y_ref, atol=atol, rtol=rtol, name=f"{label} {name} forward")
    if g is None:
        g = np.random.default_rng(7).standard_normal(x.shape).astype(dtype)
    # the reference backward reads the saved output: give it ours, as it is
    dx = getattr(tri, f"{name}_backward")(g, y, *params)
    dx_ref = getattr(ref, f"{name}_backward")(g.astype(np.float64), y.astype(np.float64), *params)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert_close(dx, dx_ref, atol=atol, rtol=rtol, name=f"{label} {name} backward")
    return y, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ACTS)
def test_forward_and_backward_match_the_reference(tri, name, shape, dtype):
    x = (np.random.default_rng(sum(shape)).standard_normal(shape) * 4).astype(dtype)
    _check(tri, name, x, label=f"{shape} {np.dtype(dtype).name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_relu_and_leaky_relu_are_bit_exact_against_the_reference_in_their_dtype(tri, dtype):
    # the slope is rounded to the dtype first, as x.dtype.type(slope) in the reference
    x = (np.random.default_rng(1).standard_normal(1025) * 3).astype(dtype)
    g = np.random.default_rng(2).standard_normal(1025).astype(dtype)
    for name, params in (("relu", ()), ("leaky_relu", (0.01,)), ("leaky_relu", (0.3,))):
        y = getattr(tri, f"{name}_forward")(x, *params)
        assert np.array_equal(y, getattr(ref, f"{name}_forward")(x, *params)), name
        dx = getattr(tri, f"{name}_backward")(g, y, *params)
        assert np.array_equal(dx, getattr(ref, f"{name}_backward")(g, y, *params)), name


@pytest.mark.parametrize("name", ACTS)
def test_nan_and_inf_behave_as_the_reference(tri, name):
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 30.0, -30.0, 1e-30, -1e-30],
                       dtype=np.float32)
    x = np.concatenate([special, np.linspace(-5, 5, 1014, dtype=np.float32)])  # 1025: a full block + tail
    g = np.concatenate([np.array([1.0, np.inf, -np.inf, np.nan, 2.0, -1.0, np.inf, 1.0, 1.0, 1.0, 1.0],
                                 dtype=np.float32), np.ones(1014, np.float32)])
    params = _params(name)
    with np.errstate(all="ignore"):
        y = getattr(tri, f"{name}_forward")(x, *params)
        y_ref = getattr(ref, f"{name}_forward")(x, *params)
        assert_close(y, y_ref, atol=1e-7, rtol=1e-6, name=f"{name} forward specials")
        dx = getattr(tri, f"{name}_backward")(g, y, *params)
        dx_ref = getattr(ref, f"{name}_backward")(g, y, *params)
    assert_close(dx, dx_ref, atol=1e-7, rtol=1e-6, name=f"{name} backward specials")


def test_tanh_is_accurate_near_zero_and_at_the_branch_point(tri):
    # |x| < 0.625 takes the series (no cancellation in 1 - 2 / (exp(2x) + 1)), beyond the exp form
    x = np.concatenate([np.geomspace(1e-30, 0.6, 500), np.linspace(0.6, 0.65, 12), np.geomspace(0.65, 20, 500)])
    x = np.concatenate([x, -x]).astype(np.float32)
    y = tri.tanh_forward(x)
    assert_close(y, np.tanh(x.astype(np.float64)), atol=0, rtol=3e-7, name="tanh")


def test_dense_layouts_are_kept_and_others_copied(tri):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 7, 9)).astype(np.float32)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # channels-last memory
    y = tri.sigmoid_forward(x_cl)
    assert y.strides == x_cl.strides  # the output keeps the dense layout
    assert_close(y, ref.sigmoid_forward(x.astype(np.float64)), atol=1e-6, rtol=1e-5, name="channels-last")
    # backward with g in C order and y channels-last: both copied to C order, still right
    g = rng.standard_normal(x.shape).astype(np.float32)
    dx = tri.sigmoid_backward(g, y)
    assert_close(dx, ref.sigmoid_backward(g.astype(np.float64), y.astype(np.float64)), atol=1e-6, rtol=1e-5)
    # gaps (a slice), reversed strides, and a stride-0 broadcast view: never misread
    for view in (x[:, ::2, 1:], x[..., ::-1], np.broadcast_to(x[:, :1], x.shape), x.transpose(3, 1, 0, 2)):
        _check(tri, "tanh", view, label="strided view")


def test_int64_offsets_give_the_same_result(tri, monkeypatch):
    # tensors of 2**31 elements do not fit a test; the INT64 code path runs on small ones
    x = np.random.default_rng(4).standard_normal((3, 5, 7, 11)).astype(np.float32)
    from gpukernels.triton import _common  # noqa: PLC0415 - the flat launcher decides INT64

    monkeypatch.setattr(_common, "needs_int64", lambda *arrays: True)
    for name in ACTS:
        _check(tri, name, x, label="int64")
    v = np.random.default_rng(5).standard_normal((5, 1, 11)).astype(np.float32)
    x[0, 0, 0, :4] = 0
    assert np.array_equal(tri.heaviside_forward(x, v), ref.heaviside_forward(x, v))


# ----------------------------------------------------------------------------- heaviside


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_heaviside_with_a_number_matches_the_reference(tri, dtype):
    x = np.random.default_rng(6).integers(-2, 3, size=(3, 5, 7, 11)).astype(dtype)  # many exact zeros
    x.flat[:3] = [np.nan, np.inf, -np.inf]
    for values in (0.0, 0.5, 0.3, -2.5, np.nan, np.inf, np.float64(0.7), np.array(0.25), True):
        y = tri.heaviside_forward(x, values)
        expected = ref.heaviside_forward(x, values)
        assert y.dtype == x.dtype and y.shape == x.shape
        assert np.array_equal(y, expected, equal_nan=True), values  # NaN in x gives values


def test_heaviside_broadcasts_array_values_as_numpy(tri):
    rng = np.random.default_rng(8)
    x = rng.integers(-1, 2, size=(2, 3, 5, 7)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    cases = [
        rng.standard_normal((3, 1, 1)),            # per channel (float64: cast to x's dtype)
        rng.standard_normal((2, 3, 5, 7)).astype(np.float32),
        rng.standard_normal((7,)).astype(np.float16),
        rng.standard_normal((4, 1, 1, 1, 1)).astype(np.float32),  # the result takes the broadcast shape
        rng.standard_normal((2, 3, 5, 7)).astype(np.float32)[..., ::-1],
        np.arange(7) - 3,                            # integers, as the reference casts them
    ]
    for values in cases:
        y = tri.heaviside_forward(x, values)
        expected = ref.heaviside_forward(x, values)
        assert y.shape == expected.shape and y.dtype == np.float32
        assert np.array_equal(y, expected, equal_nan=True), values.shape
    # x broadcast against a larger values, and a channels-last x
    xs = rng.integers(-1, 2, size=(5,)).astype(np.float32)
    vs = rng.standard_normal((3, 1)).astype(np.float32)
    assert np.array_equal(tri.heaviside_forward(xs, vs), ref.heaviside_forward(xs, vs))
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    v = rng.standard_normal((3, 5, 1)).astype(np.float32)
    assert np.array_equal(tri.heaviside_forward(x_cl, v), ref.heaviside_forward(x, v), equal_nan=True)


def test_heaviside_with_more_than_4_strided_axes_reads_copies(tri):
    rng = np.random.default_rng(9)
    x = rng.integers(-1, 2, size=(2, 3, 2, 3, 2, 3)).astype(np.float32)
    v = rng.standard_normal((2, 1, 2, 1, 2, 1)).astype(np.float32)  # 6 axes that do not merge
    assert np.array_equal(tri.heaviside_forward(x, v), ref.heaviside_forward(x, v))
    assert np.array_equal(tri.heaviside_forward(x[:, :, :, ::2], v), ref.heaviside_forward(x[:, :, :, ::2], v))


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_op_the_argument_and_what_was_received(tri):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"relu_forward.*float64"):
        tri.relu_forward(np.zeros(3))
    with pytest.raises(TypeError, match=r"sigmoid_forward: x must be a NumPy or CuPy array, got list"):
        tri.sigmoid_forward([1.0])
    with pytest.raises(ValueError, match=r"tanh_backward: grad_y shape \(3, 2\) differs from y shape \(2, 3\)"):
        tri.tanh_backward(np.zeros((3, 2), np.float32), x)
    with pytest.raises(TypeError, match=r"relu_backward: arrays must share one dtype"):
        tri.relu_backward(x.astype(np.float16), x)
    with pytest.raises(ValueError, match=r"leaky_relu_forward: negative_slope must be a real number >= 0, got -0.1"):
        tri.leaky_relu_forward(x, -0.1)
    with pytest.raises(ValueError, match=r"leaky_relu_backward: negative_slope .* got 'a'"):
        tri.leaky_relu_backward(x, x, "a")
    with pytest.raises(ValueError, match=r"heaviside_forward: values shape \(4,\) does not broadcast with x shape \(2, 3\)"):
        tri.heaviside_forward(x, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match=r"heaviside_forward: values must be a real number or a real array"):
        tri.heaviside_forward(x, "0.5")


def test_empty_arrays(tri):
    x = np.zeros((0, 3), np.float32)
    for name in ACTS:
        y = getattr(tri, f"{name}_forward")(x, *_params(name))
        assert y.shape == (0, 3)
        assert getattr(tri, f"{name}_backward")(x, y, *_params(name)).shape == (0, 3)
    assert tri.heaviside_forward(x, np.zeros(3, np.float32)).shape == (0, 3)


# ----------------------------------------------------------------------------- through gk.functional


def test_functional_ops_run_the_triton_kernels(tri):
    rng = np.random.default_rng(10)
    data = (rng.standard_normal((3, 5, 7, 11)) * 3).astype(np.float32)
    g = rng.standard_normal(data.shape).astype(np.float32)
    for name, fn in (("relu", F.relu), ("leaky_relu", lambda t: F.leaky_relu(t, 0.2)),
                     ("sigmoid", F.sigmoid), ("tanh", F.tanh)):
        params = (0.2,) if name == "leaky_relu" else ()
        backend.last_dispatch.pop("activation", None)
        x = gk.tensor(data, requires_grad=True)
        y = fn(x)
        assert backend.last_dispatch["activation"] == "gpukernels.triton.activation"
        y.backward(gk.tensor(g))
        y_ref = getattr(ref, f"{name}_forward")(data.astype(np.float64), *params)
        assert_close(y, y_ref, atol=1e-6, rtol=1e-5, name=f"F.{name}")
        gx_ref = getattr(ref, f"{name}_backward")(g.astype(np.float64), y.numpy().astype(np.float64), *params)
        assert_close(x.grad, gx_ref, atol=1e-6, rtol=1e-5, name=f"F.{name} grad")
    backend.last_dispatch.pop("activation", None)
    h = F.heaviside(gk.tensor(np.array([-1.0, 0.0, 2.0], np.float32)), 0.5)
    assert backend.last_dispatch["activation"] == "gpukernels.triton.activation"
    assert np.array_equal(h.numpy(), np.array([0.0, 0.5, 1.0], np.float32))
