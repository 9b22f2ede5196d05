"""Triton softmax / log-softmax / fused cross-entropy (gpukernels/triton/cross_entropy.py)
on Triton's interpreter vs the NumPy reference in float64: forward, then backward with
the same random upstream gradient, on awkward shapes (1, 7, 1023, 1025 rows/columns;
1, 3, 1000 classes; the interpreter's tile is 64 x 512, so 1000+ classes take the
two-sweep online log-sum-exp path and fewer take the one-read path), every reduction,
label smoothing 0 and 0.1, ignored rows, float32 / float16 (and bf16 stores), plus one
test per known trap."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.reference import cross_entropy as ref
from gpukernels.triton._common import from_float32, to_float32
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

IGNORE = -100
REDUCTIONS = ("mean", "sum", "none")
# (atol relative to the largest reference value, rtol)
TOLS = {np.float32: (1e-5, 1e-4), np.float16: (2e-3, 2e-3)}


@pytest.fixture
def tri():
    gk.set_backend("interpret")
    from gpukernels.triton import cross_entropy

    return cross_entropy


def _problem(n, c, dtype=np.float32, seed=0, scale=3.0, ignore_every=4):
    rng = np.random.default_rng(seed)
    z = (scale * rng.standard_normal((n, c))).astype(dtype)
    t = rng.integers(0, c, n)
    if ignore_every:
        t[1::ignore_every] = IGNORE  # rows 1, 5, 9, ... ignored
    return z, t


def _ops(tri):
    """(ours forward, ours backward, reference forward, reference backward) per op."""
    return [(tri.softmax_forward, tri.softmax_backward, ref.softmax_forward, ref.softmax_backward),
            (tri.log_softmax_forward, tri.log_softmax_backward, ref.log_softmax_forward,
             ref.log_softmax_backward)]


def _upstream(reduction, n, seed=1):
    rng = np.random.default_rng(seed)
    if reduction == "none":
        return rng.standard_normal(n).astype(np.float32)
    return np.asarray(rng.uniform(0.5, 2.0), dtype=np.float32)  # 0-d


def _close(actual, expected, dtype, name, extra=1.0, floor=0.0):
    """atol relative to the largest reference value, or to ``floor``: the size of the terms
    that cancel to give it (a gradient of 0 is p - q with p and q near 1/count)."""
    atol, rtol = TOLS[dtype]
    e = np.asarray(expected, np.float64)
    finite = e[np.isfinite(e)]
    scale = max(float(np.abs(finite).max()) if finite.size else 1.0, floor, 1e-30)
    assert_close(np.asarray(actual, np.float64), e, atol=atol * extra * scale, rtol=rtol * extra, name=name)


def _check_ce(tri, z, t, reduction, eps, ignore_index=IGNORE, g=None, z64=None, name=""):
    """Forward + backward of ours (in z.dtype) vs the reference in float64 on the same values."""
    dtype = z.dtype.type
    z64 = np.ascontiguousarray(z, dtype=np.float64) if z64 is None else z64
    loss_ref, grad_ref = ref.cross_entropy_forward(z64, t, reduction, ignore_index, eps)
    loss, grad = tri.cross_entropy_forward(z, t, reduction, ignore_index, eps)
    assert loss.shape == np.shape(loss_ref), f"{name}: loss shape {loss.shape} vs {np.shape(loss_ref)}"
    assert loss.dtype == z.dtype and grad.dtype == z.dtype and grad.shape == z.shape
    count = max(int(np.count_nonzero(t != ignore_index)), 1) if reduction == "mean" else 1
    _close(loss, loss_ref, dtype, f"{name} loss")
    _close(grad, grad_ref, dtype, f"{name} grad", floor=1.0 / count)
    g = _upstream(reduction, z.shape[0]) if g is None else g
    d_ref = ref.cross_entropy_backward(np.asarray(g, np.float64), grad_ref, reduction)
    d = tri.cross_entropy_backward(g, grad, reduction)
    assert d.dtype == z.dtype and d.shape == z.shape
    _close(d, d_ref, dtype, f"{name} backward", extra=2.0, floor=float(np.abs(g).max(initial=0)) / count)
    return loss, grad, d


# ----------------------------------------------------------------------------- cross-entropy

SHAPES = [(1, 1), (7, 3), (1025, 3), (1023, 7), (7, 1000), (3, 1023), (3, 1025), (1, 1025), (2, 1)]


@pytest.mark.parametrize("n, c", SHAPES, ids=[f"{n}x{c}" for n, c in SHAPES])
def test_cross_entropy_every_reduction_and_smoothing_matches_the_reference(tri, n, c):
    z, t = _problem(n, c, seed=n + c)
    for reduction in REDUCTIONS:
        for eps in (0.0, 0.1):
            _check_ce(tri, z, t, reduction, eps, name=f"{n}x{c} {reduction} eps={eps}")


@pytest.mark.parametrize("n, c", [(7, 1000), (1025, 3), (3, 1025)])
def test_cross_entropy_float16_computes_in_float32(tri, n, c):
    z, t = _problem(n, c, np.float16, seed=3)
    for reduction in REDUCTIONS:
        _check_ce(tri, z, t, reduction, 0.1, name=f"fp16 {n}x{c} {reduction}")


def test_cross_entropy_ignore_index_any_value_and_int32_targets(tri):
    z, t = _problem(9, 3, seed=4, ignore_every=0)
    t[[0, 4]] = 1  # ignore_index = 1 is also a class: those rows are ignored
    for reduction in REDUCTIONS:
        _check_ce(tri, z, t, reduction, 0.1, ignore_index=1, name=f"ignore=1 {reduction}")
        _check_ce(tri, z, t.astype(np.int32), reduction, 0.0, ignore_index=1, name=f"int32 {reduction}")
    # targets in another integer dtype, read through a stride
    t_big = np.repeat(t.astype(np.int16), 2)[::2]
    _check_ce(tri, z, t_big, "mean", 0.0, ignore_index=1, name="int16 strided targets")


def test_cross_entropy_every_row_ignored_gives_nan_mean_and_zero_gradient(tri):
    z, t = _problem(5, 7, ignore_every=0)
    t[:] = IGNORE
    loss, grad = tri.cross_entropy_forward(z, t, "mean", IGNORE, 0.1)
    assert loss.shape == () and np.isnan(loss)
    assert np.all(grad == 0)
    loss, grad = tri.cross_entropy_forward(z, t, "sum", IGNORE, 0.1)
    assert float(loss) == 0.0 and np.all(grad == 0)
    loss, grad = tri.cross_entropy_forward(z, t, "none", IGNORE, 0.1)
    assert loss.shape == (5,) and np.all(loss == 0)


def test_cross_entropy_empty_batch(tri):
    z = np.zeros((0, 4), np.float32)
    t = np.zeros(0, np.int64)
    for reduction in REDUCTIONS:
        loss, grad = tri.cross_entropy_forward(z, t, reduction, IGNORE, 0.0)
        loss_ref, _ = ref.cross_entropy_forward(z.astype(np.float64), t, reduction, IGNORE, 0.0)
        assert_close(loss, loss_ref, atol=0, rtol=0, name=reduction)
        assert grad.shape == (0, 4)


def test_logits_of_1e4_do_not_overflow(tri):
    rng = np.random.default_rng(5)
    big = (1e4 * rng.standard_normal((7, 1025))).astype(np.float32)
    low = (-1e4 + rng.standard_normal((7, 1025))).astype(np.float32)  # every chunk far below 0
    spike = rng.standard_normal((7, 37)).astype(np.float32)
    spike[:, 5] = 1e4
    t = rng.integers(0, 37, 7)
    for name, z in (("1e4 randn", big), ("-1e4 + randn", low), ("one logit 1e4", spike)):
        tt = t if z.shape[1] == 37 else rng.integers(0, 1025, 7)
        for reduction in REDUCTIONS:
            loss, grad, d = _check_ce(tri, z, tt, reduction, 0.1, name=f"{name} {reduction}")
            assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad)) and np.all(np.isfinite(d))
    z16 = np.clip(1e4 * rng.standard_normal((7, 1025)), -6e4, 6e4).astype(np.float16)
    for reduction in ("mean", "none"):  # a "sum" of 7 such losses exceeds float16's 65504
        loss, grad, _ = _check_ce(tri, z16, rng.integers(0, 1025, 7), reduction, 0.0, name=f"fp16 1e4 {reduction}")
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))


def test_first_chunk_all_minus_inf_masked_vocabulary(tri):
    # the interpreter's BLOCK is 512: the first chunk of every row is entirely -inf
    rng = np.random.default_rng(6)
    z = rng.standard_normal((5, 1100)).astype(np.float32)
    z[:, :600] = -np.inf
    t = rng.integers(600, 1100, 5)
    for reduction in REDUCTIONS:
        loss, grad, _ = _check_ce(tri, z, t, reduction, 0.0, name=f"-inf chunk {reduction}")
        assert np.all(np.isfinite(loss)) and np.all(grad[:, :600] == 0)


# ----------------------------------------------------------------------------- the known traps


def test_trap1_gradient_goes_to_a_fresh_buffer_never_into_the_logits(tri):
    z, t = _problem(7, 1000)
    z_before = z.copy()
    _, grad = tri.cross_entropy_forward(z, t, "mean", IGNORE, 0.1)
    assert not np.shares_memory(grad, z)
    np.testing.assert_array_equal(z, z_before)
    grad_before = grad.copy()
    d = tri.cross_entropy_backward(np.float32(2.0), grad, "mean")
    assert not np.shares_memory(d, grad)
    np.testing.assert_array_equal(grad, grad_before)  # a second backward (retain_graph) sees it intact


def test_trap1_logits_with_another_consumer_through_functional(tri):
    gk.set_backend("interpret")
    z, t = _problem(6, 9, seed=7, ignore_every=0)
    x = gk.tensor(z, requires_grad=True)
    loss = F.cross_entropy(x, gk.tensor(t)) + (x * x).sum()
    loss.backward()
    assert backend.last_dispatch["cross_entropy"] == "gpukernels.triton.cross_entropy"
    _, grad_ref = ref.cross_entropy_forward(z.astype(np.float64), t, "mean", IGNORE, 0.0)
    assert_close(x.grad, grad_ref + 2 * z.astype(np.float64), atol=1e-5, rtol=1e-4, name="x.grad")


def test_trap2_reduction_none_returns_per_row_losses_and_per_row_gradients(tri):
    z, t = _problem(7, 3, seed=8)
    loss, grad = tri.cross_entropy_forward(z, t, "none", IGNORE, 0.0)
    assert loss.shape == (7,) and np.count_nonzero(loss) == 5  # rows 1 and 5 are ignored
    assert np.all(grad[[1, 5]] == 0) and np.all(np.abs(grad[[0, 2, 3, 4, 6]]).sum(axis=1) > 0)
    g = np.arange(1, 8, dtype=np.float32)  # a different weight per row
    d = tri.cross_entropy_backward(g, grad, "none")
    np.testing.assert_allclose(d, grad * g[:, None], rtol=1e-6)


def _ulp(v, dtype):
    """One unit in the last place of the storage type at the magnitude of float64 ``v``."""
    if dtype == np.float16:
        return np.spacing(np.abs(v).astype(np.float16)).astype(np.float64)
    return np.spacing(np.abs(v).astype(np.float32)).astype(np.float64) * 2.0**16  # bf16: 16 fewer bits


def test_trap3_bf16_and_fp16_gradients_are_rounded_once_from_float32(tri):
    # a peaked softmax: the target column is p - (1 - eps) with p near 0.9, where rounding p
    # to the storage type BEFORE subtracting would cost several units in the last place
    rng = np.random.default_rng(9)
    t = rng.integers(0, 1025, 7)
    z32 = rng.standard_normal((7, 1025)).astype(np.float32)
    z32[np.arange(7), t] += 9.0
    for dtype in (np.uint16, np.float16):  # uint16: bf16 bit patterns
        z = from_float32(np, z32, dtype)
        z64 = to_float32(np, z).astype(np.float64)
        loss_ref, grad_ref = ref.cross_entropy_forward(z64, t, "sum", IGNORE, 0.1)
        loss, grad = tri.cross_entropy_forward(z, t, "sum", IGNORE, 0.1)
        assert grad.dtype == dtype and loss.dtype == dtype and loss.shape == ()
        got = to_float32(np, grad).astype(np.float64)
        err = np.abs(got - grad_ref)
        assert np.all(err <= _ulp(grad_ref, dtype) + 1e-6 * np.abs(grad_ref) + 1e-30), \
            f"{np.dtype(dtype).name}: max error {(err / _ulp(grad_ref, dtype)).max():.2f} ulp"
        assert_close(to_float32(np, loss.reshape(1))[0], loss_ref, atol=0, rtol=1e-2, name=f"loss {dtype}")
        two = from_float32(np, np.asarray(2.0, np.float32), dtype)
        d = tri.cross_entropy_backward(two, grad, "sum")
        assert d.dtype == dtype
        np.testing.assert_array_equal(to_float32(np, d), 2 * to_float32(np, grad))  # exact: a power of 2


def test_trap4_int64_offsets_give_the_same_result(tri, monkeypatch):
    # 2**31 elements do not fit a test: the INT64 code path runs on small inputs
    monkeypatch.setattr(tri, "needs_int64", lambda *arrays: True)
    for n, c in ((7, 1025), (1025, 3)):
        z, t = _problem(n, c, seed=10)
        for reduction in REDUCTIONS:
            _check_ce(tri, z, t, reduction, 0.1, name=f"int64 {n}x{c} {reduction}")
        x = np.random.default_rng(11).standard_normal((n, c)).astype(np.float32)
        gy = np.random.default_rng(12).standard_normal((n, c)).astype(np.float32)
        for f, b, rf, rb in _ops(tri):
            y = f(x, 1)
            _close(y, rf(x.astype(np.float64), 1), np.float32, f"int64 {f.__name__}")
            _close(b(gy, y, 1), rb(gy.astype(np.float64), y.astype(np.float64), 1), np.float32, "int64 backward")


def test_trap4_a_strided_view_spanning_2_to_the_31_elements_needs_int64(tri):
    base = np.zeros(4, np.float32)
    view = np.lib.stride_tricks.as_strided(base, shape=(2, 2), strides=(2**31 * 4, 4))  # never read
    assert view.size == 4  # 4 elements, a span past 2**31: the shared rule looks at the span
    assert tri.needs_int64(view)


def test_trap5_logits_of_any_strides_are_read_correctly(tri):
    z, t = _problem(7, 1000, seed=13)
    rng = np.random.default_rng(14)
    wide = rng.standard_normal((7, 1010)).astype(np.float32)
    wide[:, 3:1003] = z
    tall = rng.standard_normal((14, 1000)).astype(np.float32)
    tall[::2] = z
    views = {
        "transposed (column stride 7)": np.ascontiguousarray(z.T).T,
        "column slice (row stride 1010)": wide[:, 3:1003],
        "every other row (row stride 2000)": tall[::2],
        "reversed rows (negative stride)": z[::-1],
        "broadcast row, read-only (stride 0)": np.broadcast_to(z[2], z.shape),
        "broadcast row, writeable (stride 0)": np.lib.stride_tricks.as_strided(z[2], shape=z.shape,
                                                                                 strides=(0, 4)),
    }
    for name, v in views.items():
        for reduction in ("mean", "none"):
            _check_ce(tri, v, t, reduction, 0.1, z64=np.ascontiguousarray(v, dtype=np.float64),
                      name=f"{name} {reduction}")


def test_trap5_broadcast_and_strided_upstream_gradients(tri):
    z, t = _problem(7, 37, seed=15)
    _, grad = tri.cross_entropy_forward(z, t, "none", IGNORE, 0.0)
    vec = np.random.default_rng(16).standard_normal(21).astype(np.float32)
    cases = {
        "stride-0 writeable view": np.lib.stride_tricks.as_strided(vec[:1], shape=(7,), strides=(0,)),
        "np.broadcast_to (read-only)": np.broadcast_to(vec[3], (7,)),
        "stride 3": vec[::3],
        "negative stride": vec[6::-1],
    }
    for name, g in cases.items():
        d = tri.cross_entropy_backward(g, grad, "none")
        np.testing.assert_allclose(d, grad * np.asarray(g)[:, None], rtol=1e-6, err_msg=name)
    _, grad = tri.cross_entropy_forward(z, t, "mean", IGNORE, 0.0)
    for name, g in {"0-d": np.asarray(1.5, np.float32), "(1,)": np.full(1, 1.5, np.float32),
                    "python float": 1.5, "float64 0-d": np.asarray(1.5)}.items():
        d = tri.cross_entropy_backward(g, grad, "mean")
        np.testing.assert_allclose(d, grad * np.float32(1.5), rtol=1e-6, err_msg=name)
    # a non-contiguous saved gradient (column-major copy)
    d = tri.cross_entropy_backward(np.float32(2.0), np.asfortranarray(grad), "sum")
    np.testing.assert_allclose(d, 2 * grad, rtol=1e-6)


# ----------------------------------------------------------------------------- errors


def test_out_of_range_targets_raise_an_error_naming_the_first(tri):
    z, t = _problem(9, 5, ignore_every=0)
    t[3], t[6] = 7, -1
    with pytest.raises(ValueError, match=r"target\[3\] = 7 is not a class index in \[0, 5\) nor ignore_index=-100"):
        tri.cross_entropy_forward(z, t, "mean", IGNORE, 0.0)
    t[3] = 0
    with pytest.raises(ValueError, match=r"target\[6\] = -1 is not a class index"):
        tri.cross_entropy_forward(z, t, "none", IGNORE, 0.0)


def test_unchecked_bad_targets_poison_their_rows_without_reading_out_of_bounds(tri, monkeypatch, knob):
    knob(check_targets=False)
    z, t = _problem(6, 5, ignore_every=0)
    t_bad = t.copy()
    t_bad[2] = 10**9
    loss, grad = tri.cross_entropy_forward(z, t_bad, "none", IGNORE, 0.0)
    assert np.isnan(loss[2]) and np.all(np.isnan(grad[2]))
    loss_ok, grad_ok = tri.cross_entropy_forward(z, t, "none", IGNORE, 0.0)
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(loss[keep], loss_ok[keep])
    np.testing.assert_array_equal(grad[keep], grad_ok[keep])
    loss, _ = tri.cross_entropy_forward(z, t_bad, "mean", IGNORE, 0.0)
    assert np.isnan(loss)


def test_bad_arguments_are_named(tri):
    z, t = _problem(4, 3, ignore_every=0)
    with pytest.raises(TypeError, match="cross_entropy"):
        tri.cross_entropy_forward(z.astype(np.float64), t, "mean", IGNORE, 0.0)
    with pytest.raises(ValueError, match=r"logits must be 2-d .* got shape \(12,\)"):
        tri.cross_entropy_forward(z.reshape(-1), t, "mean", IGNORE, 0.0)
    with pytest.raises(ValueError, match="at least one class"):
        tri.cross_entropy_forward(np.zeros((4, 0), np.float32), t, "mean", IGNORE, 0.0)
    with pytest.raises(ValueError, match=r"target must have shape \(4,\) .* got \(3,\)"):
        tri.cross_entropy_forward(z, t[:3], "mean", IGNORE, 0.0)
    with pytest.raises(TypeError, match="target must be an integer array"):
        tri.cross_entropy_forward(z, t.astype(np.float32), "mean", IGNORE, 0.0)
    with pytest.raises(ValueError, match="reduction must be .* got 'avg'"):
        tri.cross_entropy_forward(z, t, "avg", IGNORE, 0.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        tri.cross_entropy_forward(z, t, "mean", IGNORE, 1.5)
    _, grad = tri.cross_entropy_forward(z, t, "none", IGNORE, 0.0)
    with pytest.raises(ValueError, match=r"reduction='none' needs grad_loss of shape \(4,\), got \(\)"):
        tri.cross_entropy_backward(np.float32(1.0), grad, "none")
    with pytest.raises(ValueError, match=r"one-element grad_loss, got shape \(4,\)"):
        tri.cross_entropy_backward(np.ones(4, np.float32), grad, "mean")
    with pytest.raises(ValueError, match=r"dim must be an int in \[-2, 2\), got 2"):
        tri.softmax_forward(z, 2)
    with pytest.raises(ValueError, match=r"softmax_backward: grad_y has shape \(4, 2\)"):
        tri.softmax_backward(z[:, :2], z, 1)


# ----------------------------------------------------------------------------- softmax / log-softmax


SOFTMAX_CASES = [((1, 1), -1), ((7, 1023), 1), ((1025, 7), 1), ((3, 1025), -1), ((1023, 1), 0),
                 ((3, 7, 5), 0), ((3, 7, 5), 1), ((3, 7, 5), 2), ((), 0)]


@pytest.mark.parametrize("shape, dim", SOFTMAX_CASES, ids=[f"{s}-dim{d}" for s, d in SOFTMAX_CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_softmax_and_log_softmax_forward_backward_match_the_reference(tri, shape, dim, dtype):
    rng = np.random.default_rng(sum(shape) + dim)
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    for f, b, rf, rb in _ops(tri):
        y = f(x, dim)
        assert y.shape == x.shape and y.dtype == x.dtype
        _close(y, rf(x.astype(np.float64), dim), dtype, f"{f.__name__} {shape} dim={dim}")
        dx = b(gy, y, dim)  # the reference backward reads our saved output, as the autograd does
        assert dx.shape == x.shape and dx.dtype == x.dtype
        _close(dx, rb(gy.astype(np.float64), y.astype(np.float64), dim), dtype,
               f"{b.__name__} {shape} dim={dim}", extra=2.0)


def test_softmax_of_strided_inputs_and_1e4_logits(tri):
    rng = np.random.default_rng(17)
    x = (1e4 * rng.standard_normal((9, 1100))).astype(np.float32)
    cases = {"1e4": x, "transposed": np.ascontiguousarray(x.T).T, "reversed": x[:, ::-1],
             "broadcast": np.broadcast_to(x[0], x.shape)}
    for name, v in cases.items():
        for f, b, rf, rb in _ops(tri):
            y = f(v, 1)
            assert np.all(np.isfinite(y)), name
            _close(y, rf(np.asarray(v, np.float64), 1), np.float32, f"{f.__name__} {name}")


# ----------------------------------------------------------------------------- every GPU config


@pytest.mark.parametrize("kind", ["ce_fwd", "ce_bwd", "softmax_fwd", "softmax_bwd"])
def test_every_gpu_config_is_correct_under_the_interpreter(tri, kind, monkeypatch, knob):
    z, t = _problem(5, 1100, seed=18)
    z2, t2 = _problem(66, 37, seed=19)
    for cfg in tri.GPU_CONFIGS[kind]:
        knob(configs={tri.KERNELS[kind]: cfg})
        for zz, tt in ((z, t), (z2, t2)):
            if kind.startswith("ce"):
                _check_ce(tri, zz, tt, "mean", 0.1, name=f"{kind} {cfg} {zz.shape}")
            else:
                for f, b, rf, rb in _ops(tri):
                    y = f(zz, 1)
                    _close(y, rf(zz.astype(np.float64), 1), np.float32, f"{kind} {cfg} {f.__name__}")
                    if kind == "softmax_bwd":
                        g = np.cos(zz)
                        _close(b(g, y, 1), rb(g.astype(np.float64), y.astype(np.float64), 1), np.float32,
                               f"{kind} {cfg} {b.__name__}", extra=2.0)


def test_autotuner_prunes_to_the_block_that_fits_the_row(tri):
    import triton

    cfgs = [triton.Config({"ROWS": r, "BLOCK": b}) for r, b, *_ in tri.GPU_CONFIGS["ce_fwd"]]
    blocks = lambda c: sorted({k.kwargs["BLOCK"] for k in tri._prune(cfgs, {"C": c})})  # noqa: E731
    assert blocks(3) == [16] and blocks(1000) == [1024] and blocks(1025) == [4096]
    assert blocks(16384) == [16384] and blocks(32768) == [4096, 8192, 16384]


# ----------------------------------------------------------------------------- through gk.functional


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_functional_cross_entropy_dispatches_to_triton_and_matches_numpy(reduction):
    z, t = _problem(33, 10, seed=20)
    results = {}
    for name in ("interpret", "numpy"):
        gk.set_backend(name)
        x = gk.tensor(z, requires_grad=True)
        loss = F.cross_entropy(x, gk.tensor(t), reduction=reduction, ignore_index=IGNORE, label_smoothing=0.1)
        if name == "interpret":
            assert backend.last_dispatch["cross_entropy"] == "gpukernels.triton.cross_entropy"
        (loss if reduction != "none" else loss * gk.tensor(np.linspace(0, 1, 33, dtype=np.float32))).sum().backward()
        results[name] = (loss.numpy(), x.grad.numpy())
    assert_close(results["interpret"][0], results["numpy"][0], atol=1e-5, rtol=1e-4, name="loss")
    assert_close(results["interpret"][1], results["numpy"][1], atol=1e-6, rtol=1e-4, name="grad")


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_functional_softmax_dispatches_to_triton_and_matches_numpy(op):
    rng = np.random.default_rng(21)
    x0 = rng.standard_normal((4, 9, 5)).astype(np.float32)
    g = rng.standard_normal((4, 9, 5)).astype(np.float32)
    results = {}
    for name in ("interpret", "numpy"):
        gk.set_backend(name)
        x = gk.tensor(x0, requires_grad=True)
        y = getattr(F, op)(x, dim=1)
        if name == "interpret":
            assert backend.last_dispatch["cross_entropy"] == "gpukernels.triton.cross_entropy"
        y.backward(gk.tensor(g))
        results[name] = (y.numpy(), x.grad.numpy())
    assert_close(results["interpret"][0], results["numpy"][0], atol=1e-6, rtol=1e-5, name=f"{op} y")
    assert_close(results["interpret"][1], results["numpy"][1], atol=1e-6, rtol=1e-5, name=f"{op} grad")
