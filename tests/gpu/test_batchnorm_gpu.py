"""Triton batch norm on a real GPU vs PyTorch CUDA (torch.nn.functional.batch_norm):
every config of every autotuned kernel forced in turn (a miscompiled config cannot hide
behind autotuning), NCHW and channels-last, float32, float16 and bfloat16 (as uint16
bits) with float32 weights and running statistics, the finalize-kernel path, a mean of
1000, eval mode, and int64 offsets on a tensor of more than 2**31 elements.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1): compiled kernels, not the interpreter."""

from __future__ import annotations

import pytest

from gpukernels.backend import cupy_from_torch, torch_from_cupy
from tests.gpu.helpers import assert_close_each, each_config, gpu_env

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
    return gpu_env("batchnorm")


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
    _, torch, bn = env
    x, gy, w, b, rm, rv = _data(torch, shape, dtype, channels_last, seed, offset)
    xs, ws, bs = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    rm_ref, rv_ref = rm.double(), rv.double()
    y_ref = torch.nn.functional.batch_norm(xs, rm_ref, rv_ref, ws, bs, training, 0.1, 1e-5)
    y_ref.backward(gy.double())
    rm_ours, rv_ours = rm.clone(), rv.clone()
    cx, cg = cupy_from_torch(x), cupy_from_torch(gy)
    y, mean, inv = bn.batch_norm_forward(cx, cupy_from_torch(rm_ours), cupy_from_torch(rv_ours),
                                         cupy_from_torch(w), cupy_from_torch(b), training, 0.1, 1e-5)
    dx, dg, db = bn.batch_norm_backward(cg, cx, mean, inv, cupy_from_torch(w), training)
    bf16 = dtype == torch.bfloat16
    ours = [torch_from_cupy(y, bfloat16=bf16), torch_from_cupy(dx, bfloat16=bf16), torch_from_cupy(dg),
            torch_from_cupy(db), rm_ours, rv_ours]
    theirs = [y_ref, xs.grad, ws.grad, bs.grad, rm_ref, rv_ref]
    if channels_last and len(shape) == 4:
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
    return [t.float() for t in ours], [t.float() for t in theirs]


def _assert_close(ours, theirs, rtol, label):
    assert_close_each(("y", "grad_x", "grad_w", "grad_b", "running_mean", "running_var"), ours, theirs, rtol, label)


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
@pytest.mark.parametrize("kind", ["stats", "fwd_apply", "bwd_reduce", "bwd_apply"])
def test_every_config_is_correct_in_float32(env, kind, monkeypatch):
    cupy, torch, bn = env
    for cfg in each_config(monkeypatch, bn.KERNELS[kind], bn.GPU_CONFIGS[kind]):
        for shape, cl in CASES:
            for training in (True, False):
                _assert_close(*_run_both(env, shape, torch.float32, cl, training), 1e-5,
                              f"{kind} {cfg} {shape} cl={cl} training={training}")


@pytest.mark.parametrize("dtype_name, rtol", [("float32", 1e-5), ("float16", 4e-3), ("bfloat16", 2e-2)])
def test_autotuned_kernels_match_pytorch(env, dtype_name, rtol):
    cupy, torch, bn = env
    for shape, cl in CASES:
        _assert_close(*_run_both(env, shape, getattr(torch, dtype_name), cl), rtol, f"{dtype_name} {shape} cl={cl}")


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
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


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
def test_int64_offsets_past_2_to_the_31_elements(env):
    cupy, torch, bn = env
    # 2 x 32768 x 32769 > 2**31 half values: zeros, and ones in the last row, so the
    # statistics are known exactly and the far end (where int32 wraps) is checked
    h, w = 32768, 32769
    x = torch.zeros(1, 2, h, w, device="cuda", dtype=torch.float16)
    x[:, :, -1, :] = 1
    p = 1.0 / h
    rm, rv = torch.zeros(2, device="cuda"), torch.ones(2, device="cuda")
    y, mean, inv = bn.batch_norm_forward(cupy_from_torch(x), cupy_from_torch(rm), cupy_from_torch(rv),
                                         None, None, True, 0.1, 1e-5)
    inv_ref = 1.0 / (p * (1 - p) + 1e-5) ** 0.5
    assert abs(torch_from_cupy(mean).double() - p).max().item() < 1e-9
    assert abs(torch_from_cupy(inv).double() / inv_ref - 1).max().item() < 1e-4
    yt = torch_from_cupy(y)
    assert abs(yt[0, :, -1, -8:].double() - (1 - p) * inv_ref).max().item() < 0.2  # ~180, fp16 steps of 0.125
    assert abs(yt[0, :, 0, :8].double() + p * inv_ref).max().item() < 1e-3
    del x, y, yt
    torch.cuda.empty_cache()
