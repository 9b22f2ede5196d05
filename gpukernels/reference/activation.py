"""Reference elementwise activations, forward and backward (NumPy or CuPy arrays).

    relu        y = max(x, 0)                       dx = g [y > 0]
    add_relu    y = max(a + b, 0)                   da = db = g [y > 0]  (relu_backward)
    leaky_relu  y = x if x > 0 else s x  (s >= 0)   dx = g if y > 0 else s g
    sigmoid     y = 1 / (1 + exp(-x))               dx = g y (1 - y)
    tanh        y = tanh(x)                         dx = g (1 - y^2)
    heaviside   y = 0 (x < 0), v (x == 0), 1 (x > 0)   (no gradient)
    add         y = a + b                           (autograd's sum of two gradients)

Every backward reads the saved OUTPUT, never the input, so a layer keeps one array:
relu and leaky_relu (s >= 0) keep the sign of their input. Results have the input's
dtype. ``add_forward`` is the one function here that takes bf16 (uint16 bit patterns):
it adds them as float32 and rounds once.
"""

from __future__ import annotations

from ..backend import get_array_module
from ..dtypes import bfloat16, from_float32, to_float32


def _check_pair(op, a, b):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{op}: a shape {tuple(a.shape)} differs from b shape {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: a and b must share one dtype, got {a.dtype} and {b.dtype}")


def relu_forward(x):
    """y = max(x, 0)."""
    return get_array_module(x).maximum(x, 0)


def relu_backward(grad_y, y):
    """dx = g * [y > 0]."""
    return grad_y * (y > 0)


def add_forward(a, b):
    """y = a + b (same shape and dtype); bf16 bit patterns are added as float32 and
    rounded once."""
    _check_pair("add_forward", a, b)
    if a.dtype == bfloat16:
        xp = get_array_module(a, b)
        return from_float32(xp, to_float32(xp, a) + to_float32(xp, b), bfloat16)
    return a + b


def add_relu_forward(a, b):
    """y = max(a + b, 0): a residual block's sum and its ReLU (same shape and dtype).
    The backward is ``relu_backward(grad_y, y)``, the gradient of a and of b alike."""
    _check_pair("add_relu_forward", a, b)
    return get_array_module(a, b).maximum(a + b, 0)


def leaky_relu_forward(x, negative_slope):
    """y = x if x > 0 else negative_slope * x."""
    return get_array_module(x).where(x > 0, x, x * x.dtype.type(negative_slope))


def leaky_relu_backward(grad_y, y, negative_slope):
    """dx = g if y > 0 else negative_slope * g (negative_slope >= 0: sign(y) = sign(x))."""
    return get_array_module(y).where(y > 0, grad_y, grad_y * grad_y.dtype.type(negative_slope))


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)), as e / (1 + e) with e = exp(x) for x < 0: exp only sees
    -|x|, so it never overflows."""
    xp = get_array_module(x)
    e = xp.exp(-abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(grad_y, y):
    """dx = g * y * (1 - y)."""
    return grad_y * y * (1 - y)


def tanh_forward(x):
    """y = tanh(x)."""
    return get_array_module(x).tanh(x)


def tanh_backward(grad_y, y):
    """dx = g * (1 - y^2)."""
    return grad_y * (1 - y * y)


def heaviside_forward(x, values):
    """y = 0 for x < 0, ``values`` (broadcast) at x == 0, 1 for x > 0 (``torch.heaviside``)."""
    xp = get_array_module(x)
    return xp.where(x > 0, x.dtype.type(1), xp.where(x < 0, x.dtype.type(0), values)).astype(x.dtype)
