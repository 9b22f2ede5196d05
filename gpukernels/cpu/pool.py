"""The ``numpy`` backend's 2-d max and average pooling, forward and backward (formulas:
``gpukernels.reference.pool``).

Layout: NCHW, block by block of planes
--------------------------------------
x (N, C, H, W) is worked as P = N*C image planes, ``_pool_plan.BLOCK_BYTES`` of them at a
time (the block's x, y and scratch stay in L2, 2 MiB a core), the blocks split between
the two cores by ``_parallel.run_pieces`` (NumPy drops the GIL inside each ufunc loop;
the two vCPUs of the dev VM gain ~1.3-1.8x on these strided, core-bound operations).
Tap (i, j) of every window of a block is ONE strided view of the block (rows p*sh + i*dh,
columns q*sw + j*dw of the padded plane), so a pool is KH*KW whole-block operations. With
padding, each block is first copied into a per-thread padded scratch whose border holds
-inf (max) or 0 (average), filled once: every tap view is then full, never clipped
(clipped views are 2-3x slower: NumPy cannot merge their rows into one loop). (The former
code transposed x to (H, W, N, C), so each tap was one long contiguous run: the
transpose alone cost ~15 ms for 32x64x32x32, three times PyTorch's whole pool.)

Small planes: planes-last
-------------------------
Where the output is at most ``_pool_plan.LAST_MAX_OW`` wide (the digits CNN's 8x8 and
4x4 maps, fast CIFAR's global pool) and x at most ``LAST_MAX_BYTES``, each tap's view of
(P, OH, OW) planes is a NumPy loop of OW elements per row, so the loop's fixed cost, not
memory, sets the time (64x16x8x8, 2x2: ~10 us per tap operation). Those calls copy x
to (H, W, P) instead, work every tap there as one loop over P contiguous planes per
pixel (~3 us), and copy y (dx) back: max forward 64x16x8x8 2x2 0.130 -> 0.118 ms, 3x3 s2
p1 0.380 -> 0.213, 64x32x4x4 2x2 0.113 -> 0.078; backward 0.088 -> 0.091 and 0.069 ->
0.059. The (H, W, P) arrays keep their pixels a multiple of 64 bytes but never of 4 KiB
apart (``_pool_plan.empty_last``): the copy back to NCHW reads one element a pixel, and
at 1024 float32 planes those reads all hit the same L1 sets (0.180 against 0.021 ms).

Traffic a call must move (X input and Q output elements of e bytes):
    max forward   reads x, writes y and the 1-byte argmax:  X e + Q (e + 1)
    max backward  reads dy and argmax, writes dx:           Q (e + 1) + X e
    avg forward   X e + Q e;  avg backward  Q e + X e
32x64x32x32 float32, 2x2 s2: 8 MiB + 2.5 MiB = 11 MB forward, 0.44 ms at the ~24.8 GB/s
copy ceiling (3x3 s2 p1: the same); the KH*KW tap operations then work in L2, at
~0.5 ns an element each for strided views: they, not memory, set the time.

Max pooling: the FIRST maximum (PyTorch's tie rule) without a select
--------------------------------------------------------------------
y starts as tap 0, a as 0; then taps in row-major order k = i*KW + j: ``gt = v_k > y``
(strictly: a tie keeps the earlier tap), ``y = max(y, v_k)``, ``a = max(a, k * gt)`` (a <
k before tap k, so that max is the select ``where(gt, k, a)``, in int8). NaN: ``maximum``
carries it into y and no later tap compares greater, so a holds the tap of the maximum
before the NaN: blocks with a NaN in y set a = 0 there, the reference's value (it finds no
tap equal to NaN). A window of -inf only (padding included) keeps a = 0, as the reference.

The argmax is an opaque state between this module's forward and backward. Its values are
the reference's, in the reference's (OH, OW, N, C) shape and dtype (int8; int32 for 128
taps or more), so the two agree element for element; but it is a transposed VIEW of an
(N, C, OH, OW) buffer, the order in which both of our passes read and write it (a
transposed copy costs ~60 us a block in 1-byte gathers). The backward takes either: a
C-contiguous (OH, OW, N, C) argmax (the reference's) is transposed block by block.

Backward: a scatter by stride classes (``_pool_plan.Plan.scatter``)
------------------------------------------------------------------
Tap (i, j) of output (p, q) reads image pixel (p*sh + i*dh - ph, q*sw + j*dw - pw): its
row lies in class r = (i*dh - ph) mod sh, at row p + di (di = (i*dh - ph) // sh) of that
class's sub-sampled grid, and likewise for columns. So each tap's contribution, an
(OH, OW) array per plane (``dy * [a == k]``, or dy / D), lands on ONE class grid, moved
by (di, dj). Where every class grid fits in (OH, OW) (3x3 s2 p1, 3x3 s1 p1, kernel ==
stride over multiples of the kernel) the move is a shift of di*OW + dj in the flattened
block, one contiguous NumPy loop (what would land outside the grid, the padding's share,
is zeroed first: for the max pool only tap 0 can have any, as only it can be the argmax
of a window of -inf), the class's taps are summed in tap order (the reference's order of
sums: the result is bit-identical) and the sum copied once into the class's strided view
of dx. A class one unmoved tap fills (every class of a kernel == stride pool: the windows
tile the image) is written straight into dx. Other geometries add every tap into its
strided view of a zeroed padded plane, then copy the interior. (Adds straight into
strided views cost ~60 us a tap for 256 planes of 16x16 outputs, a flat shifted add
~8 us.) 3x3 s2 p1, 32x64x32x32: 9 contributions (~30 us each a block), 8 shifted sums,
3 strided copies and 1 direct write. ``dy * [a == k]`` would make NaN of an inf or NaN dy
at the taps that are not the argmax (inf * 0): blocks with a non-finite dy select with
``np.where`` instead, as the reference.

Compiled 2x2 / 2 max pool (``_jit``, where numba is installed)
--------------------------------------------------------------
The usual CNN pool (kernel 2x2, stride 2, no padding or dilation) on C-contiguous x runs
``_jit_kernels.max_pool_2x2_forward`` / ``_backward`` instead: each window's four taps
compared in registers, one read of x and one write of y and a (forward), one read of dy
and a and one write of dx (backward), in pieces of planes on the two threads. Same tie
and NaN rules, same argmax (int8, the transposed (N, C, OH, OW) buffer). Measured (dev
VM, float32): 32x64x32x32 forward 2.69 -> 1.20 ms (9.2 GB/s), forward + backward 5.46
-> 3.97 ms; the digits CNN's 64x16x8x8 forward 120 -> 36 us. (A numba kernel taking the
geometry as arguments ran 4-13x slower than this written-out one: so 3x3 s2 p1 and the
average pool keep their NumPy taps.)

Other arrays (not NumPy float32/float64) take the reference's functions, which read and
write the same argmax values.
"""

