"""NumPy reference batch norm and ReLU (gpukernels.cpu.batchnorm / activation).

float64 against PyTorch CPU to ~1e-12 relative (forward, running statistics, all three
gradients, training and eval, with and without affine parameters and running stats),
on the calling thread and on the threaded piece driver (forced on for small odd
shapes); float32 against a float64 computation of the same inputs, including a mean
offset of 3 (the one-read sums) and of 1000 (the shifted sums), on a 131072-value
channel; the ``needs`` flags; and ReLU's threaded path against the plain expressions.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels.cpu import _jit, _parallel, activation, batchnorm
from gpukernels.reference import batchnorm as ref_batchnorm
from tests.helpers import assert_close

torch = pytest.importorskip("torch")

F = torch.nn.functional

SHAPES = [
    (9, 5, 13, 17),  # odd everything, L >= 16: BLAS dot per row
    (3, 4, 2, 3),  # L < 16: einsum rows
    (7, 3),  # (N, C)
    (6, 1, 4, 4),  # C = 1
    (5, 1),  # (N, C) with C = 1
    (2, 3, 1, 1),  # L = 1 in 4-D
    (4, 2, 5),  # 3-D (N, C, L)
]


@pytest.fixture(params=["numpy-serial", "numpy-threads", "numba-serial", "numba-threads"])
def driver(request, knob):
    """The NumPy passes or numba's compiled kernels (``cpu/_jit``; skipped where numba
    is not installed), each on the calling thread only or with the piece driver forced
    on for every size (pieces of uneven length, more pieces than some batches have
    images)."""
    code, threads = request.param.split("-")
    if code == "numba" and not _jit.enabled():
        pytest.skip(f"compiled kernels off: {_jit.why_not()}")
    knob(cpu_threads="serial" if threads == "serial" else "forced", cpu_jit="off" if code == "numpy" else None)
    return request.param


def assert_rel(actual, expected, rtol, name="", scale=0.0):
    """Relative closeness with a floor of rtol times the array's scale, or ``scale`` if
    larger (entries that cancel to ~0 are judged against the terms' magnitude)."""
    assert actual is not None, name
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(scale, float(np.abs(expected).max()) if expected.size else 0.0)
    assert_close(actual, expected, atol=rtol * scale, rtol=rtol, name=name)


def torch_bn(x, rm, rv, w, b, training, g, momentum=0.1, eps=1e-5):
    """PyTorch float64: (y, running_mean, running_var, dx, dgamma, dbeta)."""
    def t(a, grad=False):
        return None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=grad)

    tx, tw, tb = t(x, True), t(w, True), t(b, True)
    trm, trv = t(rm), t(rv)
    ty = F.batch_norm(tx, trm, trv, tw, tb, training, momentum, eps)
    ty.backward(t(g))
    grad = lambda a: None if a is None else a.grad.numpy()  # noqa: E731
    return (ty.detach().numpy(), None if trm is None else trm.numpy(), None if trv is None else trv.numpy(),
            tx.grad.numpy(), grad(tw), grad(tb))


def inputs(rng, shape, dtype=np.float64, offset=0.5, scale=2.0):
    c = shape[1]
    x = (rng.standard_normal(shape) * scale + offset).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(c).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    rm = (rng.standard_normal(c) * 0.1).astype(dtype)
    rv = (rng.random(c) + 0.5).astype(dtype)
    return x, g, w, b, rm, rv


def ours(x, rm, rv, w, b, training, g, needs=(True, True, True), momentum=0.1, eps=1e-5):
    y, mean, inv_std = batchnorm.batch_norm_forward(x, rm, rv, w, b, training, momentum, eps)
    dx, dw, db = batchnorm.batch_norm_backward(g, x, mean, inv_std, w, training, needs)
    return y, mean, inv_std, dx, dw, db


