"""Triton batch norm (gpukernels/triton/batchnorm.py) on Triton's interpreter vs the NumPy
reference in float64: training and eval forward (y, the saved statistics, the running
statistics moved in place), then dx, dgamma and dbeta with the same random upstream
gradient; NCHW and channels-last, (N, C) inputs, 1 / 3 / 17 channels and 2 / 7 / 1023 /
1025 values per channel, float32 and float16, a mean of 1000 in float32, several
splits (merged in the apply kernels or by the finalize kernels, empty ones too), small
forced tiles, int64 offsets, broadcast / reversed / cropped views, and dispatch through
gk.functional."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.reference import batchnorm as ref
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

#: (atol, rtol) against the float64 reference, relative to each output's largest value.
TOLS = {np.float32: (2e-6, 2e-5), np.float16: (4e-3, 4e-3)}


@pytest.fixture
def tri():
    gk.set_backend("interpret")
    from gpukernels.triton import batchnorm

    return batchnorm


def _f64(a):
    return None if a is None else np.array(a, dtype=np.float64)


def _channels_last(a):
    """Same values, memory ordered (N, H, W, C)."""
    out = np.ascontiguousarray(np.moveaxis(a, 1, -1))
    return np.moveaxis(out, -1, 1)


def _problem(shape, dtype=np.float32, seed=0, affine=True, running=True, offset=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    w = (1 + 0.5 * rng.standard_normal(c)).astype(np.float32) if affine else None
    b = rng.standard_normal(c).astype(np.float32) if affine else None
    rm = rng.standard_normal(c).astype(np.float32) if running else None
    rv = (0.5 + rng.random(c)).astype(np.float32) if running else None
    g = rng.standard_normal(shape).astype(dtype)
    return x, w, b, rm, rv, g


def _close(actual, expected, dtype, name, tol=None):
    atol, rtol = tol or TOLS[dtype]
    scale = float(np.abs(expected).max()) if np.size(expected) else 0.0
    assert_close(actual, expected, atol=atol * max(scale, 1.0), rtol=rtol, name=name)


def _check(tri, x, w, b, rm, rv, g, training, dtype, needs=(True, True, True), name="", tol=None):
    """Ours (in ``dtype``, float32 parameters) vs the float64 reference on the same values."""
    rm_ref, rv_ref = _f64(rm), _f64(rv)
    y_ref, mean_ref, inv_ref = ref.batch_norm_forward(_f64(x), rm_ref, rv_ref, _f64(w), _f64(b), training, 0.1, 1e-5)
    rm_ours = None if rm is None else rm.copy()
    rv_ours = None if rv is None else rv.copy()
    y, mean, inv = tri.batch_norm_forward(x, rm_ours, rv_ours, w, b, training, 0.1, 1e-5)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert mean.dtype == np.float32 and inv.dtype == np.float32
    _close(y, y_ref, dtype, f"{name} y", tol)
    _close(mean, mean_ref, np.float32, f"{name} mean", tol)
    _close(inv, inv_ref, np.float32, f"{name} inv_std", tol)
    if rm is not None:
        _close(rm_ours, rm_ref, np.float32, f"{name} running_mean", tol)
        _close(rv_ours, rv_ref, np.float32, f"{name} running_var", tol)
    dx_ref, dg_ref, db_ref = ref.batch_norm_backward(_f64(g), _f64(x), mean_ref, inv_ref, _f64(w), training, needs)
    dx, dg, db = tri.batch_norm_backward(g, x, mean, inv, w, training, needs)
    pdt = np.float32 if w is not None else dtype
    for label, ours, theirs, want, dt in (("dx", dx, dx_ref, needs[0], dtype), ("dgamma", dg, dg_ref, needs[1], pdt),
                                          ("dbeta", db, db_ref, needs[2], pdt)):
        if not want:
            assert ours is None, f"{name} {label} computed though not needed"
            continue
        assert ours.dtype == dt, f"{name} {label}: dtype {ours.dtype}, expected {np.dtype(dt)}"
        _close(ours, theirs, dtype, f"{name} {label}", tol)
    return y, dx


# (N, C, H, W): C 1 / 3 / 17; values per channel 2, 7, 1023, 1025
CASES = [(2, 1, 1, 1), (7, 1, 1, 1), (1, 3, 1, 7), (3, 17, 11, 31), (1, 3, 25, 41), (5, 17, 5, 41)]


@pytest.mark.parametrize("layout", ["nchw", "nchw-1", "channels_last"])
@pytest.mark.parametrize("shape", CASES, ids=[f"{n}x{c}x{h}x{w}" for n, c, h, w in CASES])
def test_training_forward_and_backward_match_the_reference(tri, shape, layout, monkeypatch):
    if layout == "nchw-1":  # one channel per program, as on a GPU (the interpreter takes 16)
        monkeypatch.setattr(tri, "INTERPRET_BLOCK_C", 1)
    x, w, b, rm, rv, g = _problem(shape, seed=sum(shape), offset=2.0, scale=3.0)
    if layout == "channels_last":
        x, g = _channels_last(x), _channels_last(g)
    y, dx = _check(tri, x, w, b, rm, rv, g, True, np.float32, name=f"{shape} {layout}")
    if layout == "channels_last" and shape[1] > 1:  # outputs keep x's memory order
        assert y.strides[1] == y.itemsize and dx.strides[1] == dx.itemsize


def test_relu_activation_is_the_max_of_the_plain_output(tri):
    x, w, b, rm, rv, _ = _problem((3, 17, 5, 7), seed=4)
    plain = tri.batch_norm_forward(x, rm.copy(), rv.copy(), w, b, True, 0.1, 1e-5)
    fused = tri.batch_norm_forward(x, rm.copy(), rv.copy(), w, b, True, 0.1, 1e-5, activation="relu")
    np.testing.assert_array_equal(fused[0], np.maximum(plain[0], 0))
    assert (fused[0] == 0).mean() > 0.2
    with pytest.raises(ValueError, match="got 'tanh'"):
        tri.batch_norm_forward(x, rm, rv, w, b, True, 0.1, 1e-5, activation="tanh")


def test_backward_with_y_masks_grad_by_the_relu(tri):
    """``y=`` (the forward ran ``activation="relu"``): the backward of ``g * [y > 0]``,
    as the reference's with the same y."""
    x, w, b, rm, rv, g = _problem((3, 17, 5, 7), seed=5)
    y, mean, inv = tri.batch_norm_forward(x, rm, rv, w, b, True, 0.1, 1e-5, activation="relu")
    assert 0.2 < (y == 0).mean() < 0.8
    got = tri.batch_norm_backward(g, x, mean, inv, w, True, y=y)
    want = ref.batch_norm_backward(_f64(g), _f64(x), _f64(mean), _f64(inv), _f64(w), True, y=y)
    for label, a, e in zip(("dx", "dgamma", "dbeta"), got, want):
        _close(a, e, np.float32, label)