from __future__ import annotations

import numpy as np

from ..reference import pool as _ref
from ..shapes import conv2d_output_size, pair
from . import _jit, _parallel
from ._pool_plan import padded_scratch, run_blocks
from ._pool_plan import plan as _plan_of

__all__ = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward"]

def _fast(*arrays):
    """True for NumPy float32/float64 arrays: the arrays the block kernels take."""
    return all(isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64) for a in arrays)


# ----------------------------------------------------------------------------- max


def max_pool2d_forward(x, kernel, stride, padding, dilation):
    """y[n,c,p,q] = max over the window at (p*s - pad, q*s - pad); padding counts as -inf.

    Returns (y, argmax), argmax the flat window offset i*KW + j of the first maximum, in
    (OH, OW, N, C) order (a view of an (N, C, OH, OW) buffer). Traffic: reads x, writes
    y and argmax, once each."""
    if not _fast(x):
        return _ref.max_pool2d_forward(x, kernel, stride, padding, dilation)
    jit = _jit.kernels() if _jit_2x2(kernel, stride, padding, dilation) and x.flags.c_contiguous and x.size else None
    if jit is not None:
        return _max_forward_jit(jit, x)
    plan = _plan_of(x.shape, kernel, stride, padding, dilation, x.itemsize)
    n, c, oh, ow = x.shape[0], x.shape[1], plan.oh, plan.ow
    idx_dtype = np.int8 if plan.kk < 128 else np.int32
    x3 = plan.layout(x)
    y3 = plan.empty(n * c, oh, ow, x.dtype)
    a3 = np.empty(plan.shape(n * c, oh, ow), dtype=idx_dtype)  # never transposed: contiguous

    def work(cut, tmp):
        src, yb, ab = x3[cut], y3[cut], a3[cut]
        if tmp:  # padded: the border's -inf is already there
            np.copyto(plan.interior(tmp[0]), src)
            src = tmp[0]
        np.copyto(yb, src[plan.taps[0][1]])
        ab.fill(0)
        for k, view in plan.taps[1:]:
            v = src[view]
            gt = np.greater(v, yb)  # strictly: a tie keeps the earlier tap
            np.maximum(yb, v, out=yb)
            if idx_dtype == np.int8:
                step = np.multiply(gt.view(np.int8), np.int8(k))
            else:
                step = gt.astype(np.int32) * np.int32(k)
            np.maximum(ab, step, out=ab)  # = where(gt, k, a): a < k here
        nan = np.isnan(yb)
        if nan.any():  # a NaN's window: the reference finds no tap equal to y, keeps 0
            ab[nan] = 0

    run_blocks(plan, x3, work, 2 * plan.kk, padded_scratch(plan, x.dtype, -np.inf))
    if plan.last:  # (OH, OW, P) is the reference's (OH, OW, N, C)
        return plan.nchw(y3, n, c), a3.reshape(oh, ow, n, c)
    return y3.reshape(n, c, oh, ow), a3.reshape(n, c, oh, ow).transpose(2, 3, 0, 1)


