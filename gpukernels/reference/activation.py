"""NumPy reference: elementwise activations, forward and backward.

Every backward reads the saved OUTPUT, never the input, so a layer keeps one tensor:
relu/leaky_relu (slope >= 0) preserve the sign of their input, and sigmoid' = y(1-y),
tanh' = 1 - y^2. Memory traffic: forward reads x and writes y; backward reads g and y
and writes the input gradient. Works on numpy and cupy arrays.
"""

from __future__ import annotations

from ..backend import get_array_module


def relu_forward(x):
    """y = max(x, 0)."""
    return get_array_module(x).maximum(x, 0)


def relu_backward(grad_y, y):
    """dx = g * [y > 0]."""
    return grad_y * (y > 0)


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
