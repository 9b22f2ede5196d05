"""NumPy reference: elementwise activations, forward and backward.

Every backward reads the saved OUTPUT, never the input, so a layer keeps one tensor:
relu/leaky_relu (slope >= 0) preserve the sign of their input, and sigmoid' = y(1-y),
tanh' = 1 - y^2 (``add_relu_forward`` = relu(a + b), a residual block's sum and ReLU in
one pass, shares ReLU's backward). Memory traffic: forward reads x and writes y; backward reads g and y
and writes the input gradient. Works on numpy and cupy arrays.

ReLU, on every training step's path, splits NumPy's contiguous arrays of 8 MiB (forward:
one operation) or 4 MiB (backward: the mask, then a bool * float multiply) and up into
pieces of the flattened array worked on two threads by ``_parallel.run_pieces`` (why,
and why smaller arrays take the plain expressions: ``_parallel``'s module docstring).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..dtypes import bfloat16, from_float32, to_float32
from . import _parallel


def _large_flat(sweeps, *arrays):
    """The arrays flattened (views) when ``sweeps`` operations over them are worth
    ``_parallel.run_pieces``'s threads (NumPy, C-contiguous, one shape, at least
    ``_parallel.MIN_PARALLEL_BYTES`` of operations), else None: then the plain
    expression is the cheapest."""
    a = arrays[0]
    if (isinstance(a, np.ndarray) and a.nbytes * sweeps >= _parallel.MIN_PARALLEL_BYTES
            and all(isinstance(b, np.ndarray) and b.shape == a.shape and b.flags.c_contiguous
                    for b in arrays)):
        return [b.reshape(-1) for b in arrays]
    return None


def relu_forward(x):
    """y = max(x, 0)."""
    flat = _large_flat(1, x)
    if flat is None:
        return get_array_module(x).maximum(x, 0)
    (xf,) = flat
    y = np.empty_like(x)
    yf = y.reshape(-1)
    _parallel.run_pieces(xf, lambda a, b: np.maximum(xf[a:b], 0, out=yf[a:b]), 1)
    return y


def relu_backward(grad_y, y):
    """dx = g * [y > 0]."""
    flat = _large_flat(2, grad_y, y)
    if flat is None:
        return grad_y * (y > 0)
    gf, yf = flat
    dx = np.empty(grad_y.shape, dtype=np.result_type(grad_y.dtype, np.bool_))
    df = dx.reshape(-1)
    _parallel.run_pieces(gf, lambda a, b: np.multiply(gf[a:b], yf[a:b] > 0, out=df[a:b]), 2)
    return dx


def add_forward(a, b):
    """y = a + b (same shape and dtype): autograd's sum of two gradients of one tensor.
    bf16 bit patterns are added as float32 and rounded once."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add_forward: a shape {tuple(a.shape)} differs from b shape {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"add_forward: a and b must share one dtype, got {a.dtype} and {b.dtype}")
    if a.dtype == bfloat16:
        xp = get_array_module(a, b)
        return from_float32(xp, to_float32(xp, a) + to_float32(xp, b), bfloat16)
    return a + b


def add_relu_forward(a, b):
    """y = max(a + b, 0): a residual block's add and its ReLU in one temporary (reads a
    and b once, writes y once, instead of an add pass then a ReLU pass). The backward is
    ``relu_backward(grad_y, y)``, the gradient of a and of b alike."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add_relu_forward: a shape {tuple(a.shape)} differs from b shape {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"add_relu_forward: a and b must share one dtype, got {a.dtype} and {b.dtype}")
    flat = _large_flat(2, a, b)
    if flat is None:
        xp = get_array_module(a, b)
        y = xp.add(a, b)
        xp.maximum(y, 0, out=y)
        return y
    af, bf = flat
    y = np.empty_like(a, order="C")
    yf = y.reshape(-1)

    def piece(i, j):
        np.add(af[i:j], bf[i:j], out=yf[i:j])
        np.maximum(yf[i:j], 0, out=yf[i:j])

    _parallel.run_pieces(af, piece, 2)
    return y


def leaky_relu_forward(x, negative_slope):
    """y = x if x > 0 else negative_slope * x."""
    return get_array_module(x).where(x > 0, x, x * x.dtype.type(negative_slope))


def leaky_relu_backward(grad_y, y, negative_slope):
    """dx = g if y > 0 else negative_slope * g (negative_slope >= 0, so sign(y) = sign(x))."""
    return get_array_module(y).where(y > 0, grad_y, grad_y * grad_y.dtype.type(negative_slope))


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)), evaluated without overflow for large |x|."""
    xp = get_array_module(x)
    e = xp.exp(-abs(x))  # in (0, 1]: never overflows
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(grad_y, y):
    """dx = g * y * (1 - y)."""
    return grad_y * y * (1 - y)


def tanh_forward(x):
    return get_array_module(x).tanh(x)


def tanh_backward(grad_y, y):
    """dx = g * (1 - y^2)."""
    return grad_y * (1 - y * y)


def heaviside_forward(x, values):
    """y = 0 for x < 0, ``values`` at x == 0, 1 for x > 0 (``torch.heaviside``)."""
    xp = get_array_module(x)
    return xp.where(x > 0, x.dtype.type(1), xp.where(x < 0, x.dtype.type(0), values)).astype(x.dtype)