def max_pool2d_backward(grad_y, argmax, x_shape, kernel, stride, padding, dilation):
    """dx at each window's argmax += dy (sums where overlapping windows share an input).

    Traffic: reads dy and argmax, writes dx, once each."""
    if not _fast(grad_y):
        return _ref.max_pool2d_backward(grad_y, argmax, x_shape, kernel, stride, padding, dilation)
    jit = _jit.kernels() if _jit_2x2(kernel, stride, padding, dilation) and grad_y.size else None
    if jit is not None:
        return _max_backward_jit(jit, grad_y, argmax, x_shape)
    plan = _plan_of(x_shape, kernel, stride, padding, dilation, grad_y.itemsize)
    n, c, h, w = x_shape
    g3 = plan.layout(grad_y)
    # argmax (OH, OW, N, C) in the plan's layout: a view of our forward's, else a copy
    if plan.last:
        a3 = argmax.reshape(plan.oh, plan.ow, n * c)
    else:
        a3 = argmax.transpose(2, 3, 0, 1).reshape(n * c, plan.oh, plan.ow)
    d3 = plan.empty(n * c, h, w, grad_y.dtype)  # every element written once, by scatter
    zero = grad_y.dtype.type(0)

    def work(cut, tmp):
        gb, ab = g3[cut], np.ascontiguousarray(a3[cut])
        finite = bool(np.isfinite(gb).all())  # else select: inf * 0 would be NaN

        def contribution(k, out):
            hit = np.equal(ab, k)
            if finite:
                return np.multiply(gb, hit, out=out)
            np.copyto(out, np.where(hit, gb, zero))
            return out

        plan.scatter(d3[cut], tmp, contribution, clean=lambda k: k > 0)

    def scratch(count):
        return plan.scatter_scratch(count, grad_y.dtype)

    run_blocks(plan, d3, work, 2 * plan.kk, scratch, scatter=True)
    return plan.nchw(d3, n, c)


def _jit_2x2(kernel, stride, padding, dilation):
    """The geometry numba's max pool serves (``_jit_kernels.max_pool_2x2_*``): 2x2
    windows, stride 2, no padding or dilation, the usual CNN pool."""
    return (pair(kernel), pair(stride), pair(padding), pair(dilation)) == ((2, 2), (2, 2), (0, 0), (1, 1))


def _planes(a):
    """(N, C, H, W) as (N*C, H, W)."""
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2], a.shape[3])


