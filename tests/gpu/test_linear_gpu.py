"""Triton linear layer on a real GPU vs PyTorch CUDA (cuBLAS): every tile config of every
GEMM (forward, grad-x, grad-W with fused grad-b) forced in turn in its element width
(a miscompiled config cannot hide behind autotuning), float32 in full precision and
TF32, float16 and bfloat16 (bf16 travels as uint16 bit patterns), split-K, strided
operands, and int64 offsets on a tensor of more than 2**31 elements.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1): compiled kernels, not the interpreter."""

from __future__ import annotations

import pytest

from gpukernels import backend
from gpukernels.backend import cupy_from_torch, torch_from_cupy
from tests.gpu.helpers import assert_close_each, each_config, gpu_env, run_both

pytestmark = pytest.mark.gpu

CASES = [  # (leading batch dims, in_features, out_features)
    ((256,), 512, 384),  # multiples of 16: aligned, vectorised loads
    ((33,), 130, 7),  # odd everything: unaligned rows, N tail
    ((512,), 128, 10),  # digits classifier
    ((4, 300), 64, 10),  # leading dims; batch 1200 in grad-W's K
    ((8192,), 64, 64),  # a long batch: grad-W splits its K
]


@pytest.fixture(scope="module")
def env():
    return gpu_env("linear")


def _run_both(env, case, dtype, seed=0, transposed_weight=False):
    _, torch, linear = env
    lead, i, o = case
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(*lead, i, device="cuda", generator=g).to(dtype)
    w = (torch.randn(o, i, device="cuda", generator=g) / i ** 0.5).to(dtype)
    if transposed_weight:  # same values, column-major memory
        w = w.t().contiguous().t()
    b = torch.randn(o, device="cuda", generator=g).to(dtype)
    gy = torch.randn(*lead, o, device="cuda", generator=g).to(dtype)

    def ours(cx, cw, cb, cgy):
        y = linear.linear_forward(cx, cw, cb)
        return (y, *linear.linear_backward(cgy, cx, cw))

    return run_both(ours, torch.nn.functional.linear, (x, w, b), gy, dtype == torch.bfloat16)


def _assert_close(ours, theirs, rtol, label):
    assert_close_each(("y", "grad_x", "grad_w", "grad_b"), ours, theirs, rtol, label)


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
@pytest.mark.parametrize("kind", ["fwd", "dgrad", "wgrad"])
def test_every_float32_config_is_correct_in_full_float32(env, kind, monkeypatch):
    cupy, torch, linear = env
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    backend.set_allow_tf32(False)
    try:
        for cfg in each_config(monkeypatch, linear.KERNELS[(kind, "fp32")], linear.GPU_CONFIGS[(kind, "fp32")]):
            for case in CASES:
                _assert_close(*_run_both(env, case, torch.float32), 1e-4, f"{kind} {cfg} {case}")
    finally:
        backend.set_allow_tf32(True)


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
@pytest.mark.parametrize("kind", ["fwd", "dgrad", "wgrad"])
def test_every_16bit_config_is_correct_in_bf16_and_fp16(env, kind, monkeypatch):
    cupy, torch, linear = env
    for cfg in each_config(monkeypatch, linear.KERNELS[(kind, "16bit")], linear.GPU_CONFIGS[(kind, "16bit")]):
        for case in CASES:
            _assert_close(*_run_both(env, case, torch.bfloat16), 3e-2, f"{kind} {cfg} {case} bf16")
            _assert_close(*_run_both(env, case, torch.float16), 1e-2, f"{kind} {cfg} {case} fp16")


@pytest.mark.parametrize("dtype_name, rtol", [("float32", 5e-3), ("float16", 1e-2), ("bfloat16", 3e-2)])
def test_autotuned_kernels_match_cublas_in_tf32_fp16_bf16(env, dtype_name, rtol, monkeypatch):
    cupy, torch, linear = env
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)  # TF32 on both sides
    for case in CASES:
        dtype = getattr(torch, dtype_name)
        _assert_close(*_run_both(env, case, dtype), rtol, f"{dtype_name} {case}")
        _assert_close(*_run_both(env, case, dtype, transposed_weight=True), rtol, f"{dtype_name} {case} W^T")


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
def test_int64_offsets_past_2_to_the_31_elements(env):
    cupy, torch, linear = env
    rows, i, o = 2**21 + 3, 1024, 8  # x: 2**31 + 3072 elements
    x = torch.randn(rows, i, device="cuda", dtype=torch.float16)
    w = torch.randn(o, i, device="cuda", dtype=torch.float16) / 32
    y = torch_from_cupy(linear.linear_forward(cupy_from_torch(x), cupy_from_torch(w), None))
    for sl in (slice(0, 4), slice(rows - 4, rows)):  # the far end is where int32 wraps
        ref = x[sl].float() @ w.float().t()
        assert (y[sl].float() - ref).abs().max().item() < 5e-2
    gy = torch.zeros(rows, o, device="cuda", dtype=torch.float16)
    gy[-2:] = 1  # only the last rows contribute to dW: a wrapped offset would miss them
    _, gw, gb = linear.linear_backward(cupy_from_torch(gy), cupy_from_torch(x), cupy_from_torch(w),
                                       needs=(False, True, True))
    ref = x[-2:].float().sum(dim=0)
    assert (torch_from_cupy(gw).float() - ref[None, :]).abs().max().item() < 5e-2
    assert torch.equal(torch_from_cupy(gb).float(), torch.full((o,), 2.0, device="cuda"))
