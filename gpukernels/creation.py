"""Tensor factories with PyTorch's names (``zeros``, ``ones``, ``randn``, ``arange``)."""

from __future__ import annotations

import numpy as np

from . import backend
from .random import generator
from .tensor import Tensor, _as_dtype, cast_array, float32


def _shape(size):
    return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)


def _xp(device):
    return backend.xp_for_device(
        backend.normalize_device(device) if device is not None else backend.device_of_backend()
    )


def zeros(*size, dtype=float32, device=None, requires_grad=False) -> Tensor:
    return Tensor(_xp(device).zeros(_shape(size), dtype=_as_dtype(dtype)), requires_grad)


def ones(*size, dtype=float32, device=None, requires_grad=False) -> Tensor:
    return Tensor(cast_array(_xp(device).ones(_shape(size), np.float32), _as_dtype(dtype)), requires_grad)


def zeros_like(t: Tensor, requires_grad=False) -> Tensor:
    return Tensor(backend.get_array_module(t.data).zeros_like(t.data), requires_grad)


def ones_like(t: Tensor, requires_grad=False) -> Tensor:
    ones = backend.get_array_module(t.data).ones(t.data.shape, np.float32)
    return Tensor(cast_array(ones, t.dtype), requires_grad)


def randn(*size, dtype=float32, device=None, requires_grad=False) -> Tensor:
    """Standard normal samples from the library generator (``gk.manual_seed``)."""
    host = cast_array(generator().standard_normal(_shape(size)), _as_dtype(dtype))
    return Tensor(_xp(device).asarray(host), requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None) -> Tensor:
    if end is None:
        start, end = 0, start
    data = _xp(device).arange(start, end, step)
    if dtype is not None:
        data = cast_array(data, _as_dtype(dtype))
    elif data.dtype.kind == "f":
        data = data.astype(float32)
    return Tensor(data)