@pytest.mark.parametrize("shape", [(7, 17), (1023, 3), (2, 1), (1025, 1)])
def test_two_dimensional_inputs(tri, shape):
    x, w, b, rm, rv, g = _problem(shape, seed=1)
    _check(tri, x, w, b, rm, rv, g, True, np.float32, name=f"{shape}")


def test_eval_mode_uses_the_running_statistics_and_leaves_them(tri):
    x, w, b, rm, rv, g = _problem((3, 17, 5, 7), seed=2)
    before = rm.copy(), rv.copy()
    _check(tri, x, w, b, rm, rv, g, False, np.float32, name="eval")
    _check(tri, _channels_last(x), w, b, rm, rv, _channels_last(g), False, np.float32, name="eval channels-last")
    assert np.array_equal(rm, before[0]) and np.array_equal(rv, before[1])


@pytest.mark.parametrize("affine, running", [(False, True), (True, False), (False, False)])
def test_without_weight_bias_or_running_statistics(tri, affine, running):
    x, w, b, rm, rv, g = _problem((4, 3, 5, 5), seed=3, affine=affine, running=running)
    _check(tri, x, w, b, rm, rv, g, True, np.float32, name=f"affine={affine} running={running}")


def test_weight_without_bias(tri):
    x, w, _, rm, rv, g = _problem((4, 3, 5, 5), seed=4)
    _check(tri, x, w, None, rm, rv, g, True, np.float32, name="no bias")


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, True, False)])
@pytest.mark.parametrize("training", [True, False])
def test_needs_flags(tri, needs, training):
    x, w, b, rm, rv, g = _problem((2, 3, 4, 5), seed=5)
    _check(tri, x, w, b, rm, rv, g, training, np.float32, needs=needs, name=f"needs={needs}")


