"""Triton dtype conversion: one pass, float32 <-> bf16 / float16 (bf16 as uint16 bits).

``gk.autocast`` converts every weight to bf16 in the forward and every weight gradient
back to float32 in the backward, plus the input batch and the logits: NumPy and CuPy have
no bfloat16, and the bit-pattern arithmetic that emulates the rounding takes six array
passes (and launches); this kernel takes one. Memory traffic: read n * in_size, write
n * out_size (float32 -> bf16: 6 bytes per element). Rounding to nearest even, NaN
stays NaN, as torch's ``.bfloat16()``: bit for bit the reference's, on the GPU and on the
interpreter alike.

No autotuning: a copy-like kernel at a fixed 1024-element block (4 warps) is bandwidth
bound at any reasonable block, and casts come in many sizes (one per weight), each of
which would cost an autotuning run the first time it is seen.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, flat_block, flat_inputs, launch_flat

BLOCK, WARPS = 1024, 4


@triton.jit
def _cast_kernel(x_ptr, y_ptr, n, SRC_BF16: tl.constexpr, DST_BF16: tl.constexpr,
                 INT64: tl.constexpr, BLOCK: tl.constexpr):
    """y = x as y's type. bf16 travels as raw uint16 bits (SRC_BF16 / DST_BF16): widening is
    a shift, narrowing rounds to nearest even by integer arithmetic (NaN -> quiet NaN), so
    the interpreter (whose own bf16 conversion truncates) and the GPU give the same bits."""
    start, offs = flat_block(INT64, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    if SRC_BF16:
        f = (x.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        f = x.to(tl.float32)
    if DST_BF16:
        bits = f.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        y = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, rounded).to(tl.uint16)
    else:
        y = f.to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs, y, mask=mask)


def cast(x, dtype):
    """``x`` converted to ``dtype`` in one kernel pass (a new array, x's dense layout kept).

    Args:
        x: float32 / float16 / bf16-as-uint16 array (CuPy, or NumPy under ``interpret``),
            any shape and strides (dense layouts kept, others copied to C order first).
        dtype: float32, float16 or ``gk.bfloat16`` (uint16).
    """
    dtype = np.dtype(dtype)
    _, (x,), empty = flat_inputs("cast", x=x)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"cast (Triton): float32, float16 or bfloat16 (as uint16) targets, got {dtype}")
    y = empty(dtype)
    # bits: bf16 arrays go in as their uint16 bits, which the kernel converts itself
    launch_flat(_cast_kernel, (x, y), x.size, bits=True, SRC_BF16=x.dtype == np.uint16,
                DST_BF16=dtype == np.uint16, BLOCK=BLOCK, num_warps=WARPS)
    return y
