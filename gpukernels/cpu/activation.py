"""The ``numpy`` backend's elementwise activations (formulas: ``gpukernels.reference.activation``).

What each pass must move (n elements of e bytes; 16M float32 = 64 MiB an array):
forward reads x and writes y (2 n e: 128 MiB, 5.4 ms at the ~24.8 GB/s copy ceiling of
the 2-core dev VM), backward reads g and y and writes dx (3 n e: 192 MiB, 8.1 ms). Fresh
output pages cost more again: the kernel zeroes each page on first touch.

Why blocks, and why not ``np.where``
------------------------------------
NumPy cannot fuse ufuncs, so a formula of k operations over whole arrays streams its
operands from memory k times and allocates k - 1 full-size temporaries (the reference's
sigmoid: six passes and five 64 MiB temporaries, 190 ms). Here every formula runs block
by block (BLOCK_BYTES per operand): the block's first operation brings its operands
into L2 (2 MiB a core) and the later ones find them there, writing into the output
block itself (``out=``), so memory sees the 2 or 3 passes above and the rest is L2 time.
Large calls work their blocks on both cores (``_parallel.run_pieces``: NumPy drops the
GIL inside each ufunc loop). ``np.where``, masked copies and float * bool products are
avoided: each is a slow non-SIMD loop in NumPy (~6 ns an element, 5x a plain ufunc).
Selects are written as exact float arithmetic instead:

* leaky ReLU forward, s = slope in x's dtype: ``max(x, s x)`` for 0 < s <= 1 (and
  s < 0), ``min(x, s x)`` for s > 1; the same value as ``where(x > 0, x, s x)``
  element for element, NaN and +-inf included (s x is the reference's own product).
  s == 0 would turn +inf into NaN there, so it multiplies by the factor below.
* leaky ReLU backward: ``g * f`` with f = 1 where y > 0, else s (g * 1 is g exactly, g *
  s the reference's product), and f built without a compare: z = y * inf is +inf for
  y > 0, -inf for y < 0 and NaN for y = 0 or NaN, so f = ``fmax(min(z, 1), s)`` for s
  <= 1 (fmax drops the NaN), ``fmin(max(-z, 1), s)`` for s > 1.
* sigmoid: ``1 / (1 + exp(-x))`` (exp(-x) overflows to inf below x = -88 in float32:
  y = 0 there, the limit), four operations in L2 instead of the reference's six
  full-size passes; PyTorch's formula, within an ulp or two of the reference's.

ReLU and the fused residual add + ReLU keep their one- and two-operation forms over
pieces of the flattened array (two threads from 8 MiB of operations). Other arrays (CuPy,
strided views, mixed shapes, non-float dtypes, a non-finite slope) take the reference's
expressions. ``add_forward`` (autograd's sum of two gradients: one operation) splits
large float arrays over the two threads and leaves the rest (bf16 bit patterns among
them) to the reference; ``heaviside_forward``, off the training path, is the
reference's.
"""

from __future__ import annotations

import numpy as np

from ..reference import activation as _ref
from ..reference.activation import heaviside_forward  # noqa: F401 - off the training path
from . import _parallel
from ._blocks import filled

__all__ = ["relu_forward", "relu_backward", "add_forward", "add_relu_forward", "leaky_relu_forward",
           "leaky_relu_backward", "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
           "heaviside_forward"]

#: Bytes of one operand's block: 64K float32 elements, so a block's 3-4 operands (1 MiB)
#: stay in L2, and each NumPy call's loop (~20-60 us) dwarfs its ~1-2 us of Python and the
#: GIL hand-over between the two threads.
BLOCK_BYTES = 256 << 10


def _large_flat(sweeps, *arrays):
    """The arrays flattened (views) when ``sweeps`` operations over them are worth
    ``_parallel.run_pieces``'s threads (NumPy, C-contiguous, one shape and dtype, at
    least ``_parallel.MIN_PARALLEL_BYTES`` of operations), else None: then the plain
    expression is the cheapest."""
    a = arrays[0]
    if (isinstance(a, np.ndarray) and a.nbytes * sweeps >= _parallel.policy()[1]
            and all(isinstance(b, np.ndarray) and b.shape == a.shape and b.dtype == a.dtype
                    and b.flags.c_contiguous for b in arrays)):
        return [b.reshape(-1) for b in arrays]
    return None


def _blockable(*arrays):
    """True for NumPy float32/float64 arrays of one shape and dtype, all C-contiguous:
    the arrays the block kernels take (any size)."""
    a = arrays[0]
    return all(isinstance(b, np.ndarray) and b.dtype in (np.float32, np.float64) and b.shape == a.shape
               and b.dtype == a.dtype and b.flags.c_contiguous for b in arrays)


