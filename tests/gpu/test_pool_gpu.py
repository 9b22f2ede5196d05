"""Triton max/avg pooling on a real GPU vs PyTorch CUDA: every tile config of every
kernel forced in turn (a miscompiled config cannot hide behind autotuning), float32,
float16 and bfloat16 (bf16 travels as uint16 bit patterns), overlapping and
non-overlapping windows, channels-last inputs, and int64 offsets past 2**31 elements.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1): compiled kernels, not the interpreter."""

from __future__ import annotations

import pytest

from gpukernels.backend import cupy_from_torch, torch_from_cupy
from tests.gpu.helpers import each_config, gpu_env

pytestmark = pytest.mark.gpu

# (N, C, H, W, kernel, stride, padding, dilation)
CASES = [
    (8, 64, 32, 32, 2, 2, 0, 1),  # 2x2/s2: one window per input pixel
    (8, 64, 56, 56, 3, 2, 1, 1),  # ResNet stem pool: overlapping windows
    (4, 33, 17, 15, 3, 1, 1, 2),  # dilated, stride 1, odd sizes
    (4, 7, 13, 1025, (3, 2), (2, 3), (1, 0), (1, 1)),  # long rows: several column tiles
]
KINDS = ["max_fwd", "max_bwd", "avg_fwd", "avg_bwd"]


@pytest.fixture(scope="module")
def env():
    return gpu_env("pool")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _run_both(env, case, dtype, channels_last=False, seed=0):
    """(ours, theirs): y_max, dx_max, y_avg (padding counted), dx_avg (padding not counted)."""
    _, torch, pool = env
    n, c, h, w, k, s, p, d = case
    k, s, p, d = _pair(k), _pair(s), _pair(p), _pair(d)
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, c, h, w, device="cuda", generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xt = x.detach().clone().requires_grad_(True)
    y_max = torch.nn.functional.max_pool2d(xt, k, s, p, d)
    gy = torch.randn(y_max.shape, device="cuda", generator=g).to(dtype)
    y_max.backward(gy)
    dx_max = xt.grad
    xt.grad = None
    y_avg = torch.nn.functional.avg_pool2d(xt, k, s, p, count_include_pad=True)
    gy_a = torch.randn(y_avg.shape, device="cuda", generator=g).to(dtype)
    y_avg2 = torch.nn.functional.avg_pool2d(xt, k, s, p, count_include_pad=False)
    y_avg2.backward(gy_a)
    dx_avg = xt.grad

    cx, cg, cga = cupy_from_torch(x), cupy_from_torch(gy), cupy_from_torch(gy_a)
    oy, am = pool.max_pool2d_forward(cx, k, s, p, d)
    odx = pool.max_pool2d_backward(cg, am, tuple(x.shape), k, s, p, d)
    oya = pool.avg_pool2d_forward(cx, k, s, p, True)
    odxa = pool.avg_pool2d_backward(cga, tuple(x.shape), k, s, p, False)
    ours = [torch_from_cupy(a, bfloat16=dtype == torch.bfloat16).float() for a in (oy, odx, oya, odxa)]
    theirs = [t.float() for t in (y_max, dx_max, y_avg, dx_avg)]
    return ours, theirs


def _assert_close(ours, theirs, rtol, label, exact_max=True):
    for name, a, b in zip(("max y", "max dx", "avg y", "avg dx"), ours, theirs):
        err = (a - b).abs().max().item()
        tol = 0.0 if exact_max and name == "max y" else rtol * (b.abs().max().item() + 1e-6)
        assert err <= tol, f"{label} {name}: max abs error {err:.3g}, allowed {tol:.3g}"


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
@pytest.mark.parametrize("kind", KINDS)
def test_every_config_matches_pytorch(env, kind, monkeypatch):
    cupy, torch, pool = env
    for cfg in each_config(monkeypatch, pool.KERNELS[kind], pool.GPU_CONFIGS[kind]):
        for case in CASES:
            _assert_close(*_run_both(env, case, torch.float32), 1e-5, f"{kind} {cfg} {case}")


@pytest.mark.parametrize("dtype_name, rtol", [("float32", 1e-5), ("float16", 2e-3), ("bfloat16", 1e-2)])
def test_autotuned_kernels_match_pytorch_in_every_dtype(env, dtype_name, rtol):
    cupy, torch, pool = env
    for case in CASES:
        _assert_close(*_run_both(env, case, getattr(torch, dtype_name)), rtol, f"{dtype_name} {case}")
        _assert_close(*_run_both(env, case, getattr(torch, dtype_name), channels_last=True), rtol,
                      f"{dtype_name} channels-last {case}")


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
def test_int64_offsets_past_2_to_the_31_elements(env):
    cupy, torch, pool = env
    side = 46342  # 46342**2 > 2**31, even: 2x2/s2 windows tile the image exactly
    x = torch.randn(1, 1, side, side, device="cuda", dtype=torch.float16)
    cx = cupy_from_torch(x)
    y, am = pool.max_pool2d_forward(cx, 2, 2, 0, 1)
    ref, idx = torch.nn.functional.max_pool2d(x, 2, 2, return_indices=True)
    ours = torch_from_cupy(y)
    for rows in (slice(0, 4), slice(side // 2 - 4, side // 2)):  # the far end is where int32 wraps
        assert torch.equal(ours[..., rows, :], ref[..., rows, :])
    del ref
    gy = torch.ones_like(ours)
    dx = torch_from_cupy(pool.max_pool2d_backward(cupy_from_torch(gy), am, (1, 1, side, side), 2, 2, 0, 1))
    del gy, y
    hits = torch.zeros(side * side, device="cuda", dtype=torch.float16)
    hits[idx[..., side // 2 - 4:, :].flatten()] = 1
    far = slice((side - 8) * side, side * side)  # the last 8 rows: every hit is the argmax
    assert torch.equal(dx.flatten()[far], hits[far])
