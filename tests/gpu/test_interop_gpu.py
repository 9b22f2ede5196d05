"""``backend.cupy_from_torch`` / ``backend.torch_from_cupy`` on a real GPU: zero-copy views
both ways (same pointer, shape and strides, writes seen through the other side), bf16
carried as uint16 bit patterns, and a round trip that gives back the same tensor.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1)."""

from __future__ import annotations

import pytest

from gpukernels.backend import cupy_from_torch, torch_from_cupy

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def libs():
    import cupy
    import torch

    return cupy, torch


def _byte_strides(t):
    return tuple(s * t.element_size() for s in t.stride())


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16", "int64"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_views_share_memory_and_strides_both_ways(libs, dtype_name, layout):
    cupy, torch = libs
    dtype = getattr(torch, dtype_name)
    t = (100 * torch.randn(2, 3, 4, 5, device="cuda")).to(dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        t = t.transpose(1, 3)
    bf16 = dtype == torch.bfloat16

    a = cupy_from_torch(t)
    assert a.dtype == (cupy.uint16 if bf16 else cupy.dtype(dtype_name))
    assert a.shape == tuple(t.shape) and a.strides == _byte_strides(t)
    assert a.data.ptr == t.data_ptr()
    if bf16:  # the bit patterns, untouched
        assert cupy.array_equal(a.view(cupy.int16), cupy.from_dlpack(t.view(torch.int16)))
    else:
        assert cupy.array_equal(a, cupy.asarray(t.cpu().numpy()))

    back = torch_from_cupy(a, bfloat16=bf16)
    assert back.dtype == dtype and back.shape == t.shape and back.stride() == t.stride()
    assert back.data_ptr() == t.data_ptr() and torch.equal(back, t)

    a[0, 0, 0, 0] = 0  # a write through CuPy shows in both torch tensors (0 bits are 0.0 in bf16)
    torch.cuda.synchronize()
    assert t[0, 0, 0, 0].item() == 0 and back[0, 0, 0, 0].item() == 0


def test_cupy_arrays_come_back_as_torch_views(libs):
    cupy, torch = libs
    a = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)[:, ::2]  # strided, not contiguous
    t = torch_from_cupy(a)
    assert t.dtype == torch.float32 and tuple(t.shape) == a.shape and _byte_strides(t) == a.strides
    assert t.data_ptr() == a.data.ptr
    assert torch.equal(t.cpu(), torch.tensor([[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]]))
    t.add_(1)  # a write through torch shows in CuPy
    torch.cuda.synchronize()
    assert float(a[2, 1]) == 11.0
    assert cupy_from_torch(t).data.ptr == a.data.ptr


def test_uint16_bits_read_as_bf16_only_when_asked(libs):
    cupy, torch = libs
    one, half = 0x3F80, 0x3F00  # bf16 bits of 1.0 and 0.5
    bits = cupy.array([one, half], dtype=cupy.uint16)
    t = torch_from_cupy(bits, bfloat16=True)
    assert t.dtype == torch.bfloat16 and t.tolist() == [1.0, 0.5]
    raw = torch_from_cupy(bits)  # no bf16 asked: the same bits as int16
    assert raw.dtype == torch.int16 and raw.tolist() == [one, half]
    assert raw.data_ptr() == t.data_ptr() == bits.data.ptr
    with pytest.raises(TypeError, match="uint16"):
        torch_from_cupy(cupy.zeros(2, cupy.float32), bfloat16=True)
