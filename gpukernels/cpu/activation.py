"""The ``numpy`` backend's elementwise activations (formulas: ``gpukernels.reference.activation``).

ReLU, on every training step's path, splits NumPy's contiguous arrays of 8 MiB (forward:
one operation) or 4 MiB (backward: the mask, then a bool * float multiply) and up into
pieces of the flattened array worked on two threads by ``_parallel.run_pieces`` (why,
and why smaller arrays take the plain expressions: ``_parallel``'s module docstring);
the fused residual add + ReLU likewise. Smaller arrays, CuPy arrays and the other
activations run the reference's functions, already the fastest NumPy form (one or two
whole-array operations each). Memory traffic: forward reads x and writes y; backward
reads g and y and writes the input gradient.
"""

from __future__ import annotations

import numpy as np

from ..reference import activation as _ref
from ..reference.activation import (  # noqa: F401 - already the fastest NumPy form
    add_forward,
    heaviside_forward,
    leaky_relu_backward,
    leaky_relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    tanh_backward,
    tanh_forward,
)
from . import _parallel

__all__ = ["relu_forward", "relu_backward", "add_forward", "add_relu_forward", "leaky_relu_forward",
           "leaky_relu_backward", "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
           "heaviside_forward"]


def _large_flat(sweeps, *arrays):
    """The arrays flattened (views) when ``sweeps`` operations over them are worth
    ``_parallel.run_pieces``'s threads (NumPy, C-contiguous, one shape and dtype, at
    least ``_parallel.MIN_PARALLEL_BYTES`` of operations), else None: then the plain
    expression is the cheapest."""
    a = arrays[0]
    if (isinstance(a, np.ndarray) and a.nbytes * sweeps >= _parallel.policy()[1]
            and all(isinstance(b, np.ndarray) and b.shape == a.shape and b.dtype == a.dtype
                    and b.flags.c_contiguous for b in arrays)):
        return [b.reshape(-1) for b in arrays]
    return None


def relu_forward(x):
    """y = max(x, 0)."""
    flat = _large_flat(1, x)
    if flat is None:
        return _ref.relu_forward(x)
    (xf,) = flat
    y = np.empty_like(x)
    yf = y.reshape(-1)
    _parallel.run_pieces(xf, lambda a, b: np.maximum(xf[a:b], 0, out=yf[a:b]), 1)
    return y


def relu_backward(grad_y, y):
    """dx = g * [y > 0]."""
    flat = _large_flat(2, grad_y, y)
    if flat is None:
        return _ref.relu_backward(grad_y, y)
    gf, yf = flat
    dx = np.empty(grad_y.shape, dtype=np.result_type(grad_y.dtype, np.bool_))
    df = dx.reshape(-1)
    _parallel.run_pieces(gf, lambda a, b: np.multiply(gf[a:b], yf[a:b] > 0, out=df[a:b]), 2)
    return dx


def add_relu_forward(a, b):
    """y = max(a + b, 0) in one temporary (reads a and b once, writes y once, instead of
    an add pass then a ReLU pass); the reference checks the arguments of other calls."""
    flat = _large_flat(2, a, b)
    if flat is None:
        return _ref.add_relu_forward(a, b)
    af, bf = flat
    y = np.empty_like(a, order="C")
    yf = y.reshape(-1)

    def piece(i, j):
        np.add(af[i:j], bf[i:j], out=yf[i:j])
        np.maximum(yf[i:j], 0, out=yf[i:j])

    _parallel.run_pieces(af, piece, 2)
    return y
