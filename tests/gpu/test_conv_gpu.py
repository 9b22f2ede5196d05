"""Triton conv2d on a real GPU vs PyTorch CUDA (cuDNN): every tile config forced in
turn (a miscompiled config cannot hide behind autotuning), float32 in full precision
and TF32, float16 and bfloat16 (bf16 travels as uint16 bit patterns), and int64
offsets on a tensor of more than 2**31 elements.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1): compiled kernels, not the interpreter."""

from __future__ import annotations

import pytest

from gpukernels import backend
from gpukernels.backend import cupy_from_torch, torch_from_cupy
from tests.gpu.helpers import assert_close_each, each_config, gpu_env, run_both

pytestmark = pytest.mark.gpu

CASES = [  # (N, C, H, W, O, K, stride, padding): ResNet-CIFAR-like plus odd tails
    (8, 64, 32, 32, 64, 3, 1, 1),
    (4, 33, 17, 15, 47, 3, 2, 1),
    (8, 3, 32, 32, 16, 3, 1, 1),
    (4, 64, 16, 16, 128, 1, 2, 0),
]


@pytest.fixture(scope="module")
def env():
    return gpu_env("conv")


def _data(torch, case, dtype, seed=0):
    n, c, h, w, o, k, s, p = case
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, c, h, w, device="cuda", generator=g).to(dtype)
    wt = (torch.randn(o, c, k, k, device="cuda", generator=g) / (c * k * k) ** 0.5).to(dtype)
    b = torch.randn(o, device="cuda", generator=g).to(dtype)
    gy_shape = torch.nn.functional.conv2d(x.float(), wt.float(), stride=s, padding=p).shape
    gy = torch.randn(gy_shape, device="cuda", generator=g).to(dtype)
    return x, wt, b, gy, (s, s), (p, p)


def _run_both(env, case, dtype, activation="relu", seed=0):
    _, torch, conv = env
    x, wt, b, gy, stride, padding = _data(torch, case, dtype, seed)
    args = (stride, padding, (1, 1), 1, activation, 0.01)

    def theirs(x_, w_, b_):
        z = torch.nn.functional.conv2d(x_, w_, b_, stride=stride, padding=padding)
        return torch.relu(z) if activation == "relu" else z

    def ours(cx, cw, cb, cgy):
        y = conv.conv2d_forward(cx, cw, cb, *args)
        return (y, *conv.conv2d_backward(cgy, cx, cw, y, *args))

    # the kernels get contiguous operands (as _data makes them)
    x, wt, b, gy = (t.contiguous() for t in (x, wt, b, gy))
    return run_both(ours, theirs, (x, wt, b), gy, dtype == torch.bfloat16)


def _assert_close(ours, theirs, rtol, label):
    assert_close_each(("y", "grad_x", "grad_w", "grad_b"), ours, theirs, rtol, label)


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
@pytest.mark.parametrize("kind", ["fwd", "dgrad", "wgrad"])
def test_every_config_is_correct_in_full_float32(env, kind, monkeypatch):
    cupy, torch, conv = env
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    backend.set_allow_tf32(False)
    try:
        for cfg in each_config(monkeypatch, conv.KERNELS[kind], conv.GPU_CONFIGS[kind]):
            for case in CASES:
                _assert_close(*_run_both(env, case, torch.float32), 1e-4, f"{kind} {cfg} {case}")
    finally:
        backend.set_allow_tf32(True)


@pytest.mark.parametrize("dtype_name, rtol", [("float32", 5e-3), ("float16", 1e-2), ("bfloat16", 3e-2)])
def test_autotuned_kernels_match_cudnn_in_tf32_fp16_bf16(env, dtype_name, rtol, monkeypatch):
    cupy, torch, conv = env
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # cuDNN's default, as ours
    for case in CASES:
        _assert_close(*_run_both(env, case, getattr(torch, dtype_name)), rtol, f"{dtype_name} {case}")


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
def test_int64_offsets_past_2_to_the_31_elements(env):
    cupy, torch, conv = env
    side = 46341  # 46341**2 > 2**31
    x = torch.randn(1, 1, side, side, device="cuda", dtype=torch.float16)
    w = torch.randn(2, 1, 3, 3, device="cuda", dtype=torch.float16)
    y = conv.conv2d_forward(cupy_from_torch(x), cupy_from_torch(w), None, (1, 1), (1, 1), (1, 1), 1)
    ref = torch.nn.functional.conv2d(x, w, padding=1)
    ours = torch_from_cupy(y)
    for rows in (slice(0, 4), slice(side - 4, side)):  # the far end is where int32 wraps
        assert (ours[..., rows, :].float() - ref[..., rows, :].float()).abs().max().item() < 5e-2