@pytest.mark.parametrize("shape, layout", [((3, 17, 11, 31), "nchw"), ((5, 3, 5, 41), "channels_last"),
                                           ((1023, 3), "nc")])
def test_float16_storage_float32_statistics(tri, shape, layout):
    x, w, b, rm, rv, g = _problem(shape, dtype=np.float16, seed=6, offset=1.0, scale=2.0)
    if layout == "channels_last":
        x, g = _channels_last(x), _channels_last(g)
    _check(tri, x, w, b, rm, rv, g, True, np.float16, name=f"fp16 {shape} {layout}")
    _check(tri, x, w, b, rm, rv, g, False, np.float16, name=f"fp16 eval {shape} {layout}")


def test_float16_weights_with_float16_input(tri):
    x, w, b, rm, rv, g = _problem((3, 5, 4, 4), dtype=np.float16, seed=7)
    w, b, rm, rv = (a.astype(np.float16) for a in (w, b, rm, rv))
    y, mean, inv = tri.batch_norm_forward(x, rm, rv, w, b, True, 0.1, 1e-5)
    assert rm.dtype == np.float16 and y.dtype == np.float16
    _, dg, db = tri.batch_norm_backward(g, x, mean, inv, w, True)
    assert dg.dtype == np.float16 and db.dtype == np.float16


def test_a_mean_of_1000_keeps_float32_accuracy(tri, monkeypatch):
    # 8192 values per channel over 4 tiles and 3 splits: the shifted Welford lanes and the
    # Chan merges keep the variance to float32 accuracy where sum(x^2)/M - mean^2 would
    # lose it all (1000^2 / 1 = 1e6 times the rounding of float32)
    monkeypatch.setattr(tri, "SPLITS_INTERPRET", 3)
    x, w, b, rm, rv, g = _problem((8, 2, 32, 32), seed=8, offset=1000.0)
    tol = (2e-5, 1e-4)  # y's error is set by float32's rounding of x - mean near 1000
    _check(tri, x, w, b, rm, rv, g, True, np.float32, name="mean 1000", tol=tol)
    _check(tri, _channels_last(x), w, b, rm, rv, _channels_last(g), True, np.float32,
           name="mean 1000 channels-last", tol=tol)
    _, _, inv = tri.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)
    var = np.var(x.astype(np.float64), axis=(0, 2, 3))
    assert_close(1 / inv.astype(np.float64) ** 2 - 1e-5, var, atol=0, rtol=1e-5, name="variance at mean 1000")


@pytest.mark.parametrize("fuse_max", [16, 0], ids=["merged-in-apply", "finalize-kernel"])
@pytest.mark.parametrize("splits", [3, 7])
def test_several_splits_are_merged(tri, monkeypatch, splits, fuse_max, knob):
    # (2, 3, 5, 41) in 256-value tiles: NCHW 2 tiles per channel (one per image), so 7
    # splits leave 5 programs without a tile (count-0 partials); channels-last 7 tiles
    # of 64 rows x 4 channels
    monkeypatch.setattr(tri, "SPLITS_INTERPRET", splits)
    monkeypatch.setattr(tri, "FUSE_MAX_SPLITS", fuse_max)
    monkeypatch.setattr(tri, "INTERPRET_BLOCK_C", 1)
    for kernel in tri.KERNELS.values():
        knob(configs={kernel: (256, 4, 1)})
    x, w, b, rm, rv, g = _problem((2, 3, 5, 41), seed=9, offset=-3.0)
    _check(tri, x, w, b, rm, rv, g, True, np.float32, name=f"{splits} splits, fuse <= {fuse_max}")
    _check(tri, _channels_last(x), w, b, rm, rv, _channels_last(g), True, np.float32,
           name=f"{splits} splits channels-last")
    _check(tri, x, w, b, rm, rv, g, False, np.float32, needs=(True, True, True), name=f"{splits} splits eval")


