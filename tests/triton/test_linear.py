"""Triton linear layer (gpukernels/triton/linear.py) on Triton's interpreter vs the NumPy
reference in float64: y = x W^T + b, then dx, dW and db with the same random upstream
gradient, on odd sizes (masks and tails along M, N and K), leading dimensions, strided,
broadcast and reversed operands, split-K, small tiles and int64 offsets."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.reference import linear as ref
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

# (batch, in_features, out_features): every one of 1, 7, 33, 130 in every position, and
# 1023 / 1025 along each reduced dimension (in for y, out for dx, batch for dW and db).
CASES = [
    (1, 1, 1), (7, 33, 130), (130, 7, 33), (33, 130, 7), (1, 130, 33), (130, 1, 7),
    (7, 7, 1), (33, 33, 33), (130, 130, 130), (1, 7, 130), (7, 1025, 7), (1023, 7, 1), (1, 7, 1025),
]
IDS = ["x".join(map(str, c)) for c in CASES]
TOLS = {np.float32: (1e-5, 1e-4), np.float16: (2e-3, 2e-3)}


@pytest.fixture
def tri():
    gk.set_backend("interpret")
    from gpukernels.triton import linear

    return linear


def _problem(n, i, o, dtype, seed, bias=True, lead=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*(lead if lead is not None else (n,)), i)).astype(dtype)
    w = (rng.standard_normal((o, i)) / np.sqrt(max(i, 1))).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if bias else None
    return x, w, b


def _f64(a):
    return None if a is None else a.astype(np.float64)


def _check(tri, x, w, b, dtype, gy=None, needs=(True, True, True), name=""):
    """Forward, then the needed gradients, vs the float64 reference; tolerances scale with
    the square root of each reduction's length (float32 accumulation)."""
    atol, rtol = TOLS[dtype]
    y = tri.linear_forward(x, w, b)
    y_ref = ref.linear_forward(_f64(x), _f64(w), _f64(b))
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, atol=atol * np.sqrt(w.shape[1] + 1), rtol=rtol, name=f"{name} y")
    if gy is None:
        gy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    got = tri.linear_backward(gy, x, w, needs=needs)
    want = ref.linear_backward(_f64(gy), _f64(x), _f64(w), needs=needs)
    batch = int(np.prod(x.shape[:-1]))
    lengths = (w.shape[0], batch, batch)  # reduced over: out, batch, batch
    for label, a, e, k, need, shape in zip(("dx", "dW", "db"), got, want, lengths, needs,
                                           (x.shape, w.shape, (w.shape[0],))):
        if not need:
            assert a is None, f"{name} {label} computed though not needed"
            continue
        assert a.dtype == dtype and a.shape == shape, f"{name} {label}: {a.dtype} {a.shape}"
        assert_close(a, e, atol=atol * np.sqrt(k + 1) * 4, rtol=rtol, name=f"{name} {label}")
    return y, got


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_and_every_gradient_match_the_reference(tri, case):
    x, w, b = _problem(*case, np.float32, seed=CASES.index(case), bias=CASES.index(case) % 3 != 1)
    _check(tri, x, w, b, np.float32, name=str(case))


@pytest.mark.parametrize("case", [(7, 33, 130), (130, 130, 7), (1, 1025, 7)], ids=["7x33x130", "130x130x7", "1x1025x7"])
def test_float16_inputs_accumulate_in_float32(tri, case):
    x, w, b = _problem(*case, np.float16, seed=3)
    _check(tri, x, w, b, np.float16, name=f"{case} fp16")


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, False, True), (False, False, False)])
def test_only_the_needed_gradients_are_computed(tri, needs):
    x, w, b = _problem(33, 7, 130, np.float32, seed=4)
    _check(tri, x, w, b, np.float32, needs=needs, name=f"needs={needs}")


def test_leading_dimensions_are_flattened_into_the_batch(tri):
    x, w, b = _problem(0, 7, 33, np.float32, seed=5, lead=(2, 3, 5))
    y, _ = _check(tri, x, w, b, np.float32, name="(2, 3, 5, 7)")
    assert y.shape == (2, 3, 5, 33)
    x, w, b = _problem(0, 7, 33, np.float32, seed=6, lead=())  # a single (in,) vector
    y, _ = _check(tri, x, w, None, np.float32, name="(7,)")
    assert y.shape == (33,)


