"""Reference inverted dropout, forward and backward (NumPy or CuPy arrays).

    mask = [u >= p] / (1 - p),  u ~ U[0, 1) per element
    y = x * mask,  dx = g * mask

``u`` is drawn on the host from the library generator (``gk.manual_seed``), so every
backend drops the same elements for the same seed.
"""

from __future__ import annotations

from ..backend import get_array_module
from ..random import generator


def dropout_mask(shape, p, dtype, xp):
    """Keep-mask already scaled by 1/(1-p): entries are 0 or 1/(1-p)."""
    keep = generator().random(shape) >= p
    return xp.asarray(keep.astype(dtype) * dtype.type(1.0 / (1.0 - p)))


def dropout_forward(x, p):
    """Returns (y, mask) with y = x * mask."""
    mask = dropout_mask(x.shape, p, x.dtype, get_array_module(x))
    return x * mask, mask


def dropout_backward(grad_y, mask):
    return grad_y * mask
