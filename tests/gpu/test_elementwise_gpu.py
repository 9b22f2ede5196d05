"""Triton activations, dropout and MSE loss on a real GPU vs PyTorch CUDA: every config
of every kernel forced in turn (a miscompiled config cannot hide behind autotuning), in
float32, float16 and bfloat16 (bf16 travels as uint16 bit patterns), on sizes with and
without a tail, odd 4-D shapes and a channels-last layout; then the autotuned path, and
int64 offsets on tensors of more than 2**31 elements.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1): compiled kernels, not the interpreter."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import gpukernels as gk
from gpukernels.backend import cupy_from_torch, torch_from_cupy
from tests.gpu.helpers import each_config

pytestmark = pytest.mark.gpu

SIZES = [(1,), (7,), (1023,), (1025,), (3 * 4096 + 5,), (1 << 20,), (8, 33, 17, 15)]
DTYPES = ["float32", "float16", "bfloat16"]
# (atol, rtol) against PyTorch: both compute in float32 and round once, but exp and
# division differ by an ulp or two, which the final rounding can push to one storage ulp
TOLS = {"float32": (1e-6, 2e-6), "float16": (1e-5, 1e-3), "bfloat16": (1e-4, 8e-3)}
ACTS = ["relu", "leaky_relu", "sigmoid", "tanh"]
SLOPE = 0.1


@pytest.fixture(scope="module")
def env():
    import cupy
    import torch

    from gpukernels.triton import activation, dropout, loss

    return SimpleNamespace(cupy=cupy, torch=torch, act=activation, drop=dropout, loss=loss)


def _close(env, ours, theirs, dtype_name, label):
    atol, rtol = TOLS[dtype_name]
    a, b = ours.float(), theirs.float()
    assert a.shape == b.shape, f"{label}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    both_nan = a.isnan() & b.isnan()
    ok = ((a - b).abs() <= atol + rtol * b.abs()) | both_nan | (a == b)
    if not bool(ok.all()):
        bad = (~ok).nonzero()[0].tolist()
        raise AssertionError(f"{label}: {int((~ok).sum())}/{ok.numel()} differ; first at {bad}: "
                             f"ours {a[tuple(bad)].item()} vs torch {b[tuple(bad)].item()}")


def _data(env, shape, dtype, seed, scale=4.0):
    torch = env.torch
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(shape, device="cuda", generator=g) * scale).to(getattr(torch, dtype))


def _torch_forward(env, name, x):
    F = env.torch.nn.functional
    return {"relu": env.torch.relu, "leaky_relu": lambda t: F.leaky_relu(t, SLOPE),
            "sigmoid": env.torch.sigmoid, "tanh": env.torch.tanh}[name](x)


def _torch_backward(env, name, g, y):
    """PyTorch's own backward kernels from the saved output (what autograd runs)."""
    aten = env.torch.ops.aten
    if name == "relu":
        return aten.threshold_backward(g, y, 0.0)
    if name == "leaky_relu":
        return aten.leaky_relu_backward(g, y, SLOPE, True)
    return (aten.sigmoid_backward if name == "sigmoid" else aten.tanh_backward)(g, y)


def _check_activations(env, dtype, label, shapes=SIZES, layout=None):
    torch = env.torch
    for shape in shapes:
        x = _data(env, shape, dtype, seed=len(shape) + shape[0])
        g = _data(env, shape, dtype, seed=99, scale=1.0)
        if layout is not None and x.ndim == 4:
            x, g = x.contiguous(memory_format=layout), g.contiguous(memory_format=layout)
        bf16 = x.dtype == torch.bfloat16
        for name in ACTS:
            params = (SLOPE,) if name == "leaky_relu" else ()
            y_ref = _torch_forward(env, name, x)
            y = getattr(env.act, f"{name}_forward")(cupy_from_torch(x), *params)
            _close(env, torch_from_cupy(y, bfloat16=bf16), y_ref, dtype, f"{label} {name} forward {shape}")
            # the backward from torch's saved output, so the two backward kernels see one y
            dx = getattr(env.act, f"{name}_backward")(cupy_from_torch(g), cupy_from_torch(y_ref), *params)
            _close(env, torch_from_cupy(dx, bfloat16=bf16), _torch_backward(env, name, g, y_ref), dtype,
                   f"{label} {name} backward {shape}")
    torch.cuda.synchronize()


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_every_activation_config_matches_torch(env, kind, monkeypatch):
    for cfg in each_config(monkeypatch, env.act.KERNELS[kind], env.act.GPU_CONFIGS):
        for dtype in DTYPES:
            _check_activations(env, dtype, f"{kind} {cfg} {dtype}")


