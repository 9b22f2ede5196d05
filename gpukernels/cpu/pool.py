"""NumPy reference: 2-d max and average pooling, forward and backward.

Both work on a padded copy of the input in (H, W, N, C) order: window offset (i, j) of
every output pixel is then one strided slice whose inner N*C elements are contiguous,
so each of the KH*KW steps is one long whole-array op. (In NCHW the inner run would be
OW elements with a stride: for the 4x4 and 8x8 maps of small CNNs numpy's per-run
overhead dominates, 5-10x slower.) The transposed copy costs one pass over x.

Max pooling keeps the flat window offset i*KW + j of the FIRST maximum (PyTorch's tie
rule), computed with arithmetic rather than masked stores (masked stores on a random
mask cost ~3 ns an element in branch misses). The backward adds the upstream gradient
back at that offset: correct whether or not windows overlap. The offsets are saved in
the (OH, OW, N, C) order, an opaque state between this module's forward and backward.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..shapes import conv2d_output_size


def _to_hwnc(x, padding, fill):
    """x (N, C, H, W) -> padded (H + 2ph, W + 2pw, N, C), padding filled with ``fill``."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ph, pw = padding
    out = xp.empty((h + 2 * ph, w + 2 * pw, n, c), dtype=x.dtype)
    if ph or pw:
        out[...] = fill
    out[ph : ph + h, pw : pw + w] = x.transpose(2, 3, 0, 1)
    return out


def _to_nchw(t, padding=(0, 0)):
    """(H', W', N, C) -> contiguous (N, C, H, W), cropping ``padding`` on each side."""
    h, w = t.shape[0] - 2 * padding[0], t.shape[1] - 2 * padding[1]
    crop = t[padding[0] : padding[0] + h, padding[1] : padding[1] + w]
    return get_array_module(t).ascontiguousarray(crop.transpose(2, 3, 0, 1))


def _window(t, i, j, out_hw, stride, dilation):
    """Offset (i, j) of every window of the (H, W, N, C) array ``t``: (OH, OW, N, C) view."""
    hi, wj = i * dilation[0], j * dilation[1]
    return t[hi : hi + stride[0] * (out_hw[0] - 1) + 1 : stride[0],
             wj : wj + stride[1] * (out_hw[1] - 1) + 1 : stride[1]]


def _offsets(kernel):
    return [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]


def max_pool2d_forward(x, kernel, stride, padding, dilation):
    """y[n,c,p,q] = max over the window at (p*s - pad, q*s - pad); padding counts as -inf.

    Returns (y, argmax) with argmax the flat window offset of the first maximum.
    Traffic: x read twice (transpose, then KH*KW cache-hot window reads), y written twice.
    """
    xp = get_array_module(x)
    out_hw = conv2d_output_size(x.shape[2], x.shape[3], kernel, stride, padding, dilation)
    t = _to_hwnc(x, padding, -np.inf)
    windows = [_window(t, i, j, out_hw, stride, dilation) for i, j in _offsets(kernel)]
    y = windows[0].copy()
    for v in windows[1:]:
        xp.maximum(y, v, out=y)
    idx_dtype = np.int8 if len(windows) < 128 else np.int32
    argmax = xp.zeros(y.shape, dtype=idx_dtype)
    for k in range(len(windows) - 1, -1, -1):  # last to first: the first maximum wins
        hit = (windows[k] == y).view(np.int8).astype(idx_dtype, copy=False)
        argmax += (idx_dtype(k) - argmax) * hit  # argmax = k where hit, without a branch
    return _to_nchw(y), argmax


def max_pool2d_backward(grad_y, argmax, x_shape, kernel, stride, padding, dilation):
    """dx at each window's argmax += dy (sums where overlapping windows share a max)."""
    xp = get_array_module(grad_y)
    n, c, h, w = x_shape
    g = xp.ascontiguousarray(grad_y.transpose(2, 3, 0, 1))
    gx = xp.zeros((h + 2 * padding[0], w + 2 * padding[1], n, c), dtype=grad_y.dtype)
    # g * mask is the fast form, but inf * 0 is NaN: with a non-finite g select instead
    finite = bool(xp.isfinite(g).all())
    for k, (i, j) in enumerate(_offsets(kernel)):
        hit = argmax == k
        _window(gx, i, j, g.shape[:2], stride, dilation)[...] += g * hit if finite else xp.where(hit, g, 0)
    return _to_nchw(gx, padding)


def _avg_divisor(x_shape, kernel, stride, padding, count_include_pad, xp, dtype):
    """KH*KW, or per output pixel the number of real (non-padding) inputs it averages."""
    if count_include_pad or padding == (0, 0):
        return dtype.type(kernel[0] * kernel[1])
    ones = xp.ones(tuple(x_shape[2:]) + (1, 1), dtype=dtype)
    count = _window_sum(_pad_hw(ones, padding), kernel, stride, x_shape, padding)
    return count


def _pad_hw(t, padding):
    xp = get_array_module(t)
    h, w = t.shape[:2]
    out = xp.zeros((h + 2 * padding[0], w + 2 * padding[1]) + t.shape[2:], dtype=t.dtype)
    out[padding[0] : padding[0] + h, padding[1] : padding[1] + w] = t
    return out


def _window_sum(t, kernel, stride, x_shape, padding):
    out_hw = conv2d_output_size(x_shape[2], x_shape[3], kernel, stride, padding, 1)
    windows = [_window(t, i, j, out_hw, stride, (1, 1)) for i, j in _offsets(kernel)]
    total = windows[0].copy()
    for v in windows[1:]:
        total += v
    return total


def avg_pool2d_forward(x, kernel, stride, padding, count_include_pad=True):
    """y = sum over the window / divisor (KH*KW, or the real pixels when
    ``count_include_pad`` is False)."""
    xp = get_array_module(x)
    total = _window_sum(_to_hwnc(x, padding, 0), kernel, stride, x.shape, padding)
    total /= _avg_divisor(x.shape, kernel, stride, padding, count_include_pad, xp, x.dtype)
    return _to_nchw(total)


def avg_pool2d_backward(grad_y, x_shape, kernel, stride, padding, count_include_pad=True):
    """dx = sum over the windows covering each input of dy / divisor."""
    xp = get_array_module(grad_y)
    n, c, h, w = x_shape
    # a copy, always: ascontiguousarray would return grad_y itself when the transpose is
    # already contiguous (1x1 outputs, or N*C == 1), and the division would write into it
    share = xp.array(grad_y.transpose(2, 3, 0, 1), order="C")
    share /= _avg_divisor(x_shape, kernel, stride, padding, count_include_pad, xp, grad_y.dtype)
    gx = xp.zeros((h + 2 * padding[0], w + 2 * padding[1], n, c), dtype=grad_y.dtype)
    for i, j in _offsets(kernel):
        _window(gx, i, j, share.shape[:2], stride, (1, 1))[...] += share
    return _to_nchw(gx, padding)
