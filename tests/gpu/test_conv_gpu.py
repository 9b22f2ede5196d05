"""Triton conv2d on a real GPU vs PyTorch CUDA (cuDNN): every tile config forced in
turn (a miscompiled config cannot hide behind autotuning), float32 in full precision
and TF32, float16 and bfloat16 (bf16 travels as uint16 bit patterns), and int64
offsets on a tensor of more than 2**31 elements.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1): compiled kernels, not the interpreter."""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels import backend

pytestmark = pytest.mark.gpu

CASES = [  # (N, C, H, W, O, K, stride, padding): ResNet-CIFAR-like plus odd tails
    (8, 64, 32, 32, 64, 3, 1, 1),
    (4, 33, 17, 15, 47, 3, 2, 1),
    (8, 3, 32, 32, 16, 3, 1, 1),
    (4, 64, 16, 16, 128, 1, 2, 0),
]


@pytest.fixture(scope="module")
def env():
    import cupy
    import torch

    from gpukernels.triton import conv

    return cupy, torch, conv


def _data(torch, case, dtype, seed=0):
    n, c, h, w, o, k, s, p = case
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, c, h, w, device="cuda", generator=g).to(dtype)
    wt = (torch.randn(o, c, k, k, device="cuda", generator=g) / (c * k * k) ** 0.5).to(dtype)
    b = torch.randn(o, device="cuda", generator=g).to(dtype)
    gy_shape = torch.nn.functional.conv2d(x.float(), wt.float(), stride=s, padding=p).shape
    gy = torch.randn(gy_shape, device="cuda", generator=g).to(dtype)
    return x, wt, b, gy, (s, s), (p, p)


def _cp(cupy, torch, t):
    """A CuPy view of a torch CUDA tensor (bf16 as uint16 bits)."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
        return cupy.from_dlpack(t).view(cupy.uint16)
    return cupy.from_dlpack(t)


def _th(cupy, torch, a, dtype):
    t = torch.from_dlpack(a.view(cupy.int16) if a.dtype == cupy.uint16 else a)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _run_both(env, case, dtype, activation="relu", seed=0):
    cupy, torch, conv = env
    x, wt, b, gy, stride, padding = _data(torch, case, dtype, seed)
    xs = [t.detach().clone().requires_grad_(True) for t in (x, wt, b)]
    z = torch.nn.functional.conv2d(*xs, stride=stride, padding=padding)
    y_ref = torch.relu(z) if activation == "relu" else z
    y_ref.backward(gy)
    args = (stride, padding, (1, 1), 1, activation, 0.01)
    cx, cw, cb, cgy = (_cp(cupy, torch, t.contiguous()) for t in (x, wt, b, gy))
    y = conv.conv2d_forward(cx, cw, cb, *args)
    gx, gw, gb = conv.conv2d_backward(cgy, cx, cw, y, *args)
    ours = [_th(cupy, torch, a, dtype).float() for a in (y, gx, gw, gb)]
    theirs = [t.float() for t in (y_ref, xs[0].grad, xs[1].grad, xs[2].grad)]
    return ours, theirs


def _assert_close(ours, theirs, rtol, label):
    for name, a, b in zip(("y", "grad_x", "grad_w", "grad_b"), ours, theirs):
        err = (a - b).abs().max().item()
        scale = b.abs().max().item() + 1e-6
        assert err <= rtol * scale, f"{label} {name}: max abs error {err:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("kind", ["fwd", "dgrad", "wgrad"])
def test_every_config_is_correct_in_full_float32(env, kind, monkeypatch):
    cupy, torch, conv = env
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    backend.set_allow_tf32(False)
    try:
        for cfg in conv.GPU_CONFIGS[kind]:
            monkeypatch.setattr(conv.KERNELS[kind], "force", cfg)
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


def test_int64_offsets_past_2_to_the_31_elements(env):
    cupy, torch, conv = env
    side = 46341  # 46341**2 > 2**31
    x = torch.randn(1, 1, side, side, device="cuda", dtype=torch.float16)
    w = torch.randn(2, 1, 3, 3, device="cuda", dtype=torch.float16)
    y = conv.conv2d_forward(_cp(cupy, torch, x), _cp(cupy, torch, w), None, (1, 1), (1, 1), (1, 1), 1)
    ref = torch.nn.functional.conv2d(x, w, padding=1)
    ours = torch.from_dlpack(y)
    for rows in (slice(0, 4), slice(side - 4, side)):  # the far end is where int32 wraps
        assert (ours[..., rows, :].float() - ref[..., rows, :].float()).abs().max().item() < 5e-2
