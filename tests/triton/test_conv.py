"""Triton conv2d (gpukernels/triton/conv.py) on Triton's interpreter vs the NumPy
reference: forward with fused bias/activation, then grad-input, grad-weight and
grad-bias with the same random upstream gradient, on odd shapes (masks and tails)."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.reference import conv as ref
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

# (N, C, H, W, O, K, stride, padding, dilation): every value of the grid appears
# (N 1/3; C 1/3/17; H, W 5/8/13; K 1/3/5; stride 1/2; padding 0/1/2; dilation 1/2).
CASES = [
    (1, 1, 5, 5, 3, 1, 1, 0, 1),
    (3, 3, 8, 8, 5, 3, 1, 1, 1),
    (1, 17, 13, 13, 7, 3, 2, 1, 1),
    (3, 3, 13, 8, 4, 5, 1, 2, 1),
    (1, 3, 13, 13, 6, 5, 2, 2, 2),
    (3, 17, 5, 8, 20, 1, 2, 0, 1),
    (1, 1, 8, 13, 2, 3, 2, 0, 2),
    (3, 17, 8, 5, 9, 3, 1, 2, 2),
    (1, 3, 5, 13, 17, 3, 2, 1, 1),
    (3, 1, 13, 5, 1, 5, 1, 0, 1),
    (1, 17, 8, 8, 33, 1, 1, 1, 1),
    (1, 3, 5, 5, 4, 3, (1, 2), (0, 1), (2, 1)),
]
ACTIVATIONS = [None, "relu", "leaky_relu"]
TOLS = {np.float32: (1e-4, 1e-4), np.float16: (2e-2, 2e-2)}


@pytest.fixture
def tri():
    gk.set_backend("interpret")
    from gpukernels.triton import conv

    return conv


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _problem(case, dtype, seed, bias=True):
    n, c, h, w, o, k, s, p, d = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((o, c, k, k)) / np.sqrt(c * k * k)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if bias else None
    return x, wt, b, (_pair(s), _pair(p), _pair(d))


def _check(tri, x, wt, b, geom, activation, dtype, groups=1, gy=None, name=""):
    atol, rtol = TOLS[dtype]
    args = (*geom, groups, activation, 0.1)
    # the reference in float64 is the oracle; ours runs in ``dtype``
    y_ref = ref.conv2d_forward(x.astype(np.float64), wt.astype(np.float64),
                               None if b is None else b.astype(np.float64), *args)
    y = tri.conv2d_forward(x, wt, b, *args)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, atol=atol, rtol=rtol, name=f"{name} forward")
    if gy is None:
        gy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    # the reference backward reads the saved output: give it ours, rounded as it is
    gx_ref, gw_ref, gb_ref = ref.conv2d_backward(
        gy.astype(np.float64), x.astype(np.float64), wt.astype(np.float64), y.astype(np.float64),
        *args, needs=(True, True, b is not None))
    gx, gw, gb = tri.conv2d_backward(gy, x, wt, y, *args, needs=(True, True, b is not None))
    scale = float(np.abs(gy).max() * max(1, x.shape[0]))
    assert_close(gx, gx_ref, atol=atol * scale, rtol=rtol, name=f"{name} grad_input")
    assert_close(gw, gw_ref, atol=atol * scale * 10, rtol=rtol, name=f"{name} grad_weight")
    if b is not None:
        assert_close(gb, gb_ref, atol=atol * scale * 10, rtol=rtol, name=f"{name} grad_bias")
    return y, (gx, gw, gb)


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_forward_and_every_gradient_match_the_reference(tri, case):
    activation = ACTIVATIONS[CASES.index(case) % 3]
    x, wt, b, geom = _problem(case, np.float32, seed=CASES.index(case), bias=CASES.index(case) % 4 != 1)
    _check(tri, x, wt, b, geom, activation, np.float32, name=f"{case} {activation}")


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[5]])
def test_float16_inputs_accumulate_in_float32(tri, case):
    x, wt, b, geom = _problem(case, np.float16, seed=3)
    _check(tri, x, wt, b, geom, "relu", np.float16, name=f"{case} fp16")


def test_grad_weight_split_k_sums_the_partials(tri, monkeypatch, knob):
    x, wt, b, geom = _problem((3, 17, 13, 13, 7, 3, 1, 1, 1), np.float32, seed=5)
    knob(split_k=5)
    _check(tri, x, wt, b, geom, "leaky_relu", np.float32, name="split-k 5")


def test_int64_offsets_give_the_same_result(tri, monkeypatch):
    # tensors of 2**31 elements do not fit a test; the INT64 code path runs on small ones
    monkeypatch.setattr(tri, "needs_int64", lambda *arrays: True)
    x, wt, b, geom = _problem(CASES[2], np.float32, seed=6)
    _check(tri, x, wt, b, geom, "relu", np.float32, name="int64")


def test_groups_and_channels_last_strides(tri):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 6, 7, 9)).astype(np.float32)
    wt = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    _check(tri, x, wt, b, ((1, 1), (1, 1), (1, 1)), "relu", np.float32, groups=2, name="groups=2")
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NHWC memory
    assert not x_cl.flags.c_contiguous
    w1 = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    _check(tri, x_cl, w1, None, ((2, 2), (1, 1), (1, 1)), None, np.float32, name="channels-last")


def test_a_pixel_no_tap_reaches_gets_a_zero_gradient(tri):
    # stride 3 > kernel 1: two of every three input rows/columns feed no output
    x, wt, b, geom = _problem((2, 3, 8, 8, 4, 1, 3, 0, 1), np.float32, seed=9)
    y, (gx, _, _) = _check(tri, x, wt, b, geom, None, np.float32, name="stride 3")
    assert np.all(gx[:, :, 1::3] == 0) and np.all(gx[:, :, :, 2::3] == 0)
    assert np.abs(gx[:, :, ::3, ::3]).min() > 0


def test_functional_conv2d_dispatches_to_triton_under_interpret():
    gk.set_backend("interpret")
    rng = np.random.default_rng(10)
    x = gk.tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), requires_grad=True)
    w = gk.tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), requires_grad=True)
    b = gk.tensor(rng.standard_normal(4).astype(np.float32), requires_grad=True)
    y = F.conv2d(x, w, b, padding=1, activation="relu")
    y.sum().backward()
    assert backend.last_dispatch["conv"] == "gpukernels.triton.conv"
    grads = [t.grad.numpy() for t in (x, w, b)]
    gk.set_backend("numpy")
    x2, w2, b2 = (gk.tensor(t.numpy(), requires_grad=True) for t in (x, w, b))
    F.conv2d(x2, w2, b2, padding=1, activation="relu").sum().backward()
    assert backend.last_dispatch["conv"] == "gpukernels.cpu.conv"
    for name, ours, theirs in zip("xwb", grads, (x2.grad, w2.grad, b2.grad)):
        assert_close(ours, theirs, atol=1e-4, rtol=1e-4, name=f"grad {name}")


def test_float64_is_a_clear_error_on_the_triton_path(tri):
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16 .as uint16. arrays, got float64"):
        tri.conv2d_forward(x, np.zeros((1, 1, 3, 3)), None, (1, 1), (0, 0), (1, 1), 1)


def test_small_tiles_cover_many_programs_and_tails(tri, monkeypatch, knob):
    # 16x16x16 tiles: several row and column tiles, grouped ordering, K tails per tap
    for kernel in tri.KERNELS.values():
        knob(configs={kernel: (16, 16, 16, 4, 1)})
    x, wt, b, geom = _problem((3, 17, 8, 8, 33, 3, 1, 1, 1), np.float32, seed=11)
    _check(tri, x, wt, b, geom, "relu", np.float32, name="16x16x16 tiles")
    x, wt, b, geom = _problem((2, 3, 7, 7, 20, 3, 2, 1, 1), np.float32, seed=12)  # packed K
    _check(tri, x, wt, b, geom, "leaky_relu", np.float32, name="16x16x16 tiles packed")


def test_full_float32_launches_autotune_only_over_the_configs_that_do_not_spill(tri):
    # PRECISION reaches the pruner with the launch's constexprs; TF32 and 16-bit keep every config
    import triton

    for kind, configs in tri.GPU_CONFIGS.items():
        cfgs = [triton.Config(dict(BLOCK_M=c[0], BLOCK_N=c[1], BLOCK_K=c[2]), num_warps=c[3], num_stages=c[4])
                for c in configs]
        prune = tri.KERNELS[kind].prune
        for precision in ("tf32", "ieee"):
            kept = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
                    for c in prune(cfgs, {}, PRECISION=precision)]
            assert kept == (tri.IEEE[kind] if precision == "ieee" else list(configs)), (kind, precision)
