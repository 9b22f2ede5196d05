"""The block kernels of ``gpukernels.cpu.activation`` (leaky ReLU, sigmoid, tanh) against
the reference: exact where the formula is the reference's (leaky ReLU, tanh and the
backwards: the same products in the same order), to an ulp or two for sigmoid; NaN,
+-inf, +-0 and denormals included; every slope branch; several blocks; on the calling
thread and on two threads (the ``cpu_threads`` knob); no floating-point warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpukernels.cpu import activation as cpu_act
from gpukernels.reference import activation as ref_act
from tests.helpers import assert_close

DTYPES = [np.float32, np.float64]
DTYPE_IDS = ["float32", "float64"]
SHAPES = [(7,), (3, 5, 4, 6), (), (0,), (2, 0, 3), (200_003,)]  # the last: several blocks
SLOPES = [0.01, 0.0, 0.2, 1.0, 1.5, -0.3]  # -0.3: a kernel-level call (the op refuses it)


@pytest.fixture(params=["serial", "forced"])
def threads(request, knob):
    knob(cpu_threads=request.param)
    return request.param


def _data(shape, dtype, seed=0, special=True):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    if special and x.size >= 14:
        tiny = np.finfo(dtype).smallest_subnormal
        flat = x.reshape(-1)
        flat[:14] = [np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny, 1e-30, -1e-30,
                     100.0, -100.0, 1000.0, -1000.0, -np.nan]
    return x


@pytest.fixture(autouse=True)
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("slope", SLOPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_leaky_relu_is_the_reference(shape, dtype, slope, threads):
    x, g = _data(shape, dtype, 1), _data(shape, dtype, 2)
    with np.errstate(all="ignore"):  # the reference's own 0 * inf
        y_ref = ref_act.leaky_relu_forward(x, slope)
        dx_ref = ref_act.leaky_relu_backward(g, y_ref, slope)
    y = cpu_act.leaky_relu_forward(x, slope)
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    np.testing.assert_array_equal(y, y_ref)
    dx = cpu_act.leaky_relu_backward(g, y_ref, slope)
    assert dx.dtype == dx_ref.dtype
    np.testing.assert_array_equal(dx, dx_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_sigmoid_and_tanh(shape, dtype, threads):
    x, g = _data(shape, dtype, 3), _data(shape, dtype, 4)
    tol = {np.float32: (1e-7, 1e-6), np.float64: (1e-15, 1e-14)}[dtype]
    for name in ("sigmoid", "tanh"):
        fwd, bwd = getattr(cpu_act, f"{name}_forward"), getattr(cpu_act, f"{name}_backward")
        with np.errstate(all="ignore"):
            y_ref = getattr(ref_act, f"{name}_forward")(x)
            dx_ref = getattr(ref_act, f"{name}_backward")(g, y_ref)
        y = fwd(x)
        assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
        if name == "tanh":
            np.testing.assert_array_equal(y, y_ref)
        else:  # 1 / (1 + exp(-x)) for x < 0 where the reference has e / (1 + e)
            assert_close(y, y_ref, atol=tol[0], rtol=tol[1], name=f"{name} y")
            assert ((y >= 0) & (y <= 1)).all() | np.isnan(x).any()
        # the backwards are the reference's products in the reference's order
        np.testing.assert_array_equal(bwd(g, y_ref), dx_ref)


def test_sigmoid_tails_and_nan():
    x = np.array([-200.0, -89.0, -88.0, -20.0, 0.0, 20.0, 89.0, np.inf, -np.inf, np.nan], np.float32)
    y = cpu_act.sigmoid_forward(x)
    with np.errstate(all="ignore"):
        y_ref = ref_act.sigmoid_forward(x)
    assert_close(y, y_ref, atol=1e-38, rtol=1e-6, name="y")  # relative in the far left tail too
    assert y[0] == 0 and y[-3] == 1 and y[-2] == 0 and np.isnan(y[-1])


@pytest.mark.parametrize("name", ["leaky_relu", "sigmoid", "tanh"])
def test_other_arrays_take_the_reference(name):
    """Strided views, mixed dtypes, float16, ints and a non-finite slope: the reference."""
    params = (0.1,) if name == "leaky_relu" else ()
    fwd, bwd = getattr(cpu_act, f"{name}_forward"), getattr(cpu_act, f"{name}_backward")
    rfwd, rbwd = getattr(ref_act, f"{name}_forward"), getattr(ref_act, f"{name}_backward")
    x = _data((5, 8), np.float64, 5, special=False)
    for v in (x[:, ::2], x.T, x.astype(np.float16)):
        np.testing.assert_array_equal(fwd(v, *params), rfwd(v, *params))
        np.testing.assert_array_equal(bwd(v, v, *params), rbwd(v, v, *params))
    g32 = x.astype(np.float32)
    np.testing.assert_array_equal(bwd(g32, x, *params), rbwd(g32, x, *params))
    if name == "leaky_relu":
        ints = np.arange(-3, 4)
        np.testing.assert_array_equal(fwd(ints, 2), rfwd(ints, 2))
        with np.errstate(all="ignore"):
            np.testing.assert_array_equal(fwd(x, np.nan), rfwd(x, np.nan))
            np.testing.assert_array_equal(bwd(x, x, np.inf), rbwd(x, x, np.inf))


def test_outputs_are_new_arrays():
    x = _data((1000,), np.float32, 6)
    kept = x.copy()
    for y in (cpu_act.leaky_relu_forward(x, 0.1), cpu_act.sigmoid_forward(x), cpu_act.tanh_forward(x),
              cpu_act.tanh_backward(x, x), cpu_act.sigmoid_backward(x, x),
              cpu_act.leaky_relu_backward(x, x, 0.1)):
        assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(x, kept)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_add_is_the_plain_sum(shape, dtype, threads):
    """Gradient sums: bit for bit ``a + b`` (one rounding either way), a new array."""
    a, b = _data(shape, dtype, 7), _data(shape, dtype, 8)
    with np.errstate(invalid="ignore"):  # inf + -inf in the special values
        want = a + b
        y = cpu_act.add_forward(a, b)
    np.testing.assert_array_equal(y, want)
    assert y.dtype == dtype and not np.shares_memory(y, a) and not np.shares_memory(y, b)


def test_add_of_other_arrays_is_the_reference():
    from gpukernels.dtypes import bfloat16, from_float32, to_float32

    x = _data((5, 8), np.float32, 9, special=False)
    bits = from_float32(np, x, bfloat16)
    np.testing.assert_array_equal(cpu_act.add_forward(bits, bits), ref_act.add_forward(bits, bits))
    assert cpu_act.add_forward(bits, bits).dtype == bfloat16
    np.testing.assert_array_equal(to_float32(np, cpu_act.add_forward(bits, bits)), 2 * to_float32(np, bits))
    np.testing.assert_array_equal(cpu_act.add_forward(x.T, x.T), x.T + x.T)
    with pytest.raises(ValueError, match="differs"):
        cpu_act.add_forward(x, x[:, :4])
