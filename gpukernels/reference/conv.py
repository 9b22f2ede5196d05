"""Reference conv2d with fused bias and activation, forward and backward (NumPy or CuPy).

Shapes: x (N, C, H, W), weight (O, C/G, KH, KW), bias (O,), y (N, O, OH, OW); G is
``groups``, Cg = C/G and Og = O/G the channels per group, OH and OW PyTorch's output
size (``shapes.conv2d_output_size``). ``X[n, c, k, p, q]`` is input channel c at tap
k = (i, j) of output pixel (p, q): the zero-padded x at (p*sh + i*dh, q*sw + j*dw)
(``_windows.windows``). For output channel o = g*Og + u of group g:

  z[n, o, p, q] = b[o] + sum_{c < Cg, k} w[o, c, k] X[n, g*Cg + c, k, p, q]
  y = act(z):   None: z;  relu: max(z, 0);  leaky_relu: z if z > 0 else s z  (s >= 0)

Backward, with dz = dy act'(z), read from the saved y (sign(y) = sign(z)):
relu: dz = dy [y > 0]; leaky_relu: dz = dy if y > 0 else s dy;

  db[o]        = sum_{n, p, q} dz[n, o, p, q]
  dw[o, c, k]  = sum_{n, p, q} dz[n, o, p, q] X[n, g*Cg + c, k, p, q]
  dX[n, g*Cg + c, k, p, q] = sum_{u < Og} dz[n, g*Og + u, p, q] w[g*Og + u, c, k]
  dx = dX added back at the pixel each tap read (``_windows.scatter_windows``)

Each sum is one ``einsum`` over the (N, C, KH*KW, OH, OW) window array; the only loops
are the KH*KW taps that gather X and scatter dX. Results have x's dtype.
"""

from __future__ import annotations

from ..backend import get_array_module
from ..shapes import conv2d_output_size  # noqa: F401 - the family's formula, re-exported
from ._windows import scatter_windows, windows

__all__ = ["conv2d_output_size", "conv2d_forward", "conv2d_backward"]


def _grouped(x, weight, stride, padding, dilation, groups):
    """The window array X as (N, G, Cg, K, OH, OW) and the weight as (G, Og, Cg, K)."""
    n, c = x.shape[:2]
    o, cg, kh, kw = weight.shape
    cols = windows(x, (kh, kw), stride, padding, dilation, 0)
    return (cols.reshape(n, groups, cg, kh * kw, *cols.shape[3:]),
            weight.reshape(groups, o // groups, cg, kh * kw))


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, activation=None, negative_slope=0.01):
    """y = act(conv(x, w) + b).

    Args:
        x: (N, C, H, W) array.
        weight: (O, C // groups, KH, KW), same dtype as ``x``.
        bias: (O,) or None.
        stride, padding, dilation: ``(h, w)`` int pairs (symmetric padding per axis).
        groups: int dividing C and O.
        activation: None, ``'relu'`` or ``'leaky_relu'``.
        negative_slope: leaky ReLU slope (>= 0).

    Returns:
        y (N, O, OH, OW), same dtype as ``x``.
    """
    xp = get_array_module(x, weight)
    cols, wg = _grouped(x, weight, stride, padding, dilation, groups)
    n, _, _, _, oh, ow = cols.shape
    z = xp.einsum("ngckpq,guck->ngupq", cols, wg, optimize=True).reshape(n, weight.shape[0], oh, ow)
    if bias is not None:
        z = z + bias.reshape(1, -1, 1, 1)
    if activation == "relu":
        return xp.maximum(z, 0)
    if activation == "leaky_relu":
        return xp.where(z > 0, z, z * z.dtype.type(negative_slope))
    return z


def conv2d_backward(grad_y, x, weight, y, stride, padding, dilation, groups, activation=None,
                    negative_slope=0.01, needs=(True, True, True)):
    """Gradients of ``conv2d_forward`` with respect to x, weight and bias.

    ``y`` (the saved output) is only read when ``activation`` is set.

    Returns:
        ``(grad_x, grad_weight, grad_bias)`` of x's dtype; an entry is None when
        ``needs[i]`` is False.
    """
    xp = get_array_module(grad_y, x, weight)
    if activation == "relu":
        grad_y = grad_y * (y > 0)
    elif activation == "leaky_relu":
        grad_y = xp.where(y > 0, grad_y, grad_y * grad_y.dtype.type(negative_slope))
    o, cg, kh, kw = weight.shape
    n, _, oh, ow = grad_y.shape
    dz = grad_y.reshape(n, groups, o // groups, oh, ow)
    cols, wg = _grouped(x, weight, stride, padding, dilation, groups)
    gx = gw = gb = None
    if needs[0]:
        dcols = xp.einsum("ngupq,guck->ngckpq", dz, wg, optimize=True)
        gx = scatter_windows(dcols.reshape(n, x.shape[1], kh * kw, oh, ow), x.shape, (kh, kw), stride,
                             padding, dilation).astype(x.dtype, copy=False)
    if needs[1]:
        gw = xp.einsum("ngupq,ngckpq->guck", dz, cols, optimize=True).reshape(weight.shape).astype(x.dtype, copy=False)
    if needs[2]:
        gb = grad_y.sum(axis=(0, 2, 3)).astype(x.dtype, copy=False)
    return gx, gw, gb