def test_strided_broadcast_and_reversed_operands(tri):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((33, 130)).astype(np.float32)[:, ::3]  # (33, 44), column stride 3
    w = np.ascontiguousarray(rng.standard_normal((44, 17)).astype(np.float32)).T  # (17, 44), transposed
    b = rng.standard_normal(34).astype(np.float32)[::2]  # strided bias
    _check(tri, x, w, b, np.float32, name="strided")
    # upstream gradients that are stride-0 views, fully or along the batch only
    _check(tri, x, w, b, np.float32, gy=np.broadcast_to(np.float32(0.5), (33, 17)), name="broadcast gy")
    row = rng.standard_normal((1, 17)).astype(np.float32)
    _check(tri, x, w, b, np.float32, gy=np.broadcast_to(row, (33, 17)), name="row-broadcast gy")
    # negative strides, and an input broadcast along the batch
    _check(tri, x[::-1], w[:, ::-1], b[::-1], np.float32, name="reversed")
    xb = np.broadcast_to(rng.standard_normal((1, 44)).astype(np.float32), (33, 44))
    _check(tri, xb, w, None, np.float32, name="broadcast x")


def test_read_only_operands_are_read_not_refused(tri):
    # np.broadcast_to(a, a.shape) is C-contiguous but read-only (as is a read-only memmap)
    x, w, b = _problem(33, 7, 130, np.float32, seed=17)
    gy = np.random.default_rng(18).standard_normal((33, 130)).astype(np.float32)
    ro = [np.broadcast_to(a, a.shape) for a in (x, w, b, gy)]
    assert all(a.flags.c_contiguous and not a.flags.writeable for a in ro)
    _check(tri, *ro[:3], np.float32, gy=ro[3], name="read-only")


def test_grad_weight_split_k_sums_the_partials(tri, monkeypatch, knob):
    knob(split_k=3)  # batch 1023 in 64-row steps: 3 splits
    x, w, b = _problem(1023, 7, 33, np.float32, seed=9)
    _check(tri, x, w, b, np.float32, name="split-k 3")
    _check(tri, x, w, b, np.float32, needs=(False, True, False), name="split-k 3 no db")


def test_small_tiles_cover_many_programs_and_tails(tri, monkeypatch, knob):
    # 16x16x16 tiles: several row and column tiles, grouped ordering, K tails
    for kernel in tri.KERNELS.values():
        knob(configs={kernel: (16, 16, 16, 4, 1)})
    x, w, b = _problem(130, 33, 47, np.float32, seed=10)
    _check(tri, x, w, b, np.float32, name="16x16x16 tiles")
    knob(split_k=4)
    _check(tri, x, w, b, np.float32, name="16x16x16 tiles split-k 4")


def test_int64_offsets_give_the_same_result(tri, monkeypatch, knob):
    # tensors of 2**31 elements do not fit a test; the INT64 code path runs on small ones
    monkeypatch.setattr(tri, "needs_int64", lambda *arrays: True)
    knob(split_k=2)
    x, w, b = _problem(130, 33, 7, np.float32, seed=11)
    _check(tri, x.T.copy().T, w, b, np.float32, name="int64")


def test_full_float32_when_tf32_is_off(tri):
    assert tri.dot_precision(np.float32) == "tf32" and tri.dot_precision(np.float16) == "ieee"
    backend.set_allow_tf32(False)
    try:
        assert tri.dot_precision(np.float32) == "ieee"
        x, w, b = _problem(33, 130, 7, np.float32, seed=12)
        _check(tri, x, w, b, np.float32, name="ieee")
    finally:
        backend.set_allow_tf32(True)


