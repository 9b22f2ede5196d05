"""Tensor factories with PyTorch's names (``tensor``, ``zeros``, ``ones``, ``randn``, ``arange``, ...)."""

from __future__ import annotations

import numpy as np

from . import backend
from .random import generator
from .dtypes import as_dtype as _as_dtype
from .dtypes import float32, int64
from .kernels import cast_array
from .tensor import Tensor


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


def _to_array(data, dtype, device):
    """Turn ``data`` into an array on ``device`` with PyTorch's dtype inference."""
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.xp_for_device(device)
    if hasattr(data, "dtype") and hasattr(data, "shape"):  # numpy / cupy array or scalar
        array = backend.to_device(data if hasattr(data, "ndim") else np.asarray(data), device)
        return cast_array(array, dtype) if dtype is not None else array
    try:
        host = np.asarray(data)
    except ValueError:
        where = _ragged(data)
        if where is None:
            raise
        raise ValueError(f"tensor(): {where}") from None
    if host.dtype == object:  # NumPy < 1.24 makes ragged lists object arrays
        where = _ragged(data)
        if where is not None:
            raise ValueError(f"tensor(): {where}")
    if dtype is None:
        if host.dtype.kind == "f":
            dtype = float32  # Python floats become float32, as in PyTorch
        elif host.dtype.kind in "iu":
            dtype = int64
        elif host.dtype.kind != "b":
            raise TypeError(f"tensor(): cannot make a tensor from {type(data).__name__} data")
    return xp.asarray(host if dtype is None else cast_array(host, dtype))


def _is_sequence(x) -> bool:
    return isinstance(x, (list, tuple)) or (hasattr(x, "__len__") and hasattr(x, "shape")
                                            and getattr(x, "ndim", 0) > 0)


def _ragged(data):
    """Where nested sequences ``data`` stop being rectangular, in words (``None`` when
    they are): the first dimension at which two elements differ in length, or where a
    sequence meets a scalar."""
    level, paths = [data], [""]
    for dim in range(64):
        kinds = [_is_sequence(x) for x in level]
        if not any(kinds):
            return None
        if not all(kinds):
            seq, scalar = kinds.index(True), kinds.index(False)
            return (f"ragged nested sequence: at dimension {dim}, data{paths[seq]} is a sequence "
                    f"but data{paths[scalar]} is a scalar ({level[scalar]!r})")
        lengths = [len(x) for x in level]
        for i, n in enumerate(lengths):
            if n != lengths[0]:
                return (f"ragged nested sequence: dimension {dim} has length {lengths[0]} at "
                        f"data{paths[0]} but length {n} at data{paths[i]}; every element along a "
                        "dimension must have the same length")
        level = [y for x in level for y in x]
        paths = [f"{path}[{j}]" for path, n in zip(paths, lengths) for j in range(n)]
    return None


def tensor(data, requires_grad: bool = False, dtype=None, device=None) -> Tensor:
    """Create a tensor that owns a copy of ``data``.

    Args:
        data: array, nested lists, scalar or Tensor.
        requires_grad: record ops on it for backward (floating dtypes only).
        dtype: ``None`` keeps an array's dtype (float64 stays float64); Python floats
            become float32, Python ints int64.
        device: ``"cpu"`` or ``"cuda"``; ``None`` means the current backend's device.
    """
    device = backend.normalize_device(device) if device is not None else backend.device_of_backend()
    dtype = _as_dtype(dtype) if dtype is not None else None
    array = _to_array(data, dtype, device)
    if array is data or (isinstance(data, Tensor) and array is data.data):
        array = array.copy()
    return Tensor(array, requires_grad=requires_grad)
