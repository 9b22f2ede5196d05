"""Reference dtype conversion, bfloat16 (uint16 bit patterns) included (NumPy or CuPy).

y = x as ``dtype``; float32 -> bf16 rounds to nearest even (NaN stays NaN), bf16 ->
float32 is exact. Other conversions are the array library's ``astype``."""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..dtypes import bfloat16, from_float32, to_float32


def cast(x, dtype):
    """``x`` converted to ``dtype`` (a new array, even when the dtype is x's own).

    Args:
        x: float16 / float32 / float64 / bf16-as-uint16 array, any shape and strides.
        dtype: the target dtype (``gk.bfloat16`` for bf16 bits).
    """
    xp, dtype = get_array_module(x), np.dtype(dtype)
    if dtype == bfloat16:
        return from_float32(xp, x.astype(np.float32) if x.dtype != bfloat16 else to_float32(xp, x), bfloat16)
    if x.dtype == bfloat16:
        return to_float32(xp, x).astype(dtype, copy=False)
    return x.astype(dtype)