# ----------------------------------------------------------------------------- float64 vs torch


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("offset", [0.5, 40.0], ids=["offset0.5", "offset40"])
def test_float64_matches_torch(driver, shape, training, affine, offset):
    rng = np.random.default_rng(hash((shape, training, affine)) % 2**32)
    x, g, w, b, rm, rv = inputs(rng, shape, offset=offset)
    if not affine:
        w = b = None
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, inv_std, dx, dw, db = ours(x, rm, rv, w, b, training, g)
    ty, trm, trv, tdx, tdw, tdb = torch_bn(x, rm0, rv0, w, b, training, g)
    for name, a, e in [("y", y, ty), ("running_mean", rm, trm), ("running_var", rv, trv)]:
        assert_rel(a, e, 1e-12, name)
    # dx = a (g - mean(g) - xhat mean(g xhat)) cancels to ~eps for 2 values per channel
    assert_rel(dx, tdx, 1e-12, "dx", scale=np.abs(g).max() * np.abs(inv_std * (1 if w is None else w)).max())
    assert y.shape == x.shape and dx.shape == x.shape and y.dtype == dx.dtype == np.float64
    if affine:
        assert_rel(dw, tdw, 1e-12, "dgamma")
        assert_rel(db, tdb, 1e-12, "dbeta")
    else:  # without parameters the gradients still come back (the Function drops them)
        assert dw.shape == db.shape == (shape[1],)
    if training:
        x64 = x.reshape(shape[0], shape[1], -1)
        assert_rel(mean, x64.mean((0, 2)), 1e-13, "mean")
        assert_rel(inv_std, 1 / np.sqrt(x64.var((0, 2)) + 1e-5), 1e-13, "inv_std")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(9, 5, 13, 17), (3, 4, 2, 3), (7, 3), (64, 2, 32, 32)], ids=str)
@pytest.mark.parametrize("offset", [0.5, 40.0], ids=["offset0.5", "offset40-shifted"])
def test_relu_activation_is_the_max_of_the_plain_output(driver, shape, offset, dtype):
    """``activation="relu"``: bit for bit max(y, 0) of the plain forward (the one-read
    and the shifted sums, several sub-blocks, both drivers), the same statistics."""
    rng = np.random.default_rng(3)
    x, _, w, b, rm, rv = inputs(rng, shape, offset=offset)
    x, w, b, rm, rv = (a.astype(dtype) for a in (x, w, 0.1 * b, rm, rv))  # ~half of y clipped
    plain = batchnorm.batch_norm_forward(x, rm.copy(), rv.copy(), w, b, True, 0.1, 1e-5)
    fused = batchnorm.batch_norm_forward(x, rm.copy(), rv.copy(), w, b, True, 0.1, 1e-5, activation="relu")
    np.testing.assert_array_equal(fused[0], np.maximum(plain[0], 0))
    assert (fused[0] == 0).mean() > 0.2  # the mask is exercised
    for a, e in zip(fused[1:], plain[1:]):
        np.testing.assert_array_equal(a, e)
    with pytest.raises(ValueError, match="got 'tanh'"):
        batchnorm.batch_norm_forward(x, rm, rv, w, b, True, 0.1, 1e-5, activation="tanh")


@pytest.mark.parametrize("shape", [(9, 5, 13, 17), (7, 3)], ids=str)
def test_no_running_stats(driver, shape):
    rng = np.random.default_rng(1)
    x, g, w, b, _, _ = inputs(rng, shape)
    y, _, _, dx, dw, db = ours(x, None, None, w, b, True, g)
    ty, _, _, tdx, tdw, tdb = torch_bn(x, None, None, w, b, True, g)
    for name, a, e in [("y", y, ty), ("dx", dx, tdx), ("dgamma", dw, tdw), ("dbeta", db, tdb)]:
        assert_rel(a, e, 1e-12, name)


def test_running_stats_updated_in_place_float32_buffers(driver):
    """float64 activations with float32 running buffers: updated in place, dtype kept."""
    rng = np.random.default_rng(2)
    x, g, w, b, rm, rv = inputs(rng, (8, 3, 5, 5))
    rm32, rv32 = rm.astype(np.float32), rv.astype(np.float32)
    _, trm, trv, *_ = torch_bn(x, rm32.astype(np.float64), rv32.astype(np.float64), w, b, True, g,
                               momentum=0.3)
    ours(x, rm32, rv32, w, b, True, g, momentum=0.3)  # the caller's arrays hold the update
    assert rm32.dtype == rv32.dtype == np.float32
    assert_rel(rm32, trm, 1e-6, "running_mean")
    assert_rel(rv32, trv, 1e-6, "running_var")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, True, True), (False, False, False)], ids=str)
def test_needs_flags(driver, training, needs):
    rng = np.random.default_rng(3)
    x, g, w, b, rm, rv = inputs(rng, (5, 4, 3, 7))
    y, mean, inv_std = batchnorm.batch_norm_forward(x, rm.copy(), rv.copy(), w, b, training, 0.1, 1e-5)
    full = batchnorm.batch_norm_backward(g, x, mean, inv_std, w, training)
    part = batchnorm.batch_norm_backward(g, x, mean, inv_std, w, training, needs)
    for need, p, f in zip(needs, part, full):
        if need:
            assert_close(p, f, atol=0, rtol=1e-14)
        else:
            assert p is None