def _blocked(kernel, sweeps, *arrays, scratch=0):
    """A new array of ``arrays[0]``'s shape and dtype, ``kernel(*blocks, out, *tmp)``
    called over every block of the flattened operands (``out``: that block of the
    result, ``tmp``: ``scratch`` per-thread scratch blocks). ``sweeps``: the NumPy
    operations per block, for ``run_pieces``'s threshold. Invalid (0 * inf) and overflow
    (exp) results are the formulas' own: their warnings are silenced in every thread."""
    flat = [a.reshape(-1) for a in arrays]
    out = np.empty(arrays[0].shape, dtype=arrays[0].dtype)
    of = out.reshape(-1)
    block = max(1, BLOCK_BYTES // of.itemsize)

    def work(a, b):
        tmp = [np.empty(min(block, b - a), of.dtype) for _ in range(scratch)]
        with np.errstate(invalid="ignore", over="ignore"):  # per thread: errstate is
            for i in range(a, b, block):
                j = min(i + block, b)
                kernel(*(f[i:j] for f in flat), of[i:j], *(t[:j - i] for t in tmp))

    _parallel.run_pieces(of, work, sweeps)
    return out


# ----------------------------------------------------------------------------- relu


def relu_forward(x):
    """y = max(x, 0).

    Traffic: reads x, writes y (one operation a block, against a block of zeros: NumPy's
    ``maximum`` with a scalar operand runs a scalar loop, 2x slower; measured on
    (128, 16, 32, 32) float32 with two threads, 0.77-0.79 -> 0.27 ms)."""
    if not _blockable(x):
        return _ref.relu_forward(x)
    xf, zeros = x.reshape(-1), filled(0, x, BLOCK_BYTES)
    y = np.empty_like(x)
    yf, block = y.reshape(-1), len(zeros)

    def work(a, b):  # the one op per block inline: through _blocked 6-15% slower
        for i in range(a, b, block):
            j = min(i + block, b)
            np.maximum(xf[i:j], zeros[: j - i], out=yf[i:j])

    _parallel.run_pieces(xf, work, 1)
    return y


def relu_backward(grad_y, y):
    """dx = g * [y > 0]."""
    flat = _large_flat(2, grad_y, y)
    if flat is None:
        return _ref.relu_backward(grad_y, y)
    gf, yf = flat
    dx = np.empty(grad_y.shape, dtype=np.result_type(grad_y.dtype, np.bool_))
    df = dx.reshape(-1)
    _parallel.run_pieces(gf, lambda a, b: np.multiply(gf[a:b], yf[a:b] > 0, out=df[a:b]), 2)
    return dx


def add_forward(a, b):
    """y = a + b: one operation, reading a and b and writing y (3 n e bytes), on two
    threads from 8 MiB of operations (ResNet-8's 16-channel 32x32 gradient sums at batch
    128, 8 MiB each, ran on one thread: 1.2 ms a call); other arrays (small, bf16 bit
    patterns, mixed shapes) take the reference's."""
    flat = _large_flat(2, a, b) if a.dtype in (np.float32, np.float64) else None
    if flat is None:
        return _ref.add_forward(a, b)
    af, bf = flat
    y = np.empty(a.shape, dtype=a.dtype)
    yf = y.reshape(-1)
    _parallel.run_pieces(af, lambda i0, i1: np.add(af[i0:i1], bf[i0:i1], out=yf[i0:i1]), 2)
    return y


def add_relu_forward(a, b):
    """y = max(a + b, 0), block by block (reads a and b once, writes y once, instead of an
    add pass then a ReLU pass; the max against a block of zeros, as ``relu_forward``);
    the reference checks the arguments of other calls."""
    if not _blockable(a, b):
        return _ref.add_relu_forward(a, b)
    af, bf, zeros = a.reshape(-1), b.reshape(-1), filled(0, a, BLOCK_BYTES)
    y = np.empty_like(a, order="C")
    yf, block = y.reshape(-1), len(zeros)

    def work(i0, i1):
        for i in range(i0, i1, block):
            j = min(i + block, i1)
            np.add(af[i:j], bf[i:j], out=yf[i:j])
            np.maximum(yf[i:j], zeros[: j - i], out=yf[i:j])

    _parallel.run_pieces(af, work, 2)
    return y


# ----------------------------------------------------------------------------- leaky relu


def _slope(a, negative_slope):
    """The slope in ``a``'s dtype, or None where the block kernels do not apply (other
    arrays, a non-finite slope: the reference's expression then)."""
    if not _blockable(a):
        return None
    s = a.dtype.type(negative_slope)
    return s if np.isfinite(s) else None


def _leaky_factor(v, out, s, ones, slopes):
    """out = 1 where v > 0, else s, without a compare (module docstring); 3 operations.
    ``ones`` and ``slopes``: blocks of 1 and s at least as long as ``out``."""
    k = len(out)
    if s <= 1:
        np.multiply(v, np.inf, out=out)  # +inf (v > 0), -inf (v < 0), NaN (v = 0 or NaN)
        np.minimum(out, ones[:k], out=out)  # 1, -inf, NaN
        np.fmax(out, slopes[:k], out=out)  # 1, s, s (fmax takes s over NaN)
    else:
        np.multiply(v, -np.inf, out=out)  # -inf (v > 0), +inf (v < 0), NaN
        np.maximum(out, ones[:k], out=out)  # 1, +inf, NaN
        np.fmin(out, slopes[:k], out=out)  # 1, s, s


def leaky_relu_forward(x, negative_slope):
    """y = x if x > 0 else negative_slope * x.

    Traffic: reads x, writes y (2 operations a block: s x, then max or min with x)."""
    s = _slope(x, negative_slope)
    if s is None:
        return _ref.leaky_relu_forward(x, negative_slope)
    if s == 0:  # max(x, 0 * x) is NaN at x = +inf: y = x * f, f = [x > 0]
        ones, slopes = filled(1, x, BLOCK_BYTES), filled(s, x, BLOCK_BYTES)

        def kernel(xb, out):
            _leaky_factor(xb, out, s, ones, slopes)
            np.multiply(out, xb, out=out)

        return _blocked(kernel, 4, x)
    pick = np.minimum if s > 1 else np.maximum

    def kernel(xb, out):
        np.multiply(xb, s, out=out)
        pick(out, xb, out=out)

    return _blocked(kernel, 2, x)


def leaky_relu_backward(grad_y, y, negative_slope):
    """dx = g if y > 0 else negative_slope * g (negative_slope >= 0: sign(y) = sign(x)).

    Traffic: reads g and y, writes dx (4 operations a block: the factor, then g * it)."""
    s = _slope(y, negative_slope) if _blockable(grad_y, y) else None
    if s is None:
        return _ref.leaky_relu_backward(grad_y, y, negative_slope)
    ones, slopes = filled(1, y, BLOCK_BYTES), filled(s, y, BLOCK_BYTES)

    def kernel(gb, yb, out):
        _leaky_factor(yb, out, s, ones, slopes)
        np.multiply(out, gb, out=out)

    return _blocked(kernel, 4, grad_y, y)


# ----------------------------------------------------------------------------- sigmoid, tanh


def _sigmoid_kernel(xb, out):
    np.negative(xb, out=out)
    np.exp(out, out=out)  # overflows to inf for x < -88 (float32): y = 1 / inf = 0
    np.add(out, 1, out=out)
    np.divide(1, out, out=out)


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)) (the reference's value to an ulp or two).

    Traffic: reads x, writes y (4 operations a block)."""
    if not _blockable(x):
        return _ref.sigmoid_forward(x)
    return _blocked(_sigmoid_kernel, 4, x)


def _sigmoid_backward_kernel(gb, yb, out, tmp):
    np.multiply(gb, yb, out=out)  # (g y)(1 - y): the reference's order, the same rounding
    np.subtract(1, yb, out=tmp)
    np.multiply(out, tmp, out=out)


def sigmoid_backward(grad_y, y):
    """dx = g * y * (1 - y). Traffic: reads g and y, writes dx (3 operations a block)."""
    if not _blockable(grad_y, y):
        return _ref.sigmoid_backward(grad_y, y)
    return _blocked(_sigmoid_backward_kernel, 3, grad_y, y, scratch=1)


def _tanh_kernel(xb, out):
    np.tanh(xb, out=out)


def tanh_forward(x):
    """y = tanh(x). Traffic: reads x, writes y (one operation: only the threads help)."""
    if not _blockable(x):
        return _ref.tanh_forward(x)
    return _blocked(_tanh_kernel, 1, x)


def _tanh_backward_kernel(gb, yb, out):
    np.multiply(yb, yb, out=out)  # g (1 - y y): the reference's order, the same rounding
    np.subtract(1, out, out=out)
    np.multiply(gb, out, out=out)


def tanh_backward(grad_y, y):
    """dx = g * (1 - y^2). Traffic: reads g and y, writes dx (3 operations a block)."""
    if not _blockable(grad_y, y):
        return _ref.tanh_backward(grad_y, y)
    return _blocked(_tanh_backward_kernel, 3, grad_y, y)
