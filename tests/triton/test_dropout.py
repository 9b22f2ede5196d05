"""Triton dropout (gpukernels/triton/dropout.py) on Triton's interpreter vs the NumPy
reference: with the same seed it drops the same elements (the keep mask is drawn from
the library's host generator in both), gives bit-identical y, mask and gradient, and
leaves the generator in the same state; odd sizes around the interpreter's block
(1024), 4-D shapes, dense and strided layouts, float32 / float16, NaN/inf, and
``gk.functional.dropout`` on the interpret backend."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.reference import dropout as ref
from gpukernels.triton._common import to_float32

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

SHAPES = [(1,), (7,), (1023,), (1025,), (2048,), (3, 5, 7, 11), (1, 17, 3, 9)]


@pytest.fixture
def tri():
    gk.set_backend("interpret")
    from gpukernels.triton import dropout

    return dropout


def _both(fn_tri, fn_ref, seed=11):
    """Run both with the same seed; also return the generator's next draw after each."""
    gk.manual_seed(seed)
    ours = fn_tri()
    after_ours = gk.random.generator().random(3)
    gk.manual_seed(seed)
    theirs = fn_ref()
    after_ref = gk.random.generator().random(3)
    return ours, theirs, after_ours, after_ref


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_same_seed_same_mask_same_output_and_gradient(tri, shape, dtype, p):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    (y, mask), (y_ref, mask_ref), after, after_ref = _both(lambda: tri.dropout_forward(x, p),
                                                           lambda: ref.dropout_forward(x, p))
    assert y.dtype == mask.dtype == x.dtype and y.shape == mask.shape == x.shape
    assert np.array_equal(mask, mask_ref)  # 0 or 1/(1-p) rounded to the dtype, same places
    assert np.array_equal(y, y_ref)
    assert np.array_equal(after, after_ref)  # the generator consumed the same draws
    assert np.array_equal(tri.dropout_backward(g, mask), ref.dropout_backward(g, mask_ref))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint16], ids=["fp32", "fp16", "bf16"])
def test_dropout_mask_matches_the_reference(tri, dtype):
    shape = (3, 5, 7, 11)
    mask, mask_ref, after, after_ref = _both(lambda: tri.dropout_mask(shape, 0.3, np.dtype(dtype), np),
                                             lambda: ref.dropout_mask(shape, 0.3, np.dtype(np.float32), np))
    assert mask.shape == shape and mask.dtype == dtype
    assert np.array_equal(after, after_ref)
    if dtype == np.uint16:  # bf16 bit patterns: 0 or bf16(1 / 0.7) = 1.4296875
        values = to_float32(np, mask)
        assert set(np.unique(values).tolist()) <= {0.0, 1.4296875}
        assert np.array_equal(values > 0, mask_ref > 0)
    else:
        assert np.array_equal(mask, mask_ref.astype(dtype))


def test_layouts_drop_the_same_logical_elements(tri):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 7, 9)).astype(np.float32)
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # channels-last memory
    for view in (x_cl, x[:, ::2, 1:], x[..., ::-1], np.broadcast_to(x[:, :1], x.shape), x.transpose(3, 1, 0, 2)):
        (y, mask), (y_ref, mask_ref), _, _ = _both(lambda v=view: tri.dropout_forward(v, 0.4),
                                                   lambda v=view: ref.dropout_forward(np.array(v), 0.4))
        assert np.array_equal(y, y_ref) and np.array_equal(mask, mask_ref)
    (y, mask), _, _, _ = _both(lambda: tri.dropout_forward(x_cl, 0.4), lambda: None)
    assert y.strides == mask.strides == x_cl.strides  # dense layouts are kept
    g = rng.standard_normal(x.shape).astype(np.float32)  # C order against a channels-last mask
    assert np.array_equal(tri.dropout_backward(g, mask), g * mask)


def test_nan_and_inf_behave_as_the_reference(tri):
    x = np.full(1025, np.inf, np.float32)
    x[::3] = np.nan
    x[1::5] = -np.inf
    with np.errstate(invalid="ignore"):  # inf * 0, in the interpreter and in the reference
        (y, mask), (y_ref, _), _, _ = _both(lambda: tri.dropout_forward(x, 0.5), lambda: ref.dropout_forward(x, 0.5))
    assert np.array_equal(y, y_ref, equal_nan=True)  # a dropped inf is inf * 0 = NaN, as NumPy
    assert np.isnan(y[mask == 0]).all()


def test_int64_offsets_give_the_same_result(tri, monkeypatch):
    from gpukernels.triton import _common  # noqa: PLC0415 - the flat launcher decides INT64

    monkeypatch.setattr(_common, "needs_int64", lambda *arrays: True)
    x = np.random.default_rng(4).standard_normal((3, 5, 7, 11)).astype(np.float32)
    (y, mask), (y_ref, mask_ref), _, _ = _both(lambda: tri.dropout_forward(x, 0.3), lambda: ref.dropout_forward(x, 0.3))
    assert np.array_equal(y, y_ref) and np.array_equal(mask, mask_ref)
    assert np.array_equal(tri.dropout_backward(x, mask), ref.dropout_backward(x, mask_ref))


def test_errors_name_the_op_the_argument_and_what_was_received(tri):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"dropout_forward: p must be a probability in \[0, 1\) .* got 1.0"):
        tri.dropout_forward(x, 1.0)
    with pytest.raises(ValueError, match=r"dropout_forward: p .* got -0.1"):
        tri.dropout_forward(x, -0.1)
    with pytest.raises(TypeError, match=r"dropout_forward.*float64"):
        tri.dropout_forward(np.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"dropout_backward: grad_y shape \(3, 2\) differs from mask shape \(2, 3\)"):
        tri.dropout_backward(np.zeros((3, 2), np.float32), x)
    with pytest.raises(TypeError, match=r"dropout_backward: arrays must share one dtype"):
        tri.dropout_backward(x.astype(np.float16), x)
    with pytest.raises(TypeError, match=r"dropout_mask.*float64"):
        tri.dropout_mask((2, 3), 0.5, np.dtype(np.float64), np)


def test_empty_and_zero_dim(tri):
    y, mask = tri.dropout_forward(np.zeros((0, 4), np.float32), 0.5)
    assert y.shape == mask.shape == (0, 4)
    (y, mask), (y_ref, mask_ref), _, _ = _both(lambda: tri.dropout_forward(np.array(2.0, np.float32), 0.5),
                                               lambda: ref.dropout_forward(np.array(2.0, np.float32), 0.5))
    assert y.shape == () and y == y_ref and mask == mask_ref


def test_functional_dropout_runs_the_triton_kernels_with_the_numpy_backends_masks(tri):
    data = np.random.default_rng(5).standard_normal((4, 3, 5, 7)).astype(np.float32)
    g = np.random.default_rng(6).standard_normal(data.shape).astype(np.float32)

    def run():
        gk.manual_seed(21)
        x = gk.tensor(data, requires_grad=True)
        y = F.dropout(x, 0.25)
        y.backward(gk.tensor(g))
        return y.numpy(), x.grad.numpy()

    backend.last_dispatch.pop("dropout", None)
    y, gx = run()
    assert backend.last_dispatch["dropout"] == "gpukernels.triton.dropout"
    gk.set_backend("numpy")
    y_np, gx_np = run()
    assert backend.last_dispatch["dropout"] == "gpukernels.cpu.dropout"
    assert np.array_equal(y, y_np) and np.array_equal(gx, gx_np)
