"""gpukernels.cpu.cross_entropy (row blocks on two threads, short-row maxima, the
all-valid fast path) against the reference, and against itself across drivers: the
threaded and blocked runs must give the serial one-block result bit for bit (a row's
operations do not depend on its block)."""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels.cpu import cross_entropy as cpu_ce
from gpukernels.reference import cross_entropy as ref_ce
from tests.helpers import assert_close

TOLS = {np.float64: (1e-12, 1e-10), np.float32: (2e-6, 1e-4)}
DTYPES = [np.float64, np.float32]
IDS = ["float64", "float32"]


def _close(actual, expected, dtype, name):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} vs {expected.dtype}"
    if np.isnan(expected).all() and expected.size:
        assert np.isnan(actual).all(), name
        return
    atol, rtol = TOLS[dtype]
    scale = max(1.0, float(np.nanmax(np.abs(expected)))) if expected.size else 1.0
    assert_close(actual, expected, atol=atol * scale, rtol=rtol, name=name)


def _case(n, c, dtype, ignored, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    z = (scale * rng.standard_normal((n, c))).astype(dtype)
    t = rng.integers(0, c, n)
    ignore_index = -100
    if ignored == "some":
        t[::3] = -100
    elif ignored == "in range":  # a class index as ignore_index: its rows are ignored
        ignore_index = int(t[0])
    elif ignored == "all":
        t[:] = -100
    return z, t, ignore_index


SHAPES = [(1, 1), (7, 5), (6, 1), (33, 63), (33, 64), (300, 1000), (3, 70_001)]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("n, c", SHAPES)
@pytest.mark.parametrize("ignored", ["none", "some", "in range", "all"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_forward_and_backward_match_the_reference(n, c, dtype, ignored, reduction, eps):
    z, t, ig = _case(n, c, dtype, ignored)
    loss, grad = cpu_ce.cross_entropy_forward(z, t, reduction, ig, eps)
    loss_ref, grad_ref = ref_ce.cross_entropy_forward(z, t, reduction, ig, eps)
    _close(loss, loss_ref, dtype, "loss")
    _close(grad, grad_ref, dtype, "grad")
    up = np.asarray(np.random.default_rng(1).standard_normal(n) if reduction == "none" else 0.7, dtype)
    _close(cpu_ce.cross_entropy_backward(up, grad, reduction),
           ref_ce.cross_entropy_backward(up, grad_ref, reduction), dtype, "backward")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("n, c", [(257, 1000), (40, 7), (5, 4099), (64, 300)])
@pytest.mark.parametrize("ignored", ["none", "some"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf in the pool thread's errstate
def test_threads_and_blocks_change_no_bit(knob, monkeypatch, n, c, dtype, ignored, eps):
    z, t, ig = _case(n, c, dtype, ignored, seed=2)
    z[1, 0], z[2, :], z[4 % n, 1 % c] = np.nan, -np.inf, np.inf  # NaN rows (1, 2, 4: not ignored)
    with_serial = cpu_ce.cross_entropy_forward(z, t, "none", ig, eps)
    monkeypatch.setattr(cpu_ce, "ROW_BLOCK_BYTES", 3 * c * z.itemsize)  # blocks of 3 rows
    knob(cpu_threads="forced")
    threaded = cpu_ce.cross_entropy_forward(z, t, "none", ig, eps)
    up = np.asarray(np.arange(n) / n, dtype)
    back = [cpu_ce.cross_entropy_backward(up, g, "none") for g in (with_serial[1], threaded[1])]
    for a, b in zip(with_serial + (back[0],), threaded + (back[1],)):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(threaded[0][[1, 2, 4 % n]]).all() and np.isnan(threaded[1][[1, 2, 4 % n]]).all()


def test_the_serial_knob_stays_on_the_calling_thread(knob):
    z, t, ig = _case(4096, 700, np.float32, "some", seed=3)
    knob(cpu_threads="serial")
    loss, grad = cpu_ce.cross_entropy_forward(z, t, "mean", ig, 0.0)
    loss_ref, grad_ref = ref_ce.cross_entropy_forward(z, t, "mean", ig, 0.0)
    _close(loss, loss_ref, np.float32, "loss")
    _close(grad, grad_ref, np.float32, "grad")


def test_large_logits_and_the_buffer_size_is_restored(knob):
    knob(cpu_threads="forced")
    z, t, ig = _case(64, 512, np.float32, "none", seed=4, scale=1e4)
    before = np.getbufsize()
    loss, grad = cpu_ce.cross_entropy_forward(z, t, "sum", ig, 0.1)
    assert np.getbufsize() == before
    loss_ref, grad_ref = ref_ce.cross_entropy_forward(z, t, "sum", ig, 0.1)
    assert np.isfinite(loss)
    _close(loss, loss_ref, np.float32, "loss")
    _close(grad, grad_ref, np.float32, "grad")


def test_backward_dtype_follows_numpy_promotion():
    grad = np.ones((3, 4), np.float32)
    assert cpu_ce.cross_entropy_backward(np.asarray(2.0, np.float64), grad, "mean").dtype == np.float64
    assert cpu_ce.cross_entropy_backward(np.ones(3, np.float32), grad, "none").dtype == np.float32
    big = np.ones((4096, 1024), np.float32)
    out = cpu_ce.cross_entropy_backward(np.asarray(0.5, np.float32), big, "mean")
    assert out is not big and out.dtype == np.float32 and (out == 0.5).all()


@pytest.mark.parametrize("target, ig", [([0, 5, 1], -100), ([0, -1, 1], -100), ([0, 2, -7], 2)])
def test_bad_targets_raise_the_reference_s_error(target, ig):
    z = np.zeros((3, 5), np.float32)
    t = np.array(target)
    with pytest.raises(ValueError) as mine:
        cpu_ce.cross_entropy_forward(z, t, "mean", ig, 0.0)
    with pytest.raises(ValueError) as ref:
        ref_ce.cross_entropy_forward(z, t, "mean", ig, 0.0)
    assert str(mine.value) == str(ref.value)


def test_empty_batch_is_the_reference_s():
    z = np.zeros((0, 5), np.float32)
    t = np.zeros(0, np.int64)
    for reduction in ("mean", "sum", "none"):
        loss, grad = cpu_ce.cross_entropy_forward(z, t, reduction, -100, 0.0)
        loss_ref, grad_ref = ref_ce.cross_entropy_forward(z, t, reduction, -100, 0.0)
        np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss_ref))
        assert grad.shape == grad_ref.shape == (0, 5)