def test_autotuned_activations_match_torch_also_channels_last(env):
    for dtype in DTYPES:
        _check_activations(env, dtype, f"autotuned {dtype}")
        _check_activations(env, dtype, f"channels-last {dtype}", shapes=[(8, 33, 17, 15)],
                           layout=env.torch.channels_last)


def _check_heaviside(env, dtype, label, tensor_values):
    torch = env.torch
    for shape in ((1025,), (8, 33, 17, 15)):
        # integers in [-1, 1]: many exact zeros; no NaN (torch.heaviside gives 0 there,
        # ours and the reference give values)
        x = _data(env, shape, dtype, seed=5).round().clamp(-1, 1)
        bf16 = x.dtype == torch.bfloat16
        if tensor_values:  # per channel for 4-D (a broadcast read), full shape for 1-D
            vshape = (shape[1], 1, 1) if len(shape) == 4 else shape
            values = torch.randn(vshape, device="cuda").to(x.dtype)
            y = env.act.heaviside_forward(cupy_from_torch(x), cupy_from_torch(values))
        else:
            values = torch.tensor(0.5, device="cuda", dtype=x.dtype)
            y = env.act.heaviside_forward(cupy_from_torch(x), 0.5)
        _close(env, torch_from_cupy(y, bfloat16=bf16), torch.heaviside(x, values), dtype, f"{label} {shape}")


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
def test_every_heaviside_config_matches_torch(env, monkeypatch):
    # array values: the strided "heaviside" kernel; a number: the flat "fwd" kernel
    for kind, configs, tensor_values in (("heaviside", env.act.HEAVISIDE_CONFIGS, True),
                                         ("fwd", env.act.GPU_CONFIGS, False)):
        for cfg in each_config(monkeypatch, env.act.KERNELS[kind], configs + [None]):
            for dtype in DTYPES:
                _check_heaviside(env, dtype, f"heaviside {kind} {cfg} {dtype}", tensor_values)


# ----------------------------------------------------------------------------- dropout


def _check_dropout(env, dtype, label, p=0.3):
    torch = env.torch
    scale = torch.tensor(1.0 / (1.0 - p)).to(getattr(torch, dtype)).float().item()  # rounded to the dtype
    for shape in SIZES:
        x = _data(env, shape, dtype, seed=3)
        g = _data(env, shape, dtype, seed=4, scale=1.0)
        bf16 = x.dtype == torch.bfloat16
        gk.manual_seed(17)
        y, mask = env.drop.dropout_forward(cupy_from_torch(x), p)
        gk.manual_seed(17)
        keep = np.asarray(gk.random.generator().random(shape) >= p)  # the reference's draw
        m = torch_from_cupy(mask, bfloat16=bf16).float()
        assert torch.equal((m != 0).cpu(), torch.from_numpy(keep)), f"{label} {shape}: not the host generator's mask"
        assert bool(((m == 0) | (m == scale)).all()), f"{label} {shape}: mask values"
        _close(env, torch_from_cupy(y, bfloat16=bf16), (x.float() * m).to(x.dtype), dtype, f"{label} forward {shape}")
        dx = env.drop.dropout_backward(cupy_from_torch(g), mask)
        _close(env, torch_from_cupy(dx, bfloat16=bf16), (g.float() * m).to(x.dtype), dtype, f"{label} backward {shape}")


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_every_dropout_config_applies_the_host_generators_mask(env, kind, monkeypatch):
    for cfg in each_config(monkeypatch, env.drop.KERNELS[kind], env.drop.GPU_CONFIGS + [None]):
        for dtype in DTYPES:
            _check_dropout(env, dtype, f"dropout {kind} {cfg} {dtype}")


