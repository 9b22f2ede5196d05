"""The library's dtypes and its one representation of bfloat16: a leaf module.

NumPy and CuPy have no bfloat16 (8-bit exponent, 7-bit mantissa), so a bf16 array keeps
its bit patterns in ``uint16`` (what ``torch.bfloat16.view(torch.int16)`` holds) and
``gk.bfloat16 is numpy.dtype("uint16")``; the library has no unsigned 16-bit integer
tensors. Integer arithmetic on those bits would be silently wrong, so bf16 tensors only
go through the ops that know (``Function.bf16``): the fused kernels of ``gk.functional``
on the Triton backends, shape ops, casts and gradient sums.

Everything that converts bf16 comes here (``from_float32`` / ``to_float32``), so the
rounding rule has one owner. Imports NumPy only: every layer, the kernel packages
included, may import it.
"""

from __future__ import annotations

import numpy as np

float16, float32, float64 = np.dtype("float16"), np.dtype("float32"), np.dtype("float64")
int32, int64, bool_ = np.dtype("int32"), np.dtype("int64"), np.dtype("bool")
bfloat16 = np.dtype("uint16")

#: The floating-point dtypes a tensor may hold (bf16 as its uint16 storage).
FLOATS = (float16, float32, float64, bfloat16)


def from_float32(xp, a32, dtype):
    """float32 values stored as ``dtype`` (bf16 bit patterns: round to nearest even;
    NaN stays NaN)."""
    if np.dtype(dtype) != bfloat16:
        return a32.astype(dtype, copy=False)  # float32 stays as it is: no extra pass
    bits = xp.ascontiguousarray(a32, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    # the rounding carry could turn a NaN payload into inf or -0: keep NaNs quiet NaNs
    # (a select, not a host-side any(): no device sync, and CUDA-graph safe)
    return xp.where((bits & 0x7FFFFFFF) > 0x7F800000, np.uint16(0x7FC0), rounded).astype(np.uint16, copy=False)


def to_float32(xp, a):
    """The float32 values of ``a`` (bf16 bit patterns widened exactly)."""
    if a.dtype != bfloat16:
        return a.astype(np.float32)
    return (xp.ascontiguousarray(a).astype(np.uint32) << 16).view(np.float32)


def dtype_name(dtype) -> str:
    """``"bfloat16"`` for the bf16 storage dtype, NumPy's name otherwise."""
    return "bfloat16" if np.dtype(dtype) == bfloat16 else np.dtype(dtype).name


def as_dtype(dtype):
    """``numpy.dtype(dtype)``, or a TypeError that shows what was received."""
    try:
        return np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be a NumPy dtype or its name, got {dtype!r}") from exc