def test_constant_channel_is_finite(driver):
    """Zero variance: y = beta exactly where gamma scales 1/sqrt(eps) * 0, no NaN."""
    x = np.full((4, 2, 3, 3), 7.25)
    x[:, 1] = np.arange(36).reshape(4, 3, 3)
    g = np.random.default_rng(4).standard_normal(x.shape)
    w, b = np.array([2.0, 1.0]), np.array([0.5, -1.0])
    y, _, _, dx, dw, db = ours(x, None, None, w, b, True, g)
    ty, _, _, tdx, tdw, tdb = torch_bn(x, None, None, w, b, True, g)
    assert np.all(y[:, 0] == 0.5)
    for name, a, e in [("y", y, ty), ("dx", dx, tdx), ("dgamma", dw, tdw), ("dbeta", db, tdb)]:
        assert_rel(a, e, 1e-12, name)


# ----------------------------------------------------------------------------- float32 accuracy


@pytest.mark.parametrize("offset", [3.0, 1000.0], ids=["offset3-one-read", "offset1000-shifted"])
@pytest.mark.parametrize("shape", [(128, 2, 32, 32), (131072, 2)], ids=str)
def test_float32_within_1e5_of_float64(driver, offset, shape):
    """131072 values per channel, mean offset 3 std (one-read sums) or 1000 std (shifted
    sums, also in the backward): float32 within 1e-5 relative of the same float32 inputs
    computed in float64."""
    rng = np.random.default_rng(5)
    x, g, w, b, rm, rv = inputs(rng, shape, np.float32, offset=offset, scale=1.0)
    rm64, rv64 = rm.astype(np.float64), rv.astype(np.float64)
    out32 = ours(x, rm, rv, w, b, True, g)
    out64 = ours(x.astype(np.float64), rm64, rv64, w.astype(np.float64), b.astype(np.float64), True,
                 g.astype(np.float64))
    for name, a, e in zip(["y", "mean", "inv_std", "dx", "dgamma", "dbeta"], out32, out64):
        assert a.dtype == np.float32, name
        # dgamma = inv_std sum(g (x - mean)) sees the SAVED mean's float32 rounding,
        # eps |mean| / std ~ 6e-5 at an offset of 1000 std (PyTorch's float32 as well)
        assert_rel(a, e, 1e-4 if name == "dgamma" and offset > 100 else 1e-5, name)
    assert_rel(rm, rm64, 1e-6, "running_mean")
    assert_rel(rv, rv64, 1e-5, "running_var")
    # eval with those statistics
    y32 = batchnorm.batch_norm_forward(x, rm, rv, w, b, False, 0.1, 1e-5)[0]
    y64 = batchnorm.batch_norm_forward(x.astype(np.float64), rm.astype(np.float64), rv.astype(np.float64),
                                       w.astype(np.float64), b.astype(np.float64), False, 0.1, 1e-5)[0]
    assert_rel(y32, y64, 1e-5, "eval y")


def test_shifted_sums_are_used_for_a_large_offset(monkeypatch, knob):
    """The NumPy passes' one-read sums would lose ~1e-2 of the variance at an offset of
    1000 std in float32; the test above passing proves the shift, this one that the
    switch is the ratio (with the shift disabled the error is far above 1e-5). (The
    compiled kernels always sum x minus each channel's first value, in float64.)"""
    knob(cpu_jit="off")
    monkeypatch.setattr(batchnorm, "SHIFT_RATIO", float("inf"))
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((64, 1, 32, 32)) + 1000).astype(np.float32)
    var = batchnorm.batch_norm_forward(x, None, None, None, None, True, 0.1, 0.0)[2].astype(np.float64) ** -2
    assert abs(var[0] / x.astype(np.float64).var() - 1) > 1e-4


def test_lock_held_runs_serially():
    """A call made while another op holds the threads (``_parallel.lock``) runs on the
    calling thread and gives the same result."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 8, 32, 32)).astype(np.float32)
    free = batchnorm.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)[0]
    with _parallel.lock:
        held = batchnorm.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5)[0]
    assert_close(held, free, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- relu fused into the backward


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(9, 5, 13, 17), (7, 3), (64, 2, 32, 32)], ids=str)
def test_backward_with_y_masks_grad_by_the_relu(driver, shape, training, dtype):
    """``batch_norm_backward(..., y=y)`` (the forward ran ``activation="relu"``) is the
    backward of ``g * [y > 0]``, and the reference's with the same y."""
    rng = np.random.default_rng(11)
    x, g, w, b, rm, rv = inputs(rng, shape, offset=0.3)
    x, g, w, b, rm, rv = (a.astype(dtype) for a in (x, g, w, 0.1 * b, rm, rv))
    y, mean, inv_std = batchnorm.batch_norm_forward(x, rm, rv, w, b, training, 0.1, 1e-5, activation="relu")
    assert 0.2 < (y == 0).mean() < 0.8  # the mask is exercised
    fused = batchnorm.batch_norm_backward(g, x, mean, inv_std, w, training, y=y)
    masked = batchnorm.batch_norm_backward(g * (y > 0), x, mean, inv_std, w, training)
    want = ref_batchnorm.batch_norm_backward(g.astype(np.float64), x.astype(np.float64), mean, inv_std,
                                             w.astype(np.float64), training, y=y)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for name, a, m, e in zip(("dx", "dgamma", "dbeta"), fused, masked, want):
        assert a.dtype == dtype, name
        assert_rel(a, m, tol, name)
        assert_rel(a, e, tol, name)