def test_dropout_on_the_cuda_backend_matches_the_numpy_backend(env):
    data = np.random.default_rng(0).standard_normal((16, 3, 9, 9)).astype(np.float32)
    results = []
    for backend_name in ("numpy", "cuda"):
        gk.set_backend(backend_name)
        gk.manual_seed(5)
        x = gk.tensor(data, requires_grad=True)
        y = gk.functional.dropout(x, 0.4)
        y.sum().backward()
        results.append((y.numpy(), x.grad.numpy()))
    assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])


# ----------------------------------------------------------------------------- MSE loss


def _check_mse(env, dtype, label):
    """Loss 'none' and diff vs torch in the dtype; the sums and the gradient vs torch in
    float32 (torch's float16 backward rounds (a - t) * 2 / n to float16, subnormal for
    large n; ours stays in float32 until the store)."""
    torch = env.torch
    rtol = TOLS[dtype][1]
    for shape in SIZES:
        a = _data(env, shape, dtype, seed=6, scale=1.0)
        t = _data(env, shape, dtype, seed=7, scale=1.0)
        bf16 = a.dtype == torch.bfloat16
        for reduction in ("mean", "sum", "none"):
            a32 = a.float().requires_grad_(True)
            loss32 = torch.nn.functional.mse_loss(a32, t.float(), reduction=reduction)
            g = torch.randn(loss32.shape, device="cuda").to(a.dtype)
            loss32.backward(g.float())
            loss, diff = env.loss.mse_loss_forward(cupy_from_torch(a), cupy_from_torch(t), reduction)
            ours = torch_from_cupy(loss, bfloat16=bf16)
            if reduction == "none":
                _close(env, ours, torch.nn.functional.mse_loss(a, t, reduction="none"), dtype,
                       f"{label} none loss {shape}")
            else:  # float32 sums in another order, rounded once to the dtype
                mine, ref = ours.float().item(), loss32.item()
                ref_in_dtype = torch.tensor(ref).to(a.dtype).float().item()
                assert mine == ref_in_dtype or abs(mine - ref) <= 2 * rtol * abs(ref) + 1e-6, \
                    f"{label} {reduction} loss {shape}: {mine} vs {ref}"
            _close(env, torch_from_cupy(diff, bfloat16=bf16), a - t, dtype, f"{label} diff {shape}")
            dx = env.loss.mse_loss_backward(cupy_from_torch(g), diff, reduction)
            # diff is rounded to the dtype before the product: two roundings against float32
            atol, _ = TOLS[dtype]
            d, r = torch_from_cupy(dx, bfloat16=bf16).float(), a32.grad
            ok = (d - r).abs() <= atol * r.abs().max().item() + 2 * rtol * r.abs()
            assert bool(ok.all()), f"{label} {reduction} grad {shape}: max error {(d - r).abs().max().item()}"


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_every_mse_config_matches_torch(env, kind, monkeypatch):
    for cfg in each_config(monkeypatch, env.loss.KERNELS[kind], env.loss.GPU_CONFIGS + [None]):
        for dtype in DTYPES:
            _check_mse(env, dtype, f"mse {kind} {cfg} {dtype}")


# ----------------------------------------------------------------------------- int64 offsets


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
def test_int64_offsets_past_2_to_the_31_elements(env):
    torch = env.torch
    n = 2**31 + 1025  # the far end is where int32 offsets wrap
    x = torch.empty(n, device="cuda", dtype=torch.float16).uniform_(-2, 2)
    cx = cupy_from_torch(x)
    y = env.act.relu_forward(cx)
    ours = torch_from_cupy(y)
    for part in (slice(0, 4096), slice(n - 4096, n)):
        assert torch.equal(ours[part], torch.relu(x[part]))
    dx = env.act.tanh_backward(cx, y)
    ours = torch_from_cupy(dx)
    for part in (slice(0, 4096), slice(n - 4096, n)):
        ref = torch.ops.aten.tanh_backward(x[part], torch.relu(x[part]))
        assert (ours[part].float() - ref.float()).abs().max().item() <= 1e-2
    del y, dx, ours
    t = torch.zeros_like(x)
    loss, diff = env.loss.mse_loss_forward(cx, cupy_from_torch(t), "mean")  # a float16 sum would overflow
    ref = (x.float() ** 2).mean()  # float32 accumulation, as ours
    assert abs(torch_from_cupy(loss).float().item() - ref.item()) <= 1e-2 * ref.item()
    assert torch.equal(torch_from_cupy(diff)[n - 4096:], x[n - 4096:])