def test_small_tiles_walk_rows_and_columns(tri, monkeypatch, knob):
    # several column tiles per row (n_ib > 1) in NCHW: 16 channels x 16 columns in 256-
    # value tiles, then one channel x 64 columns in 64-value tiles; channels-last 2-row
    # tiles of 17 (padded to 32) channels
    monkeypatch.setattr(tri, "SPLITS_INTERPRET", 2)
    x, w, b, rm, rv, g = _problem((2, 17, 3, 25), seed=10)
    for kernel in tri.KERNELS.values():
        knob(configs={kernel: (256, 4, 1)})
    _check(tri, x, w, b, rm, rv, g, True, np.float32, name="256-value tiles, 16 channels")
    for kernel in tri.KERNELS.values():
        knob(configs={kernel: (64, 4, 1)})
    monkeypatch.setattr(tri, "INTERPRET_BLOCK_C", 1)
    _check(tri, x, w, b, rm, rv, g, True, np.float32, name="64-value tiles")
    x, g = x[:, :, :, :4], g[:, :, :, :4]  # 24 rows: 12 tiles
    _check(tri, _channels_last(x), w, b, rm, rv, _channels_last(g), True, np.float32,
           name="64-value tiles channels-last")


def test_int64_offsets_give_the_same_result(tri, monkeypatch):
    # tensors of 2**31 elements do not fit a test; the INT64 code path runs on small ones
    monkeypatch.setattr(tri, "needs_int64", lambda *arrays: True)
    monkeypatch.setattr(tri, "SPLITS_INTERPRET", 2)
    x, w, b, rm, rv, g = _problem((3, 3, 5, 7), seed=11)
    _check(tri, x, w, b, rm, rv, g, True, np.float32, name="int64")
    _check(tri, _channels_last(x), w, b, rm, rv, _channels_last(g), False, np.float32, name="int64 cl eval")


def test_broadcast_reversed_cropped_and_mixed_layout_views(tri):
    _, w, b, rm, rv, g = _problem((4, 3, 6, 5), seed=12)
    base = np.random.default_rng(13).standard_normal((4, 3, 1, 5)).astype(np.float32)
    bcast = np.broadcast_to(base, (4, 3, 6, 5))  # stride 0 along H, read-only
    assert bcast.strides[2] == 0
    _check(tri, bcast, w, b, rm, rv, g, True, np.float32, name="stride-0 view")
    big = np.random.default_rng(14).standard_normal((4, 3, 12, 9)).astype(np.float32)
    _check(tri, big[:, :, ::2, 2:7], w, b, rm, rv, g, True, np.float32, name="cropped view (3 groups)")
    _check(tri, big[:, :, 6:, 4:][:, :, ::-1, :], w, b, rm, rv, g[:, ::-1], True, np.float32,
           name="reversed views")
    _check(tri, _channels_last(big[:, :, :6, :5]), w, b, rm, rv, g, True, np.float32,
           name="x channels-last, g NCHW")


def test_running_statistics_views_are_updated_in_place(tri):
    x, w, b, _, _, _ = _problem((4, 3, 5, 5), seed=15)
    store = np.stack([np.zeros(6, np.float32), np.ones(6, np.float32)])
    rm, rv = store[0, ::2], store[1, ::2]  # strided (C,) views
    rm_ref, rv_ref = np.zeros(3), np.ones(3)
    ref.batch_norm_forward(x.astype(np.float64), rm_ref, rv_ref, _f64(w), _f64(b), True, 0.1, 1e-5)
    tri.batch_norm_forward(x, rm, rv, w, b, True, 0.1, 1e-5)
    _close(store[0, ::2], rm_ref, np.float32, "running_mean view")
    _close(store[1, ::2], rv_ref, np.float32, "running_var view")
    assert np.all(store[0, 1::2] == 0) and np.all(store[1, 1::2] == 1)


