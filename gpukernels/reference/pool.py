"""Reference 2-d max and average pooling, forward and backward (NumPy or CuPy arrays).

``X[n, c, k, p, q]`` is the padded input at tap k = (i, j) of output pixel (p, q):
(p*sh + i*dh, q*sw + j*dw), k = i*KW + j (``_windows.windows``). Padding counts as
-inf for max and 0 for average pooling.

  max forward   y[n, c, p, q] = max_k X[n, c, k, p, q]
                a[n, c, p, q] = the FIRST k with X[n, c, k, p, q] == y (PyTorch's tie
                                rule; 0 when y is NaN, which equals nothing)
  max backward  dX[n, c, k, p, q] = dy[n, c, p, q] [a == k], added back at the pixel
                each tap read (``_windows.scatter_windows``): overlapping windows sum
  avg forward   y = sum_k X / D
  avg backward  dX[n, c, k, p, q] = dy[n, c, p, q] / D[p, q], added back likewise

D = KH*KW, or with ``count_include_pad=False`` the number of real (non-padding) pixels
in the window (the window sum of an image of ones). Average pooling has no dilation.

``a`` is an opaque state between this module's forward and backward; it is kept as
``gpukernels.cpu.pool`` keeps it, in (OH, OW, N, C) order, int8 (int32 for windows of
128 taps or more), so the two agree element for element. Results have x's dtype.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..shapes import pair
from ._windows import scatter_windows, windows


def max_pool2d_forward(x, kernel, stride, padding, dilation):
    """Returns (y, argmax): y (N, C, OH, OW), argmax the first maximum's tap."""
    xp = get_array_module(x)
    taps = windows(x, kernel, stride, padding, dilation, -np.inf)
    y = taps.max(axis=2)
    argmax = (taps == y[:, :, None]).argmax(axis=2)
    index_dtype = np.int8 if taps.shape[2] < 128 else np.int32
    return y, xp.ascontiguousarray(argmax.astype(index_dtype).transpose(2, 3, 0, 1))


def max_pool2d_backward(grad_y, argmax, x_shape, kernel, stride, padding, dilation):
    """dx: each window's dy added at its argmax (a select, so inf * 0 makes no NaN)."""
    xp = get_array_module(grad_y)
    a = argmax.transpose(2, 3, 0, 1)[:, :, None]  # (N, C, 1, OH, OW)
    taps = xp.arange(pair(kernel)[0] * pair(kernel)[1]).reshape(1, 1, -1, 1, 1)
    parts = xp.where(a == taps, grad_y[:, :, None], grad_y.dtype.type(0))
    return scatter_windows(parts, x_shape, kernel, stride, padding, dilation)


def _divisor(x_shape, kernel, stride, padding, count_include_pad, xp, dtype):
    """KH*KW, or per output pixel the number of real inputs its window averages."""
    if count_include_pad:
        return dtype.type(pair(kernel)[0] * pair(kernel)[1])
    ones = xp.ones((1, 1) + tuple(x_shape[2:]), dtype=dtype)
    return windows(ones, kernel, stride, padding, 1, 0).sum(axis=2)


def avg_pool2d_forward(x, kernel, stride, padding, count_include_pad=True):
    """y = the window sum / D."""
    xp = get_array_module(x)
    total = windows(x, kernel, stride, padding, 1, 0).sum(axis=2)
    return total / _divisor(x.shape, kernel, stride, padding, count_include_pad, xp, x.dtype)


def avg_pool2d_backward(grad_y, x_shape, kernel, stride, padding, count_include_pad=True):
    """dx = the sum, over the windows covering each input, of dy / D."""
    xp = get_array_module(grad_y)
    share = grad_y / _divisor(x_shape, kernel, stride, padding, count_include_pad, xp, grad_y.dtype)
    k = pair(kernel)[0] * pair(kernel)[1]
    parts = xp.broadcast_to(share[:, :, None], share.shape[:2] + (k,) + share.shape[2:])
    return scatter_windows(parts, x_shape, kernel, stride, padding, 1)