def test_empty_batch_and_zero_features(tri):
    x, w, b = _problem(0, 7, 5, np.float32, seed=13)
    y, (gx, gw, gb) = _check(tri, x, w, b, np.float32, name="batch 0")
    assert y.shape == (0, 5) and not gw.any() and not gb.any()
    # no input features: y is the bias; (the reference's reshape(-1, 0) cannot run here)
    x, w, b = _problem(3, 0, 5, np.float32, seed=14, lead=(3, 1))
    y = tri.linear_forward(x, w, b)
    assert y.shape == (3, 1, 5) and np.array_equal(y, np.broadcast_to(b, (3, 1, 5)))
    gy = np.random.default_rng(7).standard_normal(y.shape).astype(np.float32)
    gx, gw, gb = tri.linear_backward(gy, x, w)
    assert gx.shape == (3, 1, 0) and gw.shape == (5, 0)
    assert_close(gb, gy.astype(np.float64).sum(axis=(0, 1)), atol=1e-5, rtol=1e-5, name="db, in_features 0")


def test_functional_linear_dispatches_to_triton_under_interpret():
    gk.set_backend("interpret")
    rng = np.random.default_rng(15)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((4, 6, 9), (5, 9), (5,))]

    def run():
        x, w, b = (gk.tensor(a, requires_grad=True) for a in arrays)
        y = F.linear(x, w, b)
        (y * y).sum().backward()
        return [y.numpy()] + [t.grad.numpy() for t in (x, w, b)]

    ours = run()
    assert backend.last_dispatch["linear"] == "gpukernels.triton.linear"
    gk.set_backend("numpy")
    theirs = run()
    assert backend.last_dispatch["linear"] == "gpukernels.cpu.linear"
    for name, a, e in zip(("y", "x.grad", "w.grad", "b.grad"), ours, theirs):
        assert_close(a, e, atol=1e-4, rtol=1e-4, name=name)


def test_bad_arguments_are_clear_errors(tri):
    x, w, b = _problem(3, 4, 5, np.float32, seed=16)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16 .as uint16. arrays, got float64"):
        tri.linear_forward(x.astype(np.float64), w.astype(np.float64), None)
    with pytest.raises(TypeError, match="linear: arrays must share one dtype"):
        tri.linear_forward(x, w.astype(np.float16), None)
    with pytest.raises(ValueError, match=r"linear: input of shape \(3, 5\) does not match weight of shape \(5, 4\)"):
        tri.linear_forward(np.zeros((3, 5), np.float32), w, None)
    with pytest.raises(ValueError, match=r"linear: bias must have shape \(5,\), got \(4,\)"):
        tri.linear_forward(x, w, b[:4])
    with pytest.raises(ValueError, match=r"linear_backward: grad_y must have shape \(3, 5\)"):
        tri.linear_backward(np.zeros((3, 4), np.float32), x, w)


def test_unaligned_launches_autotune_only_over_the_configs_that_do_not_spill(tri):
    # the pruner sees the launch's arguments by name; pointers only answer data_ptr()
    import triton

    class Ptr:
        def __init__(self, address):
            self.address = address

        def data_ptr(self):
            return self.address

    def args(a_ptr=256, **sizes):
        named = dict(a_ptr=Ptr(a_ptr), b_ptr=Ptr(512), bias_ptr=Ptr(768), c_ptr=Ptr(1024), rowsum_ptr=Ptr(1024),
                     M=4096, N=4096, K=4096, sam=4096, sak=1, sbk=1, sbn=4096, scm=4096, scn=1, k_per_split=4096)
        named.update(sizes)
        return named

    for key in tri.GPU_CONFIGS:
        configs = [triton.Config(dict(BLOCK_M=c[0], BLOCK_N=c[1], BLOCK_K=c[2]), num_warps=c[3], num_stages=c[4])
                   for c in tri.GPU_CONFIGS[key]]
        prune = tri.KERNELS[key].prune
        assert prune(configs, args()) == configs  # aligned: every config
        safe = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
                for c in prune(configs, args(K=33))]
        assert safe == tri.UNALIGNED[key], key
        for unaligned in (args(a_ptr=258), args(sam=4097), args(sak=3)):  # a view, a pitch, no unit stride
            assert len(prune(configs, unaligned)) == len(tri.UNALIGNED[key])
