"""Triton ``add_relu_forward`` (relu(a + b) in one pass, gpukernels/triton/activation.py)
on Triton's interpreter vs the NumPy reference: sizes around the interpreter's block
(1024: tail only, full block + tail, full blocks only), odd 4-D shapes, float32 and
float16, NaN/inf, layouts, the INT64 path, errors, and through ``F.add_relu`` /
``nn.Residual(activation="relu")``, whose backward is the ReLU backward kernel."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend, nn
from gpukernels import functional as F
from gpukernels.reference import activation as ref
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

SHAPES = [(1,), (7,), (1023,), (1025,), (2048,), (3, 5, 7, 11), (2, 3, 13, 17), (1, 1, 1, 1)]
# float16: the sum in float32, one rounding at the store (half an ulp: 4.9e-4 relative)
TOLS = {np.float32: (1e-6, 1e-5), np.float16: (1e-3, 1e-3)}


@pytest.fixture
def tri():
    gk.set_backend("interpret")
    from gpukernels.triton import activation

    return activation


def _inputs(shape, dtype, seed=0):
    r = np.random.default_rng(seed + sum(shape))
    return ((r.standard_normal(shape) * 3).astype(dtype), (r.standard_normal(shape) * 3).astype(dtype))


def _check(tri, a, b, label=""):
    atol, rtol = TOLS[a.dtype.type]
    y = tri.add_relu_forward(a, b)
    assert y.dtype == a.dtype and y.shape == a.shape
    y_ref = ref.add_relu_forward(a.astype(np.float64), b.astype(np.float64))
    assert_close(y, y_ref, atol=atol, rtol=rtol, name=f"{label} add_relu forward")
    return y


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_the_reference(tri, shape, dtype):
    a, b = _inputs(shape, dtype)
    y = _check(tri, a, b, label=f"{shape} {np.dtype(dtype).name}")
    # its backward is ReLU's, on the saved output
    g = np.random.default_rng(7).standard_normal(shape).astype(dtype)
    assert np.array_equal(tri.relu_backward(g, y), ref.relu_backward(g, y))


def test_float32_is_bit_exact_against_the_reference(tri):
    # one float32 add then a comparison with 0: exactly NumPy's float32 arithmetic
    a, b = _inputs((1025,), np.float32, seed=1)
    assert np.array_equal(tri.add_relu_forward(a, b), ref.add_relu_forward(a, b))


def test_nan_and_inf_behave_as_the_reference(tri):
    a = np.array([np.nan, np.inf, -np.inf, np.inf, 0.0, -0.0, 1e30, -1e30, 1.0], np.float32)
    b = np.array([1.0, 1.0, 1.0, -np.inf, -0.0, -0.0, 1e30, 1e30, np.nan], np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = ref.add_relu_forward(a, b)
        y = tri.add_relu_forward(a, b)
    assert_close(y, expected, atol=0, rtol=0, name="special values")


def test_layouts_kept_or_copied(tri):
    r = np.random.default_rng(3)
    a = r.standard_normal((2, 5, 7, 9)).astype(np.float32)
    b = r.standard_normal((2, 5, 7, 9)).astype(np.float32)
    cl = lambda x: np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # noqa: E731
    y = tri.add_relu_forward(cl(a), cl(b))
    assert y.strides == cl(a).strides  # a shared dense layout is kept
    assert np.array_equal(y, ref.add_relu_forward(a, b))
    # mixed layouts, gaps, reversed strides, broadcast views: copied, never misread
    for va, vb in ((cl(a), b), (a[:, ::2, 1:], b[:, ::2, :-1]), (a[..., ::-1], b),
                   (np.broadcast_to(a[:, :1], a.shape), b), (a.transpose(3, 1, 0, 2), b.transpose(3, 1, 0, 2))):
        _check(tri, va, vb, label="strided")


def test_int64_offsets_give_the_same_result(tri, monkeypatch):
    a, b = _inputs((3, 5, 7, 11), np.float32, seed=4)
    from gpukernels.triton import _common  # noqa: PLC0415 - the flat launcher decides INT64

    monkeypatch.setattr(_common, "needs_int64", lambda *arrays: True)
    assert np.array_equal(tri.add_relu_forward(a, b), ref.add_relu_forward(a, b))


def test_bf16_as_uint16(tri):
    from gpukernels.triton._common import from_float32, to_float32  # noqa: PLC0415

    a32, b32 = _inputs((1025,), np.float32, seed=5)
    a, b = from_float32(np, a32, np.uint16), from_float32(np, b32, np.uint16)
    y = tri.add_relu_forward(a, b)
    assert y.dtype == np.uint16
    expected = np.maximum(to_float32(np, a) + to_float32(np, b), 0)
    # one rounding to bf16 (8 significant bits; the interpreter's float32 -> bf16 cast
    # may truncate where a GPU rounds to nearest): within one bf16 ulp, 2**-7 relative
    assert_close(to_float32(np, y), expected, atol=0, rtol=2.0**-7, name="bf16 add_relu")
    assert np.array_equal(to_float32(np, y) == 0, expected == 0)


def test_errors_and_empty_arrays(tri):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"add_relu_forward.*float64"):
        tri.add_relu_forward(np.zeros(3), np.zeros(3))
    with pytest.raises(TypeError, match=r"add_relu_forward: b must be a NumPy or CuPy array, got list"):
        tri.add_relu_forward(x, [1.0])
    with pytest.raises(ValueError, match=r"add_relu_forward: a shape \(2, 3\) differs from b shape \(3, 2\)"):
        tri.add_relu_forward(x, np.zeros((3, 2), np.float32))
    with pytest.raises(TypeError, match=r"add_relu_forward: arrays must share one dtype"):
        tri.add_relu_forward(x, x.astype(np.float16))
    assert tri.add_relu_forward(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_functional_add_relu_runs_the_triton_kernels(tri):
    r = np.random.default_rng(10)
    da, db = (r.standard_normal((3, 5, 7, 11)) * 3).astype(np.float32), (r.standard_normal((3, 5, 7, 11)) * 3).astype(np.float32)
    g = r.standard_normal(da.shape).astype(np.float32)
    backend.last_dispatch.pop("activation", None)
    a, b = gk.tensor(da, requires_grad=True), gk.tensor(db, requires_grad=True)
    y = F.add_relu(a, b)
    assert backend.last_dispatch["activation"] == "gpukernels.triton.activation"
    backend.last_dispatch.pop("activation", None)
    y.backward(gk.tensor(g))
    assert backend.last_dispatch["activation"] == "gpukernels.triton.activation"
    assert np.array_equal(y.numpy(), ref.add_relu_forward(da, db))
    expected = ref.relu_backward(g, y.numpy())
    assert np.array_equal(a.grad.numpy(), expected) and np.array_equal(b.grad.numpy(), expected)


def test_residual_block_with_relu_runs_the_triton_kernel(tri):
    gk.manual_seed(0)
    block = nn.Residual(nn.Linear(6, 6), activation="relu")
    x = np.random.default_rng(11).standard_normal((4, 6)).astype(np.float32)
    backend.last_dispatch.pop("activation", None)
    y = block(gk.tensor(x))
    assert backend.last_dispatch["activation"] == "gpukernels.triton.activation"
    gk.set_backend("numpy")
    y_ref = block(gk.tensor(x))
    assert_close(y, y_ref, atol=1e-5, rtol=1e-4, name="Residual(activation='relu')")


@pytest.mark.parametrize("shape", [(1,), (1025,), (3, 5, 7, 11)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_add_forward_is_the_plain_sum(tri, shape, dtype):
    a, b = _inputs(shape, dtype, seed=6)
    a.flat[0], b.flat[0] = -2.0, 0.5  # a negative sum, which a ReLU would zero
    atol, rtol = TOLS[dtype]
    y = tri.add_forward(a, b)
    assert y.dtype == dtype and y.shape == a.shape
    assert_close(y, ref.add_forward(a, b), atol=atol, rtol=rtol, name=f"add {shape}")
    assert (y < 0).any()  # no ReLU


def test_add_forward_bf16_and_gradient_sums_take_it(tri):
    from gpukernels.dtypes import from_float32, to_float32  # noqa: PLC0415
    from gpukernels.kernels import add_arrays  # noqa: PLC0415

    a32, b32 = _inputs((2, 3, 5, 7), np.float32, seed=7)
    a, b = from_float32(np, a32, np.uint16), from_float32(np, b32, np.uint16)
    y = add_arrays(a, b)
    assert backend.last_dispatch["activation"] == "gpukernels.triton.activation"
    assert y.dtype == np.uint16
    assert_close(to_float32(np, y), to_float32(np, ref.add_forward(a, b)), atol=0, rtol=2.0**-7, name="bf16 add")
