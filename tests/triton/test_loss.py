"""Triton MSE loss (gpukernels/triton/loss.py) on Triton's interpreter vs the NumPy
reference in float64: loss ('mean', 'sum', 'none') and the saved difference, then the
gradient with the same random upstream gradient; sizes around the interpreter's block
(1024) and several partial sums, odd 4-D shapes, float32 / float16, NaN/inf, dense and
strided layouts, every partial-sum slot written whatever the tile, and
``gk.functional.mse_loss`` on the interpret backend."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.reference import loss as ref
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

SHAPES = [(1,), (7,), (1023,), (1025,), (2048,), (5000,), (3, 5, 7, 11), (2, 3, 13, 17)]
TOLS = {np.float32: (1e-6, 1e-5), np.float16: (1e-3, 2e-3)}
REDUCTIONS = ["mean", "sum", "none"]


@pytest.fixture
def tri():
    gk.set_backend("interpret")
    from gpukernels.triton import loss

    return loss


def _check(tri, a, t, reduction, g=None, label=""):
    dtype = a.dtype.type
    atol, rtol = TOLS[dtype]
    loss, diff = tri.mse_loss_forward(a, t, reduction)
    loss_ref, diff_ref = ref.mse_loss_forward(a.astype(np.float64), t.astype(np.float64), reduction)
    assert loss.dtype == diff.dtype == a.dtype and diff.shape == a.shape
    assert loss.shape == (() if reduction != "none" else a.shape)
    assert_close(diff, diff_ref, atol=atol, rtol=rtol, name=f"{label} {reduction} diff")
    # float32 accumulation of n squares: relative error ~ n * eps in the worst case
    scale = a.size if reduction == "sum" else 1
    assert_close(loss, loss_ref, atol=atol * scale, rtol=rtol * 10 if reduction != "none" else rtol,
                 name=f"{label} {reduction} loss")
    if g is None:
        rng = np.random.default_rng(7)
        g = (np.asarray(rng.standard_normal()) if reduction != "none" else rng.standard_normal(a.shape)).astype(dtype)
    # the reference backward reads the saved diff: give it ours
    dx = tri.mse_loss_backward(g, diff, reduction)
    dx_ref = ref.mse_loss_backward(np.asarray(g, np.float64), diff.astype(np.float64), reduction)
    assert dx.dtype == a.dtype and dx.shape == a.shape
    assert_close(dx, dx_ref, atol=atol, rtol=rtol, name=f"{label} {reduction} grad")
    return loss, diff, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_loss_diff_and_gradient_match_the_reference(tri, reduction, shape, dtype):
    rng = np.random.default_rng(sum(shape))
    a = rng.standard_normal(shape).astype(dtype)
    t = rng.standard_normal(shape).astype(dtype)
    _check(tri, a, t, reduction, label=f"{shape} {np.dtype(dtype).name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_elementwise_results_are_bit_exact_against_the_reference_in_their_dtype(tri, dtype):
    rng = np.random.default_rng(1)
    a, t, g = (rng.standard_normal(1025).astype(dtype) for _ in range(3))
    loss, diff = tri.mse_loss_forward(a, t, "none")
    loss_ref, diff_ref = ref.mse_loss_forward(a, t, "none")
    assert np.array_equal(diff, diff_ref) and np.array_equal(loss, loss_ref)
    assert np.array_equal(tri.mse_loss_backward(g, diff, "none"), ref.mse_loss_backward(g, diff_ref, "none"))
    if dtype == np.float32:  # float16: the reference rounds 2 / n and g * 2 / n to float16 first, we do not
        g0 = np.asarray(rng.standard_normal()).astype(dtype)
        assert np.array_equal(tri.mse_loss_backward(g0, diff, "mean"), ref.mse_loss_backward(g0, diff_ref, "mean"))


def test_float16_mean_gradient_keeps_its_precision_for_large_n(tri, monkeypatch, knob):
    # 2 / n = 1e-5 is subnormal in float16 (spacing 6e-8: the reference's float16(2 / n)
    # is 0.6% off); here the scale and g * scale stay in float32, one rounding at the end
    for kind in ("fwd", "bwd"):  # 13 big programs, not 196: the interpreter pays per program
        knob(configs={tri.KERNELS[kind]: (16384, 4, 1)})
    rng = np.random.default_rng(9)
    a, t = (rng.standard_normal(200_000).astype(np.float16) for _ in range(2))
    _, diff = tri.mse_loss_forward(a, t, "mean")
    g = np.float16(1000.0)  # keeps the gradient itself in float16's normal range
    dx = tri.mse_loss_backward(g, diff, "mean")
    exact = diff.astype(np.float64) * (1000.0 * 2.0 / diff.size)
    big = np.abs(exact) >= 2**-14  # the normal float16 range: half an ulp relative
    assert_close(dx[big], exact[big], atol=0, rtol=4.9e-4, name="float16 mean grad, n = 200000")


def test_many_partials_and_a_short_reduction_block(tri, monkeypatch):
    # 5000 elements: 5 partial sums; a reduction block of 2 takes 3 steps with a tail
    monkeypatch.setattr(tri, "SUM_BLOCK", 2)
    rng = np.random.default_rng(2)
    a, t = (rng.standard_normal((5, 1000)).astype(np.float32) for _ in range(2))
    for reduction in ("mean", "sum"):
        _check(tri, a, t, reduction, label="SUM_BLOCK 2")


def test_every_partial_slot_is_written_whatever_the_tile(tri, monkeypatch, knob):
    # a 2048-element tile writes its sum and a 0 in its second 1024-element slot; a
    # NaN-filled buffer shows any slot a launch leaves stale (as an autotuner trial of
    # a smaller tile would on a GPU)
    monkeypatch.setattr(tri, "_partials", lambda xp, m: xp.full(m, np.nan, dtype=np.float32))
    knob(configs={tri.KERNELS["fwd"]: (2048, 4, 1)})
    rng = np.random.default_rng(3)
    for n in (1, 1025, 2048, 5000, 6144):
        a, t = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
        for reduction in ("mean", "sum"):
            _check(tri, a, t, reduction, label=f"BLOCK 2048 n={n}")


def test_nan_and_inf_behave_as_the_reference(tri):
    a = np.zeros(1025, np.float32)
    t = np.zeros(1025, np.float32)
    for bad, expect in ((np.nan, np.nan), (np.inf, np.inf)):
        a[1000] = bad
        for reduction in ("mean", "sum"):
            loss, _ = tri.mse_loss_forward(a, t, reduction)
            assert np.array_equal(loss, np.float32(expect), equal_nan=True)
    a[3] = np.inf
    t[3] = np.inf  # inf - inf = NaN, as NumPy
    with np.errstate(invalid="ignore"):
        loss, diff = tri.mse_loss_forward(a, t, "none")
        loss_ref, diff_ref = ref.mse_loss_forward(a, t, "none")
    assert np.array_equal(loss, loss_ref, equal_nan=True) and np.array_equal(diff, diff_ref, equal_nan=True)


def test_layouts(tri):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((2, 5, 7, 9)).astype(np.float32)
    t = rng.standard_normal((2, 5, 7, 9)).astype(np.float32)
    a_cl = np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    t_cl = np.ascontiguousarray(t.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    loss, diff, _ = _check(tri, a_cl, t_cl, "none", label="channels-last")
    assert loss.strides == diff.strides == a_cl.strides  # dense layouts are kept
    g_cl = np.ascontiguousarray(rng.standard_normal((2, 7, 9, 5)).astype(np.float32)).transpose(0, 3, 1, 2)
    assert tri.mse_loss_backward(g_cl, diff, "none").strides == a_cl.strides
    assert tri.mse_loss_backward(np.float32(1), diff, "mean").strides == a_cl.strides
    _check(tri, a_cl, t, "mean", label="channels-last vs C order")
    _check(tri, a[:, ::2, 1:], t[:, ::2, 1:], "sum", label="sliced")
    _check(tri, np.broadcast_to(a[:, :1], a.shape), t[..., ::-1], "none", label="broadcast vs reversed")


def test_int64_offsets_give_the_same_result(tri, monkeypatch):
    from gpukernels.triton import _common  # noqa: PLC0415 - the flat launcher decides INT64

    monkeypatch.setattr(_common, "needs_int64", lambda *arrays: True)
    rng = np.random.default_rng(5)
    a, t = (rng.standard_normal((3, 5, 7, 11)).astype(np.float32) for _ in range(2))
    for reduction in REDUCTIONS:
        _check(tri, a, t, reduction, label="int64")


def test_empty_inputs_give_numpys_mean_and_sum(tri):
    a = np.zeros((0, 3), np.float32)
    loss, diff = tri.mse_loss_forward(a, a, "mean")
    assert loss.shape == () and np.isnan(loss) and diff.shape == (0, 3)
    assert tri.mse_loss_forward(a, a, "sum")[0] == 0
    assert tri.mse_loss_forward(a, a, "none")[0].shape == (0, 3)
    assert tri.mse_loss_backward(np.float32(1.0), diff, "mean").shape == (0, 3)


def test_a_number_or_one_element_grad_for_mean_and_sum(tri):
    rng = np.random.default_rng(6)
    a, t = (rng.standard_normal(37).astype(np.float32) for _ in range(2))
    _, diff = tri.mse_loss_forward(a, t, "sum")
    expected = ref.mse_loss_backward(np.float32(0.5), diff, "sum")
    for g in (0.5, np.float32(0.5), np.array([0.5], np.float32), np.array([[0.5]], np.float32)):
        assert np.array_equal(tri.mse_loss_backward(g, diff, "sum"), expected)


def test_errors_name_the_op_the_argument_and_what_was_received(tri):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"mse_loss_forward: reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        tri.mse_loss_forward(x, x, "avg")
    with pytest.raises(ValueError, match=r"mse_loss_forward: input shape \(2, 3\) differs from target shape \(3, 2\)"):
        tri.mse_loss_forward(x, x.reshape(3, 2), "mean")
    with pytest.raises(TypeError, match=r"mse_loss_forward.*float64"):
        tri.mse_loss_forward(x.astype(np.float64), x.astype(np.float64), "mean")
    with pytest.raises(TypeError, match=r"mse_loss_forward: arrays must share one dtype"):
        tri.mse_loss_forward(x, x.astype(np.float16), "mean")
    with pytest.raises(TypeError, match=r"mse_loss_forward: target must be a NumPy or CuPy array, got list"):
        tri.mse_loss_forward(x, [1.0], "mean")
    with pytest.raises(ValueError, match=r"mse_loss_backward: grad must hold one value for reduction='mean', got shape \(2,\)"):
        tri.mse_loss_backward(np.zeros(2, np.float32), x, "mean")
    with pytest.raises(ValueError, match=r"mse_loss_backward: grad shape \(\) differs from diff shape \(2, 3\)"):
        tri.mse_loss_backward(np.zeros((), np.float32), x, "none")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_functional_mse_loss_runs_the_triton_kernels(tri, reduction):
    rng = np.random.default_rng(8)
    a_data, t_data = (rng.standard_normal((3, 5, 7, 11)).astype(np.float32) for _ in range(2))
    a = gk.tensor(a_data, requires_grad=True)
    t = gk.tensor(t_data, requires_grad=True)
    backend.last_dispatch.pop("loss", None)
    loss = F.mse_loss(a, t, reduction)
    assert backend.last_dispatch["loss"] == "gpukernels.triton.loss"
    g = rng.standard_normal(loss.shape).astype(np.float32)
    loss.backward(gk.tensor(g))
    loss_ref, diff_ref = ref.mse_loss_forward(a_data.astype(np.float64), t_data.astype(np.float64), reduction)
    assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5, name="F.mse_loss")
    gx_ref = ref.mse_loss_backward(g.astype(np.float64), diff_ref, reduction)
    assert_close(a.grad, gx_ref, atol=1e-6, rtol=1e-5, name="input grad")
    assert_close(t.grad, -gx_ref, atol=1e-6, rtol=1e-5, name="target grad")