# ----------------------------------------------------------------------------- compiled kernels


def test_compiled_kernels_serve_contiguous_float32_and_float64_only(knob):
    """``_jit_kernels`` hands out numba's kernels for C-contiguous float32 / float64
    arrays of one dtype, and None (the NumPy passes) otherwise or under the knob."""
    if not _jit.enabled():
        pytest.skip(f"compiled kernels off: {_jit.why_not()}")
    x = np.ones((4, 3, 8), np.float32)
    assert batchnorm._jit_kernels(x) is _jit.kernels()
    assert batchnorm._jit_kernels(x.astype(np.float64), x.astype(np.float64)) is _jit.kernels()
    for args in [(x.astype(np.float16),), (x.transpose(0, 2, 1),), (x, x.astype(np.float64)), (x.astype(np.int32),)]:
        assert batchnorm._jit_kernels(*args) is None, [(a.dtype, a.strides) for a in args]
    knob(cpu_jit="off")
    assert batchnorm._jit_kernels(x) is None
    assert _jit.why_not() == "knob cpu_jit='off'"


def test_without_numba_the_numpy_passes_run(monkeypatch):
    """A numba that is missing or fails to import leaves the NumPy passes, same values."""
    rng = np.random.default_rng(12)
    x, g, w, b, rm, rv = inputs(rng, (6, 3, 5, 5))
    with_jit = ours(x, rm.copy(), rv.copy(), w, b, True, g)
    monkeypatch.setattr(_jit, "_state", {"module": None, "error": "ImportError: no module named 'numba'"})
    assert not _jit.enabled() and "numba unavailable (ImportError" in _jit.why_not()
    without = ours(x, rm.copy(), rv.copy(), w, b, True, g)
    for a, e in zip(with_jit, without):
        assert_rel(a, e, 1e-12)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate_as_in_the_numpy_passes(driver, dtype):
    """A NaN or an infinity in a channel makes that channel's outputs NaN (its mean and
    variance are) and leaves the other channels finite, with the relu and without: the
    compiled kernels keep IEEE semantics (no ``nnan`` / ``ninf`` fast-math flags)."""
    rng = np.random.default_rng(13)
    x, g, w, b, rm, rv = inputs(rng, (4, 3, 6, 6))
    x, g, w, b = (a.astype(dtype) for a in (x, g, w, b))
    x[1, 0, 2, 2] = np.nan
    x[2, 2, 0, 1] = np.inf
    for act in (None, "relu"):
        y, mean, inv_std = batchnorm.batch_norm_forward(x, None, None, w, b, True, 0.1, 1e-5, activation=act)
        dx, dw, db = batchnorm.batch_norm_backward(g, x, mean, inv_std, w, True, y=y if act else None)
        assert np.isnan(y[:, 0]).all() and np.isnan(y[:, 2]).all() and np.isfinite(y[:, 1]).all(), act
        assert np.isnan(dx[:, 0]).all() and np.isfinite(dx[:, 1]).all(), act
        assert np.isnan(dw[0]) and np.isfinite(dw[1]), act


# ----------------------------------------------------------------------------- relu


@pytest.mark.parametrize("forced", [False, True], ids=["auto", "threads"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_plain_expressions(knob, forced, dtype):
    if forced:
        knob(cpu_threads="forced")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((33, 7, 17, 19)).astype(dtype)
    x[0, 0, 0, :4] = [0.0, -0.0, np.nan, -np.inf]
    g = rng.standard_normal(x.shape).astype(dtype)
    y = activation.relu_forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dx = activation.relu_backward(g, y)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, g * (y > 0))
    assert dx[0, 0, 0, 2] == 0  # NaN output: no gradient, as before


def test_relu_large_and_strided_inputs():
    """The threaded path (4 MiB) and the fallback for non-contiguous inputs agree."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((128, 32, 16, 16)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    y = activation.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(activation.relu_backward(g, y), g * (y > 0))
    xt = x.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(activation.relu_forward(xt), np.maximum(xt, 0))
    gt = g.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(activation.relu_backward(gt, activation.relu_forward(xt)), gt * (xt > 0))
