"""NumPy reference: 2-d max and average pooling, forward and backward.

Both loop over the KH*KW window offsets (never over pixels): offset (i, j) of every
window is one strided slice of the padded input, so each step is a whole-array op.
Max pooling keeps the flat window index of the first maximum (PyTorch's tie rule); its
backward adds the upstream gradient back at that offset, which is correct whether or
not windows overlap. Traffic: forward reads the input KH*KW times from cache-friendly
slices and writes y (+ an int8/int16 index); backward writes the padded input gradient.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module


def pool_output_size(h, w, kernel, stride, padding, dilation=(1, 1)):
    oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return oh, ow


def _window(padded, i, j, oh, ow, stride, dilation):
    """Offset (i, j) of every window: a (N, C, OH, OW) strided view."""
    hi, wj = i * dilation[0], j * dilation[1]
    return padded[:, :, hi : hi + stride[0] * (oh - 1) + 1 : stride[0], wj : wj + stride[1] * (ow - 1) + 1 : stride[1]]


def _pad(x, padding, value):
    if padding == (0, 0):
        return x
    xp = get_array_module(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * padding[0], w + 2 * padding[1]), value, dtype=x.dtype)
    out[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w] = x
    return out


def max_pool2d_forward(x, kernel, stride, padding, dilation):
    """y[n,c,p,q] = max over the window at (p*s - pad, q*s - pad); padding counts as -inf.

    Returns (y, argmax) with argmax the flat offset i*KW + j of the first maximum.
    """
    xp = get_array_module(x)
    oh, ow = pool_output_size(x.shape[2], x.shape[3], kernel, stride, padding, dilation)
    padded = _pad(x, padding, -np.inf)
    idx_dtype = np.int8 if kernel[0] * kernel[1] < 128 else np.int32
    y = _window(padded, 0, 0, oh, ow, stride, dilation).copy()
    argmax = xp.zeros(y.shape, dtype=idx_dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            if i == j == 0:
                continue
            v = _window(padded, i, j, oh, ow, stride, dilation)
            better = v > y  # strict: the first maximum wins ties, as in PyTorch
            xp.copyto(y, v, where=better)
            argmax[better] = i * kernel[1] + j
    return y, argmax


def max_pool2d_backward(grad_y, argmax, x_shape, kernel, stride, padding, dilation):
    xp = get_array_module(grad_y)
    n, c, h, w = x_shape
    oh, ow = grad_y.shape[2:]
    gx = xp.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=grad_y.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            hit = argmax == i * kernel[1] + j
            _window(gx, i, j, oh, ow, stride, dilation)[...] += xp.where(hit, grad_y, 0)
    return gx[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w]


def _avg_divisor(x_shape, kernel, stride, padding, count_include_pad, xp, dtype):
    if count_include_pad or padding == (0, 0):
        return dtype.type(kernel[0] * kernel[1])
    # number of real (non-padding) pixels in each window: pool a ones image
    ones = xp.ones((1, 1) + tuple(x_shape[2:]), dtype=dtype)
    count, _ = _window_sum(_pad(ones, padding, 0), kernel, stride, x_shape, padding)
    return count


def _window_sum(padded, kernel, stride, x_shape, padding):
    oh, ow = pool_output_size(x_shape[2], x_shape[3], kernel, stride, padding)
    total = _window(padded, 0, 0, oh, ow, stride, (1, 1)).copy()
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            if i or j:
                total += _window(padded, i, j, oh, ow, stride, (1, 1))
    return total, (oh, ow)


def avg_pool2d_forward(x, kernel, stride, padding, count_include_pad=True):
    """y = sum over the window / divisor (KH*KW, or the real pixels when
    ``count_include_pad`` is False)."""
    xp = get_array_module(x)
    total, _ = _window_sum(_pad(x, padding, 0), kernel, stride, x.shape, padding)
    return total / _avg_divisor(x.shape, kernel, stride, padding, count_include_pad, xp, x.dtype)


def avg_pool2d_backward(grad_y, x_shape, kernel, stride, padding, count_include_pad=True):
    xp = get_array_module(grad_y)
    n, c, h, w = x_shape
    oh, ow = grad_y.shape[2:]
    share = grad_y / _avg_divisor(x_shape, kernel, stride, padding, count_include_pad, xp, grad_y.dtype)
    gx = xp.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=grad_y.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            _window(gx, i, j, oh, ow, stride, (1, 1))[...] += share
    return gx[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w]
