"""Triton batch norm on a real GPU vs PyTorch CUDA (torch.nn.functional.batch_norm):
every config of every autotuned kernel forced in turn (a miscompiled config cannot hide
behind autotuning), NCHW and channels-last, float32, float16 and bfloat16 (as uint16
bits) with float32 weights and running statistics, the finalize-kernel path, a mean of
1000, eval mode, and int64 offsets on a tensor of more than 2**31 elements.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1): compiled kernels, not the interpreter."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu

CASES = [  # (shape, channels_last)
    ((8, 64, 32, 32), False),
    ((8, 64, 32, 32), True),
    ((4, 33, 17, 15), False),
    ((4, 33, 17, 15), True),
    ((64, 256), False),
    ((3, 5, 7, 7), False),
]


@pytest.fixture(scope="module")
def env():
    import cupy
    import torch

    from gpukernels.triton import batchnorm

    return cupy, torch, batchnorm


def _cp(cupy, torch, t):
    """A CuPy view of a torch CUDA tensor (bf16 as uint16 bits), same strides."""
    if t.dtype == torch.bfloat16:
        return cupy.from_dlpack(t.view(torch.int16)).view(cupy.uint16)
    return cupy.from_dlpack(t)


def _th(cupy, torch, a, dtype):
    t = torch.from_dlpack(a.view(cupy.int16) if a.dtype == cupy.uint16 else a)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _data(torch, shape, dtype, channels_last, seed=0, offset=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    c = shape[1]
    x = (offset + 2 * torch.randn(shape, device="cuda", generator=g)).to(dtype)
    gy = torch.randn(shape, device="cuda", generator=g).to(dtype)
    if channels_last:
        x, gy = (t.contiguous(memory_format=torch.channels_last) for t in (x, gy))
    w = 1 + 0.5 * torch.randn(c, device="cuda", generator=g)
    b = torch.randn(c, device="cuda", generator=g)
    rm = torch.randn(c, device="cuda", generator=g)
    rv = 0.5 + torch.rand(c, device="cuda", generator=g)
    return x, gy, w, b, rm, rv


def _run_both(env, shape, dtype, channels_last, training=True, offset=1.0, seed=0):
    """(ours, theirs): lists of float32 torch tensors y, dx, dgamma, dbeta, running mean/var.
    The reference runs in float64 on the same (rounded) values."""
    cupy, torch, bn = env
    x, gy, w, b, rm, rv = _data(torch, shape, dtype, channels_last, seed, offset)
    xs, ws, bs = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    rm_ref, rv_ref = rm.double(), rv.double()
    y_ref = torch.nn.functional.batch_norm(xs, rm_ref, rv_ref, ws, bs, training, 0.1, 1e-5)
    y_ref.backward(gy.double())
    rm_ours, rv_ours = rm.clone(), rv.clone()
    cx, cg = _cp(cupy, torch, x), _cp(cupy, torch, gy)
    y, mean, inv = bn.batch_norm_forward(cx, _cp(cupy, torch, rm_ours), _cp(cupy, torch, rv_ours),
                                         _cp(cupy, torch, w), _cp(cupy, torch, b), training, 0.1, 1e-5)
    dx, dg, db = bn.batch_norm_backward(cg, cx, mean, inv, _cp(cupy, torch, w), training)
    ours = [_th(cupy, torch, y, dtype), _th(cupy, torch, dx, dtype), _th(cupy, torch, dg, torch.float32),
            _th(cupy, torch, db, torch.float32), rm_ours, rv_ours]
    theirs = [y_ref, xs.grad, ws.grad, bs.grad, rm_ref, rv_ref]
    if channels_last and len(shape) == 4:
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
    return [t.float() for t in ours], [t.float() for t in theirs]


def _assert_close(ours, theirs, rtol, label):
    for name, a, b in zip(("y", "grad_x", "grad_w", "grad_b", "running_mean", "running_var"), ours, theirs):
        err = (a - b).abs().max().item()
        scale = b.abs().max().item() + 1e-6
        assert err <= rtol * scale, f"{label} {name}: max abs error {err:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("kind", ["stats", "fwd_apply", "bwd_reduce", "bwd_apply"])
def test_every_config_is_correct_in_float32(env, kind, monkeypatch):
    cupy, torch, bn = env
    for cfg in bn.GPU_CONFIGS[kind]:
        monkeypatch.setattr(bn.KERNELS[kind], "force", cfg)
        for shape, cl in CASES:
            for training in (True, False):
                _assert_close(*_run_both(env, shape, torch.float32, cl, training), 1e-5,
                              f"{kind} {cfg} {shape} cl={cl} training={training}")


@pytest.mark.parametrize("dtype_name, rtol", [("float32", 1e-5), ("float16", 4e-3), ("bfloat16", 2e-2)])
def test_autotuned_kernels_match_pytorch(env, dtype_name, rtol):
    cupy, torch, bn = env
    for shape, cl in CASES:
        _assert_close(*_run_both(env, shape, getattr(torch, dtype_name), cl), rtol, f"{dtype_name} {shape} cl={cl}")


def test_finalize_kernels_with_many_splits(env, monkeypatch):
    cupy, torch, bn = env
    # channels-last (64 channels in one block) takes hundreds of splits by itself; NCHW
    # with the merge in the apply kernels switched off takes the finalize kernels too
    _assert_close(*_run_both(env, (64, 64, 32, 32), torch.float32, True), 1e-5, "channels-last many splits")
    monkeypatch.setattr(bn, "FUSE_MAX_SPLITS", 0)
    for shape, cl in CASES:
        _assert_close(*_run_both(env, shape, torch.float32, cl), 1e-5, f"finalize {shape} cl={cl}")


def test_a_mean_of_1000_in_float32(env):
    cupy, torch, bn = env
    for cl in (False, True):
        ours, theirs = _run_both(env, (32, 16, 32, 32), torch.float32, cl, offset=1000.0)
        _assert_close(ours, theirs, 1e-4, f"mean 1000 cl={cl}")


def test_int64_offsets_past_2_to_the_31_elements(env):
    cupy, torch, bn = env
    # 2 x 32768 x 32769 > 2**31 half values: zeros, and ones in the last row, so the
    # statistics are known exactly and the far end (where int32 wraps) is checked
    h, w = 32768, 32769
    x = torch.zeros(1, 2, h, w, device="cuda", dtype=torch.float16)
    x[:, :, -1, :] = 1
    p = 1.0 / h
    rm, rv = torch.zeros(2, device="cuda"), torch.ones(2, device="cuda")
    y, mean, inv = bn.batch_norm_forward(_cp(cupy, torch, x), _cp(cupy, torch, rm), _cp(cupy, torch, rv),
                                         None, None, True, 0.1, 1e-5)
    inv_ref = 1.0 / (p * (1 - p) + 1e-5) ** 0.5
    assert abs(torch.from_dlpack(mean).double() - p).max().item() < 1e-9
    assert abs(torch.from_dlpack(inv).double() / inv_ref - 1).max().item() < 1e-4
    yt = torch.from_dlpack(y)
    assert abs(yt[0, :, -1, -8:].double() - (1 - p) * inv_ref).max().item() < 0.2  # ~180, fp16 steps of 0.125
    assert abs(yt[0, :, 0, :8].double() + p * inv_ref).max().item() < 1e-3
    del x, y, yt
    torch.cuda.empty_cache()
