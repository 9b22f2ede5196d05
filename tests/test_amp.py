"""Mixed precision: bfloat16 tensors (uint16 bit patterns) and ``gk.autocast``.

Autocast in float16 runs on the interpreter (the Triton kernels; same code path as bf16,
other storage); bf16 goes through the Triton elementwise kernels there too. The
interpreter has no bf16 matrix products, so bf16 conv/linear run in the gpu tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.dtypes import from_float32, to_float32
from gpukernels.kernels import add_arrays, cast_array
from benchmarks.torch_twin import torch_twin
from models.cnn import digits_cnn
from tests.helpers import assert_close

VALUES = np.array([0.0, -0.0, 1.0, -2.5, 3.14159, 1e-40, 65504.0, 3.3e38, np.inf, -np.inf], np.float32)


def _torch_bf16_bits(a):
    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).bfloat16().view(torch.int16).numpy().view(np.uint16)


def test_bf16_conversion_rounds_like_torch():
    rng = np.random.default_rng(0)
    a = np.concatenate([VALUES, rng.standard_normal(1000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 1000)])
    bits = from_float32(np, a.astype(np.float32), gk.bfloat16)
    assert bits.dtype == gk.bfloat16
    np.testing.assert_array_equal(bits, _torch_bf16_bits(a))
    np.testing.assert_array_equal(to_float32(np, bits), torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy())


def test_bf16_conversion_keeps_nan_a_nan():
    # a NaN whose payload would carry into the exponent when rounded
    nan = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001], np.uint32).view(np.float32)
    assert np.isnan(to_float32(np, from_float32(np, nan, gk.bfloat16))).all()


def test_bf16_tensors_hold_rounded_values_and_say_so():
    t = gk.tensor([1.0, -2.5, 3.14159], dtype=gk.bfloat16)
    assert t.dtype == gk.bfloat16 and t.data.dtype == np.uint16
    np.testing.assert_array_equal(t.float().numpy(), [1.0, -2.5, 3.140625])
    assert "dtype=bfloat16" in repr(t) and "3.14" in repr(t)
    assert gk.tensor(3.14159).bfloat16().item() == 3.140625
    np.testing.assert_array_equal(gk.ones(3, dtype=gk.bfloat16).float().numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(gk.tensor([0.5, 2.0]).to(gk.bfloat16).to(gk.float16).numpy(), [0.5, 2.0])


@pytest.mark.parametrize("op", [
    lambda t: t + 1.0, lambda t: t * t, lambda t: t.sum(), lambda t: t.mean(), lambda t: t.exp(),
    lambda t: t > 0, lambda t: t.argmax(), lambda t: t @ t,
], ids=["add", "mul", "sum", "mean", "exp", "compare", "argmax", "matmul"])
def test_integer_arithmetic_on_bf16_bits_is_refused(op):
    t = gk.tensor([1.0, -2.0], dtype=gk.bfloat16)
    with pytest.raises(TypeError, match="bfloat16"):
        op(t)


def test_shape_ops_and_casts_take_bf16_with_gradients():
    x = gk.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    y = x.bfloat16().reshape(3, 2).permute(1, 0).float()
    y.backward(gk.ones(2, 3))
    assert y.dtype == gk.float32 and x.grad.dtype == gk.float32
    np.testing.assert_array_equal(x.grad.numpy(), np.ones((2, 3)))


def test_gradient_sums_of_bf16_add_values_not_bits():
    a = from_float32(np, np.array([1.5, -2.0], np.float32), gk.bfloat16)
    b = from_float32(np, np.array([0.25, 3.0], np.float32), gk.bfloat16)
    np.testing.assert_array_equal(to_float32(np, add_arrays(a, b)), [1.75, 1.0])
    assert cast_array(a, gk.bfloat16) is a


def test_numpy_backend_refuses_bf16_kernels_with_a_clear_error():
    x = gk.tensor(np.ones((2, 3), np.float32), dtype=gk.bfloat16)
    with pytest.raises(TypeError, match="bfloat16 needs the Triton kernels"):
        F.relu(x)


@pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")
def test_bf16_elementwise_kernels_and_gradient_accumulation_under_interpret():
    gk.set_backend("interpret")
    rng = np.random.default_rng(0)
    base = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    x = gk.tensor(to_float32(np, from_float32(np, base, gk.bfloat16)), requires_grad=True)
    xb = x.bfloat16()
    # xb feeds two ops: its gradient is a sum of two bf16 arrays
    y = F.add_relu(F.relu(xb), xb)
    pooled = gk.nn.AdaptiveAvgPool2d(1)(F.max_pool2d(y, 2))  # bf16: the pooling kernel, not mean()
    assert pooled.dtype == gk.bfloat16 and pooled.shape == (2, 3, 1, 1)
    g = rng.standard_normal(pooled.shape).astype(np.float32)
    pooled.float().backward(gk.tensor(g))

    x32 = torch.tensor(x.numpy(), requires_grad=True)
    ref = torch.nn.functional.adaptive_avg_pool2d(
        torch.nn.functional.max_pool2d(torch.relu(torch.relu(x32) + x32), 2), 1)
    ref.backward(torch.tensor(g))
    assert_close(pooled.float().numpy(), ref.detach().numpy(), atol=2e-2, rtol=2e-2)
    assert x.grad.dtype == gk.float32
    assert_close(x.grad.numpy(), x32.grad.numpy(), atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")
def test_autocast_float16_step_equals_torch_in_float16_with_float32_master_weights():
    gk.set_backend("interpret")  # the Triton kernels: float16 products, float32 sums
    gk.manual_seed(0)
    model = digits_cnn()
    rng = np.random.default_rng(0)
    xn, yn = rng.standard_normal((16, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 16)
    twin = torch_twin(model, dtype=torch.float16)  # what autocast should compute
    with gk.autocast(gk.float16):
        assert gk.get_autocast_dtype() == gk.float16
        logits = model(gk.tensor(xn))
        loss = F.cross_entropy(logits, gk.tensor(yn))
    assert gk.get_autocast_dtype() is None
    assert logits.dtype == gk.float16 and loss.dtype == gk.float32
    assert all(p.dtype == gk.float32 for p in model.parameters())
    loss.backward()
    ref = torch.nn.functional.cross_entropy(twin(torch.tensor(xn).half()).float(), torch.tensor(yn))
    ref.backward()
    assert abs(loss.item() - ref.item()) <= 1e-5
    for p, q in zip(model.parameters(), twin.parameters()):
        assert p.grad.dtype == gk.float32
        # float16 gradients widened: the twin's, to float16 rounding of its scale
        assert_close(p.grad.numpy(), q.grad.float().numpy(), atol=1e-3 * q.grad.abs().max().item(), rtol=2e-3)


def test_autocast_disabled_and_nested():
    x = gk.tensor(np.ones((2, 3), np.float32))
    w = gk.tensor(np.ones((4, 3), np.float32))
    with gk.autocast(gk.float16, enabled=False):
        assert F.linear(x, w).dtype == gk.float32
    with gk.autocast(gk.float16):
        with gk.autocast(gk.float16, enabled=False):  # a disabled region keeps the outer one
            assert F.linear(x, w).dtype == gk.float16
        assert F.softmax(F.linear(x, w)).dtype == gk.float32


def test_autocast_takes_pytorchs_spelling_too():
    x, w = gk.tensor(np.ones((2, 3), np.float32)), gk.tensor(np.ones((4, 3), np.float32))
    with gk.autocast("cuda", dtype=gk.float16):
        assert F.linear(x, w).dtype == gk.float16
    with gk.autocast("cpu"):  # bf16 by default
        assert gk.get_autocast_dtype() == gk.bfloat16
    with pytest.raises(TypeError, match="dtype given twice"):
        gk.autocast(gk.float16, dtype=gk.bfloat16)


@pytest.mark.parametrize("dtype", [gk.float32, gk.float64, gk.int64])
def test_autocast_rejects_dtypes_it_cannot_compute_in(dtype):
    with pytest.raises(ValueError, match="gk.bfloat16 or gk.float16"):
        gk.autocast(dtype)


def test_bf16_parameters_are_initialised_and_moved_as_values():
    gk.manual_seed(0)
    lin = gk.nn.Linear(8, 4, dtype=gk.bfloat16)
    w = lin.weight.float().numpy()
    bound = 1 / np.sqrt(8)  # kaiming_uniform(a=sqrt(5)) on fan_in 8: U(-1/sqrt(8), 1/sqrt(8))
    assert np.abs(w).max() <= bound * 1.01 and np.abs(w).max() > bound / 4
    back = lin.to(gk.float32)
    np.testing.assert_array_equal(back.weight.numpy(), w)
    again = back.to(gk.bfloat16)
    np.testing.assert_array_equal(again.weight.float().numpy(), w)