def test_empty_batch_in_eval(tri):
    x = np.zeros((0, 3, 4, 4), np.float32)
    rm, rv = np.arange(3, dtype=np.float32), np.full(3, 3.0, np.float32)
    y, mean, inv = tri.batch_norm_forward(x, rm, rv, None, None, False, 0.1, 1.0)
    assert y.shape == x.shape and np.array_equal(mean, rm)
    assert_close(inv, np.full(3, 0.5), atol=1e-7, rtol=1e-6, name="inv_std")
    dx, dg, db = tri.batch_norm_backward(x, x, mean, inv, None, False)
    assert dx.shape == x.shape and np.all(dg == 0) and np.all(db == 0)


def test_clear_errors(tri):
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16 .as uint16. arrays, got float64"):
        tri.batch_norm_forward(x.astype(np.float64), None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match=r"batch_norm_forward: weight must have shape \(3,\).*got \(4,\)"):
        tri.batch_norm_forward(x, None, None, np.ones(4, np.float32), None, True, 0.1, 1e-5)
    with pytest.raises(TypeError, match="batch_norm_forward: bias must be float32 or x's dtype .float16., got float64"):
        tri.batch_norm_forward(x.astype(np.float16), None, None, None, np.ones(3), True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="eval mode .training=False. needs running_mean and running_var"):
        tri.batch_norm_forward(x, None, None, None, None, False, 0.1, 1e-5)
    with pytest.raises(ValueError, match="give both running_mean and running_var"):
        tri.batch_norm_forward(x, np.zeros(3, np.float32), None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match=r"shape \(N, C\) or \(N, C, ...\), got shape \(3,\)"):
        tri.batch_norm_forward(np.zeros(3, np.float32), None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="training needs at least one value per channel"):
        tri.batch_norm_forward(np.zeros((0, 3), np.float32), None, None, None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match=r"grad_y has shape \(2, 3, 5\), x has \(2, 3, 4\)"):
        tri.batch_norm_backward(np.zeros((2, 3, 5), np.float32), x, np.zeros(3), np.ones(3), None, True)
    with pytest.raises(TypeError, match="arrays must share one dtype"):
        tri.batch_norm_backward(x.astype(np.float16), x, np.zeros(3), np.ones(3), None, True)


def test_functional_batch_norm_dispatches_to_triton_under_interpret():
    gk.set_backend("interpret")
    rng = np.random.default_rng(16)
    data = (rng.standard_normal((4, 3, 5, 6)) * 2 + 1).astype(np.float32)
    up = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)

    def run():
        x = gk.tensor(data, requires_grad=True)
        w = gk.tensor(np.linspace(0.5, 1.5, 3, dtype=np.float32), requires_grad=True)
        b = gk.tensor(np.linspace(-1, 1, 3, dtype=np.float32), requires_grad=True)
        rm, rv = gk.tensor(np.zeros(3, np.float32)), gk.tensor(np.ones(3, np.float32))
        y = F.batch_norm(x, rm, rv, w, b, training=True)
        (y * gk.tensor(up)).sum().backward()
        return [y.numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy(), rm.numpy(), rv.numpy()]

    ours = run()
    assert backend.last_dispatch["batchnorm"] == "gpukernels.triton.batchnorm"
    gk.set_backend("numpy")
    theirs = run()
    assert backend.last_dispatch["batchnorm"] == "gpukernels.cpu.batchnorm"
    for name, a, e in zip(["y", "x.grad", "w.grad", "b.grad", "running_mean", "running_var"], ours, theirs):
        assert_close(a, e, atol=1e-4, rtol=1e-4, name=name)


def test_a_read_only_contiguous_input_is_accepted(tri):
    # np.broadcast_to(x, x.shape) is C-contiguous but read-only: kernel_view must copy it
    from gpukernels.reference import batchnorm as ref

    x = np.random.default_rng(5).standard_normal((4, 3, 5, 5)).astype(np.float32)
    y, _, _ = tri.batch_norm_forward(np.broadcast_to(x, x.shape), None, None, None, None, True, 0.1, 1e-5)
    y_ref, _, _ = ref.batch_norm_forward(x.astype(np.float64), None, None, None, None, True, 0.1, 1e-5)
    assert_close(y, y_ref, atol=1e-5, rtol=1e-4, name="read-only input")
