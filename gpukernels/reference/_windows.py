"""Sliding windows over (N, C, H, W) images, shared by the reference conv and pooling.

Window taps: output pixel (p, q) of a KH x KW window with stride s, padding pad and
dilation d reads, at tap (i, j), the padded input at (p*sh + i*dh, q*sw + j*dw). For a
fixed tap that is ONE strided slice of the padded input over all output pixels, so a
window op is a loop over the KH*KW taps of whole-array operations.
"""

from __future__ import annotations

from ..backend import get_array_module
from ..shapes import conv2d_output_size, pair


def tap_slices(x_shape, kernel, stride, padding, dilation):
    """``(oh, ow)`` and, per tap (i, j) in row-major order, the ``(rows, cols)`` slices
    of the padded input that tap reads for every output pixel."""
    (kh, kw), (sh, sw), (dh, dw) = pair(kernel), pair(stride), pair(dilation)
    oh, ow = conv2d_output_size(x_shape[2], x_shape[3], kernel, stride, padding, dilation)
    taps = [(slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
            for i in range(kh) for j in range(kw)]
    return (oh, ow), taps


def windows(x, kernel, stride, padding, dilation, fill):
    """(N, C, KH*KW, OH, OW): every window's values, tap by tap; the padding holds
    ``fill`` (0 for conv and average pooling, -inf for max pooling)."""
    xp = get_array_module(x)
    ph, pw = pair(padding)
    padded = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    _, taps = tap_slices(x.shape, kernel, stride, padding, dilation)
    return xp.stack([padded[:, :, rows, cols] for rows, cols in taps], axis=2)


def scatter_windows(parts, x_shape, kernel, stride, padding, dilation):
    """The adjoint of ``windows``: ``parts`` (N, C, KH*KW, OH, OW) added back at the
    input pixel each tap read (overlapping windows sum), the padding cropped off."""
    xp = get_array_module(parts)
    n, c, h, w = x_shape
    ph, pw = pair(padding)
    padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=parts.dtype)
    _, taps = tap_slices(x_shape, kernel, stride, padding, dilation)
    for k, (rows, cols) in enumerate(taps):
        padded[:, :, rows, cols] += parts[:, :, k]  # one tap: distinct pixels, no collisions
    return xp.ascontiguousarray(padded[:, :, ph:ph + h, pw:pw + w])