def _max_forward_jit(jit, x):
    """2x2 / 2 ``max_pool2d_forward`` by the compiled kernel (``_jit``): one read of x,
    one write of y and of the argmax (the same opaque (OH, OW, N, C) view), in pieces of
    planes on two threads where large."""
    n, c, h, w = x.shape
    y = np.empty((n, c, h // 2, w // 2), dtype=x.dtype)
    a = np.empty(y.shape, dtype=np.int8)
    x3, y3, a3 = _planes(x), _planes(y), _planes(a)
    _parallel.run_pieces(x3, lambda p0, p1: jit.max_pool_2x2_forward(x3[p0:p1], y3[p0:p1], a3[p0:p1]), 2)
    return y, a.transpose(2, 3, 0, 1)


def _max_backward_jit(jit, grad_y, argmax, x_shape):
    """2x2 / 2 ``max_pool2d_backward`` by the compiled kernel: reads dy and the argmax,
    writes dx, once each."""
    g3 = _planes(np.ascontiguousarray(grad_y))
    a3 = _planes(np.ascontiguousarray(argmax.transpose(2, 3, 0, 1)))  # ours is a view: no copy
    dx = np.empty(x_shape, dtype=grad_y.dtype)
    d3 = _planes(dx)
    _parallel.run_pieces(d3, lambda p0, p1: jit.max_pool_2x2_backward(g3[p0:p1], a3[p0:p1], d3[p0:p1]), 2)
    return dx


# ----------------------------------------------------------------------------- average


def _axis_counts(size, out, k, s, p):
    """Per output index along one axis: how many of its k taps lie inside [0, size)."""
    start = np.arange(out) * s - p
    return np.minimum(start + k, size) - np.maximum(start, 0)


def _divisor(x_shape, kernel, stride, padding, count_include_pad, dtype):
    """KH*KW (a scalar), or the (OH, OW) number of real pixels in each window: the
    product of the row and column counts (the reference's window sum of ones)."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(padding)
    if count_include_pad or (ph, pw) == (0, 0):
        return dtype.type(kh * kw)
    oh, ow = conv2d_output_size(x_shape[2], x_shape[3], kernel, stride, padding, 1)
    rows = _axis_counts(x_shape[2], oh, kh, sh, ph).astype(dtype)
    cols = _axis_counts(x_shape[3], ow, kw, sw, pw).astype(dtype)
    return rows[:, None] * cols[None, :]


def avg_pool2d_forward(x, kernel, stride, padding, count_include_pad=True):
    """y = the window sum / D (KH*KW, or the real pixels when ``count_include_pad`` is
    False). Taps are added in row-major order from tap 0, padding's zeros included, as
    the reference's sum. Traffic: reads x, writes y."""
    if not _fast(x):
        return _ref.avg_pool2d_forward(x, kernel, stride, padding, count_include_pad)
    plan = _plan_of(x.shape, kernel, stride, padding, 1, x.itemsize)
    n, c = x.shape[:2]
    x3 = plan.layout(x)
    y3 = plan.empty(n * c, plan.oh, plan.ow, x.dtype)
    div = plan.per_pixel(_divisor(x.shape, kernel, stride, padding, count_include_pad, x.dtype))

    def work(cut, tmp):
        src, yb = x3[cut], y3[cut]
        if tmp:  # padded: the border's zeros are already there
            np.copyto(plan.interior(tmp[0]), src)
            src = tmp[0]
        np.copyto(yb, src[plan.taps[0][1]])
        for _, view in plan.taps[1:]:
            np.add(yb, src[view], out=yb)
        np.divide(yb, div, out=yb)

    run_blocks(plan, x3, work, plan.kk + 1, padded_scratch(plan, x.dtype, 0))
    return plan.nchw(y3, n, c)


def avg_pool2d_backward(grad_y, x_shape, kernel, stride, padding, count_include_pad=True):
    """dx = the sum, over the windows covering each input, of dy / D (the upstream
    gradient is never written). Traffic: reads dy, writes dx."""
    if not _fast(grad_y):
        return _ref.avg_pool2d_backward(grad_y, x_shape, kernel, stride, padding, count_include_pad)
    plan = _plan_of(x_shape, kernel, stride, padding, 1, grad_y.itemsize)
    n, c, h, w = x_shape
    g3 = plan.layout(grad_y)
    div = plan.per_pixel(_divisor(x_shape, kernel, stride, padding, count_include_pad, grad_y.dtype))
    d3 = plan.empty(n * c, h, w, grad_y.dtype)  # every element written once, by scatter

    def work(cut, tmp):
        share = tmp[-1]
        np.divide(g3[cut], div, out=share)  # scratch: dy itself is never written
        plan.scatter(d3[cut], tmp[:-1], lambda k, out: share)  # every tap's share: dy / D

    def scratch(count):
        return plan.scatter_scratch(count, grad_y.dtype) + [np.empty(plan.shape(count, plan.oh, plan.ow), grad_y.dtype)]

    run_blocks(plan, d3, work, plan.kk + 1, scratch, scatter=True)
    return plan.nchw(d3, n, c)
