"""Classic image filters (Sobel, Laplacian, gradient magnitude) built on ``conv2d``.

Every filter is one call of :func:`gpukernels.functional.conv2d` with a fixed 3x3
kernel, so it runs on whatever backend conv2d runs on (NumPy, Triton on CuPy, the
interpreter) and is differentiable with respect to the images.

Conventions
-----------
* ``conv2d`` computes a cross-correlation, as PyTorch does:
  ``out[i, j] = sum_{u, v} K[u, v] * I[i + u - 1, j + v - 1]`` (padding 1), i.e. the
  kernel is *not* flipped. With ``SOBEL_X`` / ``SOBEL_Y`` below, ``Gx > 0`` where the
  intensity increases left to right (dark -> bright along +x, the column index) and
  ``Gy > 0`` where it increases top to bottom (+y, the row index, downwards). A ramp
  ``I = a * x`` gives ``Gx = 8a`` (the 1-2-1 smoothing sums to 4, the central difference
  spans 2 pixels). The response to a single bright pixel is the kernel rotated by 180
  degrees: ``-SOBEL_X``, ``-SOBEL_Y``, and the (symmetric) Laplacian kernel itself.
* Padding is zero padding: ``padding=1`` keeps the size ("same"), ``padding=0`` gives
  the ``(H-2, W-2)`` valid part. Pixels within ``padding`` of the border see the zeros
  as a dark frame, so they respond to the border as to an edge.
* Input ranks: ``(N, C, H, W)`` (each channel filtered independently), ``(N, H, W)``
  (a stack of single-channel images; a ``(C, H, W)`` image works the same way, since
  channels are independent anyway) and ``(H, W)``. The result has the rank of the input.
* Input types: a ``gk.Tensor`` (the result stays in its graph and on its device) or a
  NumPy array (copied into a tensor on the current backend's device). The result is
  always a ``gk.Tensor`` of the input's floating dtype (float32 stays float32, float64
  stays float64); call ``.numpy()`` for an array.

Depthwise filtering is done by folding the channels into the batch, ``(N*C, 1, H, W)``
(a free reshape of contiguous data), and convolving with a single-channel kernel: one
ungrouped GEMM over all images and channels instead of ``groups=C`` small ones, and the
same ``(1, 1, 3, 3)`` weight whatever ``C`` is. ``gradient_magnitude`` stacks both Sobel
kernels as two output channels so one conv call computes ``Gx`` and ``Gy`` together.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import backend
from .functional import conv2d
from .autograd import Function
from .creation import tensor
from .dtypes import FLOATS as _FLOATS
from .tensor import Tensor

__all__ = [
    "SOBEL_X", "SOBEL_Y", "LAPLACIAN_4", "LAPLACIAN_8",
    "sobel_x", "sobel_y", "gradient_magnitude", "laplacian",
]


def _constant(rows):
    array = np.array(rows, dtype=np.float32)
    # shared module constants: a stray in-place edit would corrupt every later call
    array.setflags(write=False)
    return array


#: Sobel derivative along x (columns): central difference [-1, 0, 1] smoothed by [1, 2, 1] down the rows.
SOBEL_X = _constant([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
#: Sobel derivative along y (rows, downwards): the transpose of ``SOBEL_X``.
SOBEL_Y = _constant([[-1, -2, -1], [0, 0, 0], [1, 2, 1]])
#: 4-neighbour discrete Laplacian (second differences along x and y).
LAPLACIAN_4 = _constant([[0, 1, 0], [1, -4, 1], [0, 1, 0]])
#: 8-neighbour discrete Laplacian (adds the two diagonal second differences).
LAPLACIAN_8 = _constant([[1, 1, 1], [1, -8, 1], [1, 1, 1]])

_LAPLACIANS = {4: LAPLACIAN_4, 8: LAPLACIAN_8}


# ----------------------------------------------------------------------------- helpers


def _as_images(images, op):
    """``(x4, shape)``: ``images`` as an ``(N*C, 1, H, W)`` tensor and the original shape."""
    if isinstance(images, np.ndarray):
        if images.dtype not in _FLOATS:
            raise TypeError(
                f"{op}: images must be floating point (float32 or float64), got a NumPy array "
                f"of dtype {images.dtype}; cast it first, e.g. images.astype(np.float32)"
            )
        images = tensor(images)  # keeps the array's dtype
    elif not isinstance(images, Tensor):
        raise TypeError(f"{op}: images must be a gk.Tensor or a numpy.ndarray, got {type(images).__name__}")
    elif images.dtype not in _FLOATS:
        raise TypeError(f"{op}: images must be a floating-point tensor, got dtype {images.dtype}")
    shape = images.shape
    if images.ndim not in (2, 3, 4):
        raise ValueError(f"{op}: images must have shape (N, C, H, W), (N, H, W) or (H, W), got shape {shape}")
    h, w = shape[-2:]
    planes = int(np.prod(shape[:-2], dtype=np.int64))  # N*C, N, or 1 single-channel planes
    return images.reshape(planes, 1, h, w), shape


def _padding(padding, op, shape):
    """Validated ``(ph, pw)``; the padded image must hold the 3x3 kernel."""
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        pad = (int(padding), int(padding))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
        isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in padding
    ):
        pad = (int(padding[0]), int(padding[1]))
    else:
        raise TypeError(f"{op}: padding must be an int or a pair of ints, got {padding!r}")
    if min(pad) < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {padding!r}")
    h, w = shape[-2:]
    if h + 2 * pad[0] < 3 or w + 2 * pad[1] < 3:
        raise ValueError(
            f"{op}: images of shape {shape} with padding={padding!r} are smaller than the 3x3 kernel"
        )
    return pad


def _filter(images, kernels, padding, op):
    """Correlate every channel plane of ``images`` with each of ``kernels`` (K, 3, 3).

    Returns the ``(N*C, K, OH, OW)`` tensor and the input shape.
    """
    x, shape = _as_images(images, op)
    pad = _padding(padding, op, shape)
    # the weight must live on the images' device and share their dtype (conv2d rejects mixes)
    weight = tensor(np.stack(kernels)[:, None], dtype=x.dtype, device=x.device)
    return conv2d(x, weight, padding=pad), shape


def _restore(y, shape):
    """``y`` of shape (N*C, 1, OH, OW) back to the rank of the input ``shape``."""
    return y.reshape(tuple(shape[:-2]) + tuple(y.shape[-2:]))


# ----------------------------------------------------------------------------- filters


def sobel_x(images, padding=1):
    """Sobel derivative along x (left to right), per channel.

    Gx = SOBEL_X (*) I, i.e. Gx[i, j] = sum_{u, v} SOBEL_X[u, v] * I[i + u - 1, j + v - 1]
    (cross-correlation, zero padding): positive where the intensity increases left to
    right; a vertical unit step gives 4 on the two columns beside it, ``I = a*x`` gives 8a.

    Args:
        images: ``gk.Tensor`` or NumPy array, floating point, of shape (N, C, H, W),
            (N, H, W) or (H, W).
        padding: zero padding, int or (h, w) pair; 1 keeps the size, 0 gives (H-2, W-2).

    Returns:
        A ``gk.Tensor`` with the input's rank and dtype.
    """
    y, shape = _filter(images, [SOBEL_X], padding, "sobel_x")
    return _restore(y, shape)


def sobel_y(images, padding=1):
    """Sobel derivative along y (top to bottom), per channel.

    Gy = SOBEL_Y (*) I (cross-correlation, zero padding): positive where the intensity
    increases from top to bottom (row index increasing).

    Args:
        images: ``gk.Tensor`` or NumPy array, floating point, of shape (N, C, H, W),
            (N, H, W) or (H, W).
        padding: zero padding, int or (h, w) pair; 1 keeps the size, 0 gives (H-2, W-2).

    Returns:
        A ``gk.Tensor`` with the input's rank and dtype.
    """
    y, shape = _filter(images, [SOBEL_Y], padding, "sobel_y")
    return _restore(y, shape)


class _Magnitude(Function):
    """|G| = sqrt(Gx^2 + Gy^2 + eps) over axis 1 of a (M, 2, H, W) array.

    Differentiating ``(Gx**2 + Gy**2) ** 0.5`` through the tape would multiply the
    infinite d sqrt(s)/ds at s = 0 by d s/dGx = 0 and give NaN on every flat patch of an
    image. Here d|G|/dG = G / |G|, and 0 where |G| = 0 (the minimum-norm subgradient of
    the Euclidean norm, what PyTorch's ``vector_norm`` returns at 0): finite everywhere.
    """

    def forward(self, g, eps):
        xp = backend.get_array_module(g)
        gx, gy = g[:, 0:1], g[:, 1:2]
        # hypot neither overflows nor underflows in the squares (float32 squares do past ~1e19)
        m = xp.hypot(gx, gy) if eps == 0 else xp.sqrt(gx * gx + gy * gy + g.dtype.type(eps))
        self.save_for_backward(g, m)
        return m

    def backward(self, grad):
        g, m = self.saved
        xp = backend.get_array_module(grad)
        nonzero = m > 0
        scale = xp.where(nonzero, grad / xp.where(nonzero, m, 1), 0).astype(g.dtype, copy=False)
        return (g * scale, None)


def gradient_magnitude(images, padding=1, eps=0.0):
    """Sobel gradient magnitude, per channel.

    |G| = sqrt(Gx^2 + Gy^2 + eps) with Gx = ``sobel_x(images)``, Gy = ``sobel_y(images)``
    (computed together in one conv call). Without ``eps`` the value is exactly the
    Euclidean norm (computed with ``hypot``) and the backward is still finite: it is
    (Gx, Gy) / |G| where |G| > 0 and 0 where |G| = 0 (flat patches), not the NaN that
    sqrt's infinite slope at 0 would give. ``eps > 0`` instead smooths the norm
    everywhere (slope G / sqrt(|G|^2 + eps)) at the price of a bias: flat patches read
    sqrt(eps), not 0.

    Args:
        images: ``gk.Tensor`` or NumPy array, floating point, of shape (N, C, H, W),
            (N, H, W) or (H, W).
        padding: zero padding, int or (h, w) pair; 1 keeps the size, 0 gives (H-2, W-2).
        eps: a real number >= 0 added under the square root.

    Returns:
        A ``gk.Tensor`` (>= 0) with the input's rank and dtype.
    """
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0 or not np.isfinite(eps):
        raise ValueError(f"gradient_magnitude: eps must be a finite number >= 0, got {eps!r}")
    g, shape = _filter(images, [SOBEL_X, SOBEL_Y], padding, "gradient_magnitude")
    return _restore(_Magnitude.apply(g, eps=float(eps)), shape)


def laplacian(images, neighbours=4, padding=1):
    """Discrete Laplacian, per channel.

    L = K (*) I with K = ``LAPLACIAN_4`` (I[i-1,j] + I[i+1,j] + I[i,j-1] + I[i,j+1] - 4 I[i,j])
    or ``LAPLACIAN_8`` (the sum of the 8 neighbours - 8 I[i,j]); zero padding. Both are 0
    on constant and linear images, negative on bright peaks and ridges, positive in dark
    pits; a single bright pixel gives the kernel itself (it is symmetric).

    Args:
        images: ``gk.Tensor`` or NumPy array, floating point, of shape (N, C, H, W),
            (N, H, W) or (H, W).
        neighbours: 4 or 8.
        padding: zero padding, int or (h, w) pair; 1 keeps the size, 0 gives (H-2, W-2).

    Returns:
        A ``gk.Tensor`` with the input's rank and dtype.
    """
    # bool is an Integral and True == 1; 4.0 would pass a plain `in`: accept real ints only
    if (isinstance(neighbours, bool) or not isinstance(neighbours, numbers.Integral)
            or neighbours not in _LAPLACIANS):
        raise ValueError(f"laplacian: neighbours must be 4 or 8, got {neighbours!r}")
    y, shape = _filter(images, [_LAPLACIANS[int(neighbours)]], padding, "laplacian")
    return _restore(y, shape)
