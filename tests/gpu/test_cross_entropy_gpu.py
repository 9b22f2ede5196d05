"""Triton softmax / log-softmax / fused cross-entropy on a real GPU vs PyTorch CUDA: every
tile config forced in turn (a miscompiled config cannot hide behind autotuning), the
autotuned kernels in float32, float16 and bfloat16 (bf16 travels as uint16 bit
patterns), every reduction with label smoothing and ignored rows, broadcast upstream
gradients, and int64 offsets on logits of more than 2**31 elements.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1): compiled kernels, not the interpreter."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend
from gpukernels.backend import cupy_from_torch, torch_from_cupy
from tests.gpu.helpers import each_config, gpu_env

pytestmark = pytest.mark.gpu

IGNORE = -100
# (N, C): one-read rows of every BLOCK size, two-sweep rows (C > 16384), odd tails
CASES = [(64, 10), (257, 1000), (33, 4097), (8, 32768), (5, 40000)]


@pytest.fixture(scope="module")
def env():
    return gpu_env("cross_entropy")


def _data(torch, n, c, dtype, seed=0, ignore=True):
    g = torch.Generator(device="cuda").manual_seed(seed)
    z = (3 * torch.randn(n, c, device="cuda", generator=g)).to(dtype)
    t = torch.randint(0, c, (n,), device="cuda", generator=g)
    if ignore:
        t[1::4] = IGNORE
    return z, t


def _close(ours, theirs, rtol, label):
    """max |ours - theirs| <= rtol * max |theirs| (in float32), and no NaN of our own."""
    ours, theirs = ours.float(), theirs.float()
    assert ours.shape == theirs.shape, f"{label}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    assert not bool(ours.isnan().any()) or bool(theirs.isnan().any()), f"{label}: NaN where PyTorch has none"
    err = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    scale = theirs.abs().max().item() + 1e-12 if theirs.numel() else 1.0
    assert err <= rtol * scale, f"{label}: max abs error {err:.3g}, scale {scale:.3g}"


def _ce_both(env, z, t, reduction, eps, g=None):
    """((our loss, our final gradient), (PyTorch's loss, PyTorch's gradient)) for logits z
    and targets t, the backward fed the same upstream gradient g (random if None)."""
    _, torch, tri = env
    dtype = z.dtype
    zr = z.detach().clone().requires_grad_(True)
    loss_ref = torch.nn.functional.cross_entropy(zr, t, reduction=reduction, ignore_index=IGNORE,
                                                 label_smoothing=eps)
    if g is None:
        g = torch.rand(loss_ref.shape, device="cuda") + 0.5
    loss_ref.backward(g.to(loss_ref.dtype))
    loss, grad = tri.cross_entropy_forward(cupy_from_torch(z.contiguous()), cupy_from_torch(t), reduction, IGNORE, eps)
    cg = cupy_from_torch(g.to(dtype).contiguous())
    if reduction != "none":
        cg = cg.reshape(())
    d = tri.cross_entropy_backward(cg, grad, reduction)
    bf16 = dtype == torch.bfloat16
    ours = (torch_from_cupy(loss, bfloat16=bf16), torch_from_cupy(d, bfloat16=bf16))
    return ours, (loss_ref.detach(), zr.grad)


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
@pytest.mark.parametrize("kind", ["ce_fwd", "ce_bwd"])
def test_every_cross_entropy_config_in_float32(env, kind, monkeypatch):
    cupy, torch, tri = env
    for cfg in each_config(monkeypatch, tri.KERNELS[kind], tri.GPU_CONFIGS[kind]):
        for n, c in CASES:
            z, t = _data(torch, n, c, torch.float32, seed=n)
            (loss, d), (loss_ref, d_ref) = _ce_both(env, z, t, "mean", 0.1)
            _close(loss, loss_ref, 1e-5, f"{kind} {cfg} {n}x{c} loss")
            _close(d, d_ref, 1e-5, f"{kind} {cfg} {n}x{c} grad")


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
@pytest.mark.parametrize("kind", ["softmax_fwd", "softmax_bwd"])
def test_every_softmax_config_in_float32(env, kind, monkeypatch):
    cupy, torch, tri = env
    for cfg in each_config(monkeypatch, tri.KERNELS[kind], tri.GPU_CONFIGS[kind]):
        for n, c in CASES:
            x = torch.randn(n, c, device="cuda")
            gy = torch.randn(n, c, device="cuda")
            for log in (False, True):
                fwd = tri.log_softmax_forward if log else tri.softmax_forward
                bwd = tri.log_softmax_backward if log else tri.softmax_backward
                xr = x.clone().requires_grad_(True)
                yr = torch.log_softmax(xr, 1) if log else torch.softmax(xr, 1)
                yr.backward(gy)
                y = fwd(cupy_from_torch(x), 1)
                dx = bwd(cupy_from_torch(gy), y, 1)
                _close(torch_from_cupy(y), yr.detach(), 1e-5, f"{kind} {cfg} {n}x{c} log={log} y")
                _close(torch_from_cupy(dx), xr.grad, 1e-5, f"{kind} {cfg} {n}x{c} log={log} dx")


@pytest.mark.parametrize("dtype_name, rtol", [("float32", 1e-5), ("float16", 2e-3), ("bfloat16", 1e-2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_autotuned_cross_entropy_matches_pytorch(env, dtype_name, rtol, reduction):
    cupy, torch, tri = env
    dtype = getattr(torch, dtype_name)
    for n, c in [(4096, 1000), (64, 32768), (1025, 3)]:
        for eps in (0.0, 0.1):
            z, t = _data(torch, n, c, dtype, seed=c)
            (loss, d), (loss_ref, d_ref) = _ce_both(env, z, t, reduction, eps)
            assert loss.shape == loss_ref.shape
            _close(loss, loss_ref, rtol, f"{dtype_name} {reduction} eps={eps} {n}x{c} loss")
            _close(d, d_ref, rtol, f"{dtype_name} {reduction} eps={eps} {n}x{c} grad")


def test_logits_of_1e4_and_a_broadcast_upstream_gradient(env):
    cupy, torch, tri = env
    z = 1e4 * torch.randn(256, 5000, device="cuda")
    t = torch.randint(0, 5000, (256,), device="cuda")
    (loss, d), (loss_ref, d_ref) = _ce_both(env, z, t, "none", 0.1)
    assert torch.isfinite(loss).all() and torch.isfinite(d).all()
    _close(loss, loss_ref, 1e-5, "1e4 loss")
    _close(d, d_ref, 1e-5, "1e4 grad")
    _, grad = tri.cross_entropy_forward(cupy_from_torch(z), cupy_from_torch(t), "none", IGNORE, 0.0)
    g = cupy.broadcast_to(cupy.asarray(2.5, dtype=cupy.float32), (256,))  # stride 0
    assert g.strides == (0,)
    out = tri.cross_entropy_backward(g, grad, "none")
    assert cupy.allclose(out, 2.5 * grad, rtol=1e-6)


def test_gradient_is_a_fresh_buffer_and_bad_targets_raise(env):
    cupy, torch, tri = env
    z, t = _data(torch, 16, 100, torch.float32)
    cz, ct = cupy_from_torch(z), cupy_from_torch(t)
    before = cz.copy()
    _, grad = tri.cross_entropy_forward(cz, ct, "mean", IGNORE, 0.0)
    assert not cupy.shares_memory(grad, cz) and bool((cz == before).all())
    ct = ct.copy()
    ct[5] = 100
    with pytest.raises(ValueError, match=r"target\[5\] = 100 is not a class index in \[0, 100\)"):
        tri.cross_entropy_forward(cz, ct, "mean", IGNORE, 0.0)


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
def test_int64_offsets_past_2_to_the_31_elements(env):
    cupy, torch, tri = env
    n, c = 2**31 // 32768 + 3, 32768  # 2**31 + 98304 bf16 logits (4 GiB), as many gradients
    z = torch.randn(n, c, device="cuda", dtype=torch.bfloat16)
    t = torch.randint(0, c, (n,), device="cuda")
    loss, grad = tri.cross_entropy_forward(cupy_from_torch(z), cupy_from_torch(t), "none", IGNORE, 0.0)
    ours_loss = torch_from_cupy(loss, bfloat16=True)
    ours_grad = torch_from_cupy(grad, bfloat16=True)
    for rows in (slice(0, 4), slice(n - 4, n)):  # the far end is where int32 offsets wrap
        zr = z[rows].float().requires_grad_(True)
        ref = torch.nn.functional.cross_entropy(zr, t[rows], reduction="none")
        ref.sum().backward()
        _close(ours_loss[rows], ref.detach(), 1e-2, f"int64 loss rows {rows}")
        _close(ours_grad[rows], zr.grad, 1e-2, f"int64 grad rows {rows}")


def test_functional_cross_entropy_on_cuda_dispatches_to_triton(env):
    cupy, torch, tri = env
    gk.set_backend("cuda")
    rng = np.random.default_rng(0)
    z = rng.standard_normal((33, 10)).astype(np.float32)
    t = rng.integers(0, 10, 33)
    x = gk.tensor(z, requires_grad=True, device="cuda")
    loss = gk.functional.cross_entropy(x, gk.tensor(t, device="cuda"), label_smoothing=0.1)
    assert backend.last_dispatch["cross_entropy"] == "gpukernels.triton.cross_entropy"
    loss.backward()
    zr = torch.tensor(z, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(zr, torch.tensor(t), label_smoothing=0.1)
    ref.backward()
    assert abs(float(loss.numpy()) - ref.item()) < 1e-5
    np.testing.assert_allclose(x.grad.numpy(), zr.grad.numpy(), atol=1e-6, rtol=1e-4)
