"""Mixed precision: ``gk.autocast``, PyTorch's ``torch.autocast`` for our ops.

Inside ``with gk.autocast(gk.bfloat16):`` the matrix-multiply ops (``conv2d``,
``linear``) take their float32 inputs, weights and biases as bfloat16 (or float16):
tensor-core products with float32 accumulation, half the activation bytes. The casts
are ordinary differentiable ops, so the parameters stay float32 ("master weights") and
their gradients come back float32: optimizers need no change. Batch norm reads the
low-precision activations with float32 weights and statistics (its kernels accumulate
in float32); ReLU, pooling and the residual add keep whatever dtype arrives. The
numerically touchy ops (``cross_entropy``, ``softmax``, ``log_softmax``, ``mse_loss``)
run in float32, as in PyTorch, so a loss is a float32 number.

Memory traffic per step: one cast pass over each weight (read 4 B, write 2 B per
parameter) and one over its gradient; the activations, the largest tensors, move at 2
bytes per element from the first conv on.

Run backward and ``optimizer.step()`` outside the ``with`` block, as with PyTorch.
float16 has a 5-bit exponent: small gradients can underflow without loss scaling (no
``GradScaler`` here); bfloat16 has float32's range and is the one to train with on a GPU.
The Triton interpreter has no bfloat16 matrix arithmetic, so CPU tests use float16.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from .dtypes import bfloat16, dtype_name, float16, float32
from .tensor import Tensor

_state = threading.local()

#: The low-precision dtypes autocast can compute in.
AUTOCAST_DTYPES = (bfloat16, float16)


def get_autocast_dtype():
    """The dtype of the innermost enabled ``autocast`` region, or None outside any."""
    return getattr(_state, "dtype", None)


class autocast(contextlib.ContextDecorator):
    """Run conv2d / linear in ``dtype`` (float32 accumulation) and the losses in float32.

    ``gk.autocast(gk.bfloat16)``, or PyTorch's spelling ``gk.autocast("cuda",
    dtype=gk.bfloat16)`` (the device type is checked, then ignored: the region covers
    every op, whatever the backend).

    Args:
        dtype: ``gk.bfloat16`` (default) or ``gk.float16``.
        enabled: ``False`` makes the region a no-op (handy for a ``--precision`` flag).
    """

    def __init__(self, dtype_or_device=None, dtype=None, enabled: bool = True):
        first = dtype_or_device
        if isinstance(first, str) and first in ("cuda", "cpu"):  # autocast("cuda", dtype=...)
            first = None
        elif first is not None and dtype is not None:
            raise TypeError(f"autocast: dtype given twice ({first!r} and {dtype!r})")
        dtype = dtype if dtype is not None else first if first is not None else bfloat16
        dtype = np.dtype(dtype)
        if dtype not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast: dtype must be gk.bfloat16 or gk.float16, got {dtype_name(dtype)}")
        self.dtype, self.enabled = dtype, bool(enabled)

    def __enter__(self):
        self._previous = get_autocast_dtype()
        _state.dtype = self.dtype if self.enabled else self._previous
        return self

    def __exit__(self, *exc):
        _state.dtype = self._previous
        return False


def low_precision(*tensors):
    """``tensors`` with every float32 one cast to the autocast dtype (None passes);
    the tensors themselves outside autocast."""
    dtype = get_autocast_dtype()
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if isinstance(t, Tensor) and t.dtype == float32 else t for t in tensors)


def full_precision(*tensors):
    """``tensors`` with every float16 / bfloat16 one cast to float32 inside autocast."""
    if get_autocast_dtype() is None:
        return tensors
    return tuple(t.to(float32) if isinstance(t, Tensor) and t.dtype in AUTOCAST_DTYPES else t
                 for t in tensors)
