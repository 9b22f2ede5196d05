"""Reference conv2d: forward and backward in vectorised NumPy (CuPy-compatible).

This module is the oracle for the Triton kernels and the CPU training path, so it is
written to be both exact (float64 matches PyTorch to ~1e-13) and fast: float32 forward +
backward (x, w, b) of x (64, 64, 32, 32) * w (64, 64, 3, 3), padding 1, takes 69-77 ms on
the 2-core dev machine against 52-67 ms for PyTorch's oneDNN with 2 threads (typically
1.2x; forward alone 23-25 vs 19-23 ms). What remains is OpenBLAS GEMM time: each of the
three products (y, grad_x, grad_w) is ~20 ms of the 4.8 GFLOP GEMM on two cores. The
ResNet-20 layers (batch 128) are GEMM-bound too but with thin GEMMs (O = 16..64):
forward + backward takes 14-21 ms at 32x32 (1.0-1.3x PyTorch), 8.5 / 10.5 ms for the
strided 16x16 -> 8x8 and the 8x8 layer (~1.8x) and 15 ms for the 16x16 one (~2.3x),
whose three 0.6 GFLOP products with N or M = 32 run at ~115 GFLOP/s per core in
OpenBLAS where oneDNN sustains ~140 (PyTorch's own times vary up to 2x between runs
on this machine, so compare in one process).

Shapes: ``x`` (N, C, H, W), ``weight`` (O, C/G, KH, KW), ``y`` (N, O, OH, OW); ``G`` is
``groups``, ``Cg = C/G``, ``Og = O/G``, ``Kg = Cg*KH*KW`` (one group's GEMM depth).
Public entry points: ``conv2d_output_size``, ``conv2d_forward``, ``conv2d_backward``.

Tiles
-----
Materialising im2col for the whole batch (a ``(C*KH*KW, N*OH*OW)`` matrix, 151 MB for
the benchmark layer) costs more memory traffic than the GEMM. So every path walks the
batch in *tiles* of ``b`` images whose working set (columns or frames + GEMM output)
fits ``TILE_BYTES`` (1 MiB, half of a core's L2): one 64-channel 32x32 image already
exceeds it, so such layers use ``b = 1``; the whole batch of the 8x8 digits CNN fits in
one tile. Per tile: build the inputs (cache-hot), GEMM, then bias + activation (forward)
while the output is still in cache; backward rebuilds a tile's inputs rather than saving
the forward's columns. Loops over tiles and over kernel taps (KH*KW) are the only
Python loops.

Four NumPy paths (``_path``; CuPy always takes the generic one)
----------------------------------------------------------------
Every path runs the three products as OpenBLAS GEMMs; what differs is the layout of the
GEMM operands and so the copies around them. Chosen by measurement on the ResNet-20 /
CIFAR-10 and digits layers (batch 128 / 64, float32, two threads):

* **nhwc** (groups 1, ``C > GENERIC_MAX_CHANNELS``, kernels larger than 1x1, and
  either stride > 1, ``OW < BATCH_INNER_MAX_OW``, or ``O >= NHWC_MIN_CHANNELS`` with
  ``OW <= NHWC_MAX_OW``: the 16x16 and 8x8 ResNet stages and every strided 3x3): the
  tile is copied channels-last into a zero-padded frame ``(b, Hp, Wp, C)`` and the
  columns are ``(b, OH, OW, KH, KW, C)``, one ``(b*L, Kg)`` matrix filled by one copy
  in runs of ``KW*C`` elements. All three GEMMs then have the long ``b*L`` side as M
  or K: ``y = cols @ W`` and ``grad_w = cols^T @ grad_y`` run at 110-140 GFLOP/s per
  core where the NCHW forms ``W @ cols`` / ``grad_y @ cols^T`` with M = O = 32 run at
  75-100 (the 16x16 layer's forward+backward 17 -> 13 ms, the 8x8 one's 13 -> 9.5 ms).
  ``grad_x`` is, for stride 1 and ``O <= 4*C``, the same conv applied to the
  channels-last ``grad_y`` with the flipped, transposed kernel (padding
  ``d*(K-1) - p``; negative pads crop), else the col2im of ``grad_y @ W`` with KH*KW
  strided adds into a channels-last frame. Groups are supported (G column blocks side
  by side, one GEMM per group) but not dispatched here: per-group GEMMs with N = Og
  on strided blocks are 2-8x slower than batch_inner's.
* **flat** (stride 1, wider outputs: the 32x32 stages): the tile is copied,
  zero-padded, into a *frame* ``(C, b, Hp, Wp)``. Seen per channel as one 1-D signal,
  tap ``(kh, kw)`` of every output pixel is the slice starting at ``kh*dh*Wp + kw*dw``,
  so the conv is computed on the padded grid ``(b, Hp, Wp)`` without any im2col
  gather; the ``Wp-OW`` right columns and the rows between stacked images are garbage,
  never read back (6% extra GEMM work at 32x32, padding 1, but 56% at 8x8, hence
  nhwc there). With ``Cg >= SHIFT_MIN_CHANNELS`` it runs one GEMM per tap straight on
  the shifted (strided, uncopied) frame plus an accumulate, ~10% faster than copying
  the ``(C*KH*KW, lb)`` columns in long runs, which it does for fewer channels.
  Backward writes the masked ``grad_y`` into a zeroed frame: its zeros cancel the
  garbage positions in ``grad_w``, and it is also the padded input of ``grad_x`` (the
  transposed conv, as above), computed the same way (no col2im scatter-adds).
  ``grad_w`` uses a channels-last copy of the x tile: tap ``(kh, kw)`` is then a plain
  ``(lb, C)`` matrix, so it is one NN GEMM per tap, ~1.6x faster in OpenBLAS than
  ``grad_y @ cols^T`` (NT).
* **batch_inner** (grouped convs, and 1x1 kernels, with ``OW < BATCH_INNER_MAX_OW``):
  frame ``(C, Hp, Wp, b)`` and columns ``(C, KH, KW, OH, OW, b)`` with the batch
  innermost, so the im2col is one copy in runs of ``OW*b`` (stride 1) or ``b``
  elements instead of runs of ``OW`` = 4; one (batched over groups) GEMM per tile.
  ``grad_x`` is the transposed conv (stride 1, ``O <= 4*C``) or col2im.
* **generic** (shallow GEMMs ``Kg < GENERIC_MAX_DEPTH``, ungrouped convs of at most
  ``GENERIC_MAX_CHANNELS`` inputs such as RGB first layers, strided 1x1 and grouped
  strided convs, and CuPy): columns ``(C, KH, KW, b, OH, OW)``
  filled by KH*KW strided slice copies clipped to the valid input range (the buffer's
  out-of-range border is zeroed once and never written: no padded copy of x);
  ``grad_x`` is the col2im of ``W^T @ grad_y`` with KH*KW strided slice-adds.

``grad_w`` is always computed with the column matrix as the left operand
(``cols @ grad_y^T`` in the NCHW layouts): OpenBLAS runs these long-K products with
M, N <= 32 ~1.5x faster that way round than as ``grad_y @ cols^T``.

Threads
-------
The pool, the lock and the thread count are shared with batch norm and ReLU; why and
what they cost: ``_parallel``'s module docstring. On NumPy, a call with at least
``MIN_PARALLEL_FLOPS`` of work splits the batch into ``_parallel.NUM_THREADS``
contiguous chunks, each worked tile by tile on its own Python thread (NumPy releases
the GIL in copies and GEMMs), while OpenBLAS is limited to one thread for the duration
of the call (``threadpoolctl``, ~6 us per call; BLAS's own threads would compete with
ours: 2 Python threads alone give no gain). Each thread owns its buffers and its
``grad_w``/``grad_b`` accumulator, summed at the end. ``threadpoolctl`` is optional:
without it, or while another thread is inside a threaded reference op (``_parallel``'s
lock), the tiles run serially on the calling thread with BLAS's own threading, which is
also what small calls do (below ~1e8 flops the thread hand-off costs more than it
saves).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..backend import get_array_module
from .. import knobs
from . import _parallel
from ..shapes import conv2d_output_size  # noqa: F401 - the family's formula, re-exported
from ..shapes import pair as _pair

__all__ = ["conv2d_output_size", "conv2d_forward", "conv2d_backward"]

#: Target size in bytes of one tile's working set (about half of a core's 2 MB L2).
TILE_BYTES = 1 << 20
#: Calls with fewer multiply-adds*2 than this run on the calling thread only.
MIN_PARALLEL_FLOPS = 1e8
#: GEMM depths (Cg*KH*KW) below this (C = 1 first layers, depthwise) and ungrouped
#: convs with at most GENERIC_MAX_CHANNELS inputs (RGB first layers) use the NCHW
#: im2col: the columns dominate the traffic and are written in runs of OH*OW there,
#: where flat's per-tap grad_w GEMMs would have N = C and nhwc's copies runs of KW*C.
GENERIC_MAX_DEPTH = 16
GENERIC_MAX_CHANNELS = 4
#: Ungrouped stride-1 convs with at least this many output channels and outputs at
#: most NHWC_MAX_OW wide use the channels-last path (so do narrower outputs than
#: BATCH_INNER_MAX_OW and strided convs whatever O).
NHWC_MIN_CHANNELS = 32
NHWC_MAX_OW = 24
#: Outputs narrower than this use nhwc, or (grouped, 1x1) the batch-inner layout.
BATCH_INNER_MAX_OW = 12
#: Input channels per group from which stride-1 convs use one GEMM per kernel tap.
SHIFT_MIN_CHANNELS = 32
#: Column-buffer budget per tile on CuPy (device memory, no cache argument there).
CUPY_TILE_BYTES = 256 << 20


class _Geom:
    """Every size one conv call needs, computed once."""

    def __init__(self, xshape, wshape, stride, padding, dilation, groups):
        self.N, self.C, self.H, self.W = (int(s) for s in xshape)
        self.O, _, self.KH, self.KW = (int(s) for s in wshape)
        self.sh, self.sw = _pair(stride)
        self.ph, self.pw = _pair(padding)
        self.dh, self.dw = _pair(dilation)
        self.G = int(groups)
        self.Cg, self.Og = self.C // self.G, self.O // self.G
        self.Kg = self.Cg * self.KH * self.KW
        self.OH, self.OW = conv2d_output_size(
            self.H, self.W, (self.KH, self.KW), (self.sh, self.sw), (self.ph, self.pw), (self.dh, self.dw)
        )
        self.L = self.OH * self.OW
        self.Hp, self.Wp = self.H + 2 * self.ph, self.W + 2 * self.pw
        self.flops = 2.0 * self.N * self.O * self.Kg * self.L
        self.rows_h = _taps(self.OH, self.H, self.KH, self.sh, self.dh, self.ph)
        self.rows_w = _taps(self.OW, self.W, self.KW, self.sw, self.dw, self.pw)


def _taps(out_len, in_len, k, s, d, p):
    """Per kernel tap t: ``(o0, o1, i0)``, the outputs ``o0 <= o < o1`` whose input
    ``o*s + t*d - p`` lies inside ``[0, in_len)``, and the input of ``o0``."""
    res = []
    for t in range(k):
        off = t * d - p
        o0 = 0 if off >= 0 else (-off + s - 1) // s
        o1 = max(o0, min(out_len, (in_len - 1 - off) // s + 1))
        res.append((o0, o1, o0 * s + off))
    return res


# ----------------------------------------------------------------------------- activation


def _activate(xp, y, activation, slope):
    """In place: relu / leaky_relu of ``y``."""
    if activation == "relu":
        xp.maximum(y, 0, out=y)
    elif activation == "leaky_relu" and slope != 1:
        scaled = y * slope
        (xp.maximum if slope < 1 else xp.minimum)(y, scaled, out=y)


def _epilogue(acc, bias4, yt, activation, slope):
    """``yt = act(acc + bias)``: the tile's GEMM result lands in the output while cache-hot."""
    if bias4 is not None:
        np.add(acc, bias4, out=yt)
    else:
        np.copyto(yt, acc)
    _activate(np, yt, activation, slope)


def _masked_grad(xp, gy, y, activation, slope, work=None):
    """``gy`` times the activation's derivative read from the saved output ``y``:
    ``gy`` itself without activation, else a new array (or ``work``, contiguous and of
    ``gy``'s shape). Kept contiguous on purpose: a bool*float multiply runs buffered,
    and into a strided destination it is ~3x slower than multiply-then-copy."""
    if activation is None:
        return gy
    if activation == "relu":
        return xp.multiply(gy, y > 0, out=work)
    factor = xp.where(y > 0, gy.dtype.type(1), gy.dtype.type(slope))
    return xp.multiply(gy, factor, out=work)


# ----------------------------------------------------------------------------- threads

def _tiles(n0, n1, per_image_bytes, budget):
    """Near-equal tiles of ``[n0, n1)`` whose column buffers fit ``budget`` bytes."""
    n = n1 - n0
    b = max(1, min(n, budget // max(1, per_image_bytes)))
    count = -(-n // b)
    b = -(-n // count)
    return b, [(s, min(n1, s + b)) for s in range(n0, n1, b)]


def _run_chunks(g, work):
    """Run ``work(n0, n1)`` over the batch: threaded chunks for big calls, else one call.
    Returns the list of the chunks' results."""
    nthreads = min(_parallel.NUM_THREADS, g.N)
    lock = _parallel.lock
    if nthreads > 1 and g.flops >= MIN_PARALLEL_FLOPS and lock.acquire(blocking=False):
        try:
            limiter = _parallel.blas_limiter()
            if limiter is not None:
                chunks = _parallel.split(g.N, nthreads)
                with limiter:
                    futures = [_parallel.executor().submit(work, a, b) for a, b in chunks[1:]]
                    try:
                        first = work(*chunks[0])
                    finally:
                        rest = [f.result() for f in futures]
                return [first, *rest]
        finally:
            lock.release()
    return [work(0, g.N)]


# ----------------------------------------------------------------------------- generic path


def _im2col(g, src, cols):
    """cols[c, kh, kw, b, oh, ow] = src[b, c, oh*sh + kh*dh - ph, ow*sw + kw*dw - pw]
    for in-range inputs; out-of-range entries of ``cols`` are left as they are (zero)."""
    sh, sw = g.sh, g.sw
    for kh, (oh0, oh1, ih0) in enumerate(g.rows_h):
        if oh1 <= oh0:
            continue
        hs = slice(ih0, ih0 + (oh1 - oh0 - 1) * sh + 1, sh)
        for kw, (ow0, ow1, iw0) in enumerate(g.rows_w):
            if ow1 <= ow0:
                continue
            ws = slice(iw0, iw0 + (ow1 - ow0 - 1) * sw + 1, sw)
            cols[:, kh, kw, :, oh0:oh1, ow0:ow1] = src[:, :, hs, ws].transpose(1, 0, 2, 3)


def _col2im(xp, g, gcols, gx):
    """gx[b, c, ih, iw] = sum over taps of gcols[c, kh, kw, b, oh, ow] (the adjoint of
    ``_im2col``). A tap that covers every input pixel (stride 1) is assigned first,
    which saves zero-filling ``gx``."""
    sh, sw = g.sh, g.sw
    taps = []
    first = None
    for kh, (oh0, oh1, ih0) in enumerate(g.rows_h):
        for kw, (ow0, ow1, iw0) in enumerate(g.rows_w):
            if oh1 <= oh0 or ow1 <= ow0:
                continue
            full = sh == 1 and sw == 1 and ih0 == 0 and iw0 == 0 and oh1 - oh0 == g.H and ow1 - ow0 == g.W
            if full and first is None:
                first = (kh, kw, oh0, oh1, ih0, ow0, ow1, iw0)
            else:
                taps.append((kh, kw, oh0, oh1, ih0, ow0, ow1, iw0))
    if first is None:
        gx[...] = 0
    else:
        kh, kw, oh0, oh1, _, ow0, ow1, _ = first
        gx[...] = gcols[:, kh, kw, :, oh0:oh1, ow0:ow1].transpose(1, 0, 2, 3)
    for kh, kw, oh0, oh1, ih0, ow0, ow1, iw0 in taps:
        hs = slice(ih0, ih0 + (oh1 - oh0 - 1) * sh + 1, sh)
        ws = slice(iw0, iw0 + (ow1 - ow0 - 1) * sw + 1, sw)
        gx[:, :, hs, ws] += gcols[:, kh, kw, :, oh0:oh1, ow0:ow1].transpose(1, 0, 2, 3)


def _generic_forward(xp, g, x, wm, bias, activation, slope, y, n0, n1, budget):
    per_image = g.Kg * g.G * g.L * x.itemsize
    bmax, tiles = _tiles(n0, n1, per_image, budget)
    colsbuf = xp.zeros((g.C, g.KH, g.KW, bmax, g.OH, g.OW), dtype=x.dtype)
    O, G, Og, L = g.O, g.G, g.Og, g.L
    for a, e in tiles:
        b = e - a
        cols = colsbuf[:, :, :, :b]
        _im2col(g, x[a:e], cols)
        colsg = cols.reshape(G, g.Kg, b, L)
        yt = y[a:e]
        if b == 1 or L >= 256:
            # One GEMM per image, written straight into y.
            xp.matmul(wm, colsg.transpose(2, 0, 1, 3), out=yt.reshape(b, G, Og, L))
            if bias is not None:
                yt += bias.reshape(1, O, 1, 1)
        else:
            # Small images: one GEMM for the tile, then a transposing copy (+ bias).
            tmp = xp.matmul(wm, colsg.reshape(G, g.Kg, b * L))
            src = tmp.reshape(O, b, g.OH, g.OW).transpose(1, 0, 2, 3)
            if bias is not None:
                xp.add(src, bias.reshape(1, O, 1, 1), out=yt)
            else:
                yt[...] = src
        _activate(xp, yt, activation, slope)


def _generic_backward(xp, g, gy_all, x, wm, y, activation, slope, needs, gx_all, n0, n1, budget):
    G, Og, Kg, L, O = g.G, g.Og, g.Kg, g.L, g.O
    per_image = max(Kg * G, O) * L * x.itemsize
    bmax, tiles = _tiles(n0, n1, per_image, budget)
    colsbuf = xp.zeros((g.C, g.KH, g.KW, bmax, g.OH, g.OW), dtype=x.dtype) if needs[1] else None
    gwT = xp.zeros((G, Kg, Og), dtype=x.dtype) if needs[1] else None
    gb = xp.zeros((O,), dtype=x.dtype) if needs[2] else None
    wt = wm.transpose(0, 2, 1) if needs[0] else None
    for a, e in tiles:
        b = e - a
        gyt = _masked_grad(xp, gy_all[a:e], None if y is None else y[a:e], activation, slope)
        # (G, Og, b*L): the tile's gradient with the batch inside the GEMM's N dimension.
        gyp = xp.ascontiguousarray(gyt.reshape(b, G, Og, L).transpose(1, 2, 0, 3)).reshape(G, Og, b * L)
        if needs[2]:
            gb += gyp.sum(axis=2).reshape(O)
        if needs[1]:
            cols = colsbuf[:, :, :, :b]
            _im2col(g, x[a:e], cols)
            # cols @ gy^T rather than gy @ cols^T: OpenBLAS runs this long-K product
            # ~1.5x faster with the column matrix as the left operand.
            gwT += xp.matmul(cols.reshape(G, Kg, b * L), gyp.transpose(0, 2, 1))
        if needs[0]:
            # Og == 1 (depthwise): an outer product, 2.5x faster as a broadcast multiply.
            gcols = xp.multiply(wt, gyp) if Og == 1 else xp.matmul(wt, gyp)
            _col2im(xp, g, gcols.reshape(g.C, g.KH, g.KW, b, g.OH, g.OW), gx_all[a:e])
    return (None if gwT is None else xp.ascontiguousarray(gwT.transpose(0, 2, 1))), gb


# ----------------------------------------------------------------------------- batch-inner path


class _BatchInner:
    """Buffers of one tile of ``b`` images in the batch-inner layout: the zero-padded
    input ``(C, Hp, Wp, b)`` (batch innermost) and its columns ``(C, KH, KW, OH, OW, b)``.
    With the batch innermost every copy moves runs of ``b`` (stride > 1) or ``OW*b``
    (stride 1) elements, where the NCHW im2col of a 4x4 image moves runs of 4.
    A negative padding (the transposed conv of grad_x) crops the input instead."""

    def __init__(self, g, b, dtype):
        self.g, self.b = g, b
        it = np.dtype(dtype).itemsize
        self.frame = np.zeros((g.C, g.Hp, g.Wp, b), dtype=dtype)
        rh0, rw0, sh0, sw0 = max(g.ph, 0), max(g.pw, 0), max(-g.ph, 0), max(-g.pw, 0)
        nh, nw = min(g.H - sh0, g.Hp - rh0), min(g.W - sw0, g.Wp - rw0)
        self.interior = self.frame[:, rh0 : rh0 + nh, rw0 : rw0 + nw, :]
        self.crop = (slice(sh0, sh0 + nh), slice(sw0, sw0 + nw))
        self.cols = np.empty((g.C, g.KH, g.KW, g.OH, g.OW, b), dtype=dtype)
        hw = g.Hp * g.Wp * b
        self.src = as_strided(
            self.frame,
            shape=self.cols.shape,
            strides=(hw * it, g.dh * g.Wp * b * it, g.dw * b * it, g.sh * g.Wp * b * it, g.sw * b * it, it),
        )
        self.out = np.empty((g.G, g.Og, g.L * b), dtype=dtype)

    def load(self, xt):
        """Columns ``(G, Kg, L*b)`` of the tile ``xt`` (b, C, H, W)."""
        self.interior[...] = xt[:, :, self.crop[0], self.crop[1]].transpose(1, 2, 3, 0)
        np.copyto(self.cols, self.src)
        return self.cols.reshape(self.g.G, self.g.Kg, self.g.L * self.b)

    def conv(self, wm, xt):
        """``(b, O, OH, OW)`` view of ``conv(xt, w)`` (without bias), ``wm`` (G, Og, Kg)."""
        np.matmul(wm, self.load(xt), out=self.out)
        return self.out.reshape(self.g.O, self.g.OH, self.g.OW, self.b).transpose(3, 0, 1, 2)


def _transposed_geom(g):
    """The geometry of grad_x as a stride-1 conv of grad_y: kernel flipped and
    transposed, padding ``d*(K-1) - p`` (negative means cropping)."""
    return _Geom(
        (g.N, g.O, g.OH, g.OW),
        (g.C, g.Og, g.KH, g.KW),
        (1, 1),
        (g.dh * (g.KH - 1) - g.ph, g.dw * (g.KW - 1) - g.pw),
        (g.dh, g.dw),
        g.G,
    )


def _flipped_weight(weight, g):
    """The transposed conv's weight ``(C, Og, KH, KW)``:
    ``wq[g*Cg + cg, og, kh, kw] = w[g*Og + og, cg, KH-1-kh, KW-1-kw]``."""
    return np.ascontiguousarray(
        weight.reshape(g.G, g.Og, g.Cg, g.KH, g.KW)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    ).reshape(g.C, g.Og, g.KH, g.KW)


def _bi_tiles(g, n0, n1, budget, it):
    per_image = (g.C * g.KH * g.KW + 2 * g.O) * g.L * it
    return _tiles(n0, n1, per_image, budget)


def _bi_forward(g, x, wm, bias, activation, slope, y, n0, n1, budget):
    _, tiles = _bi_tiles(g, n0, n1, budget, x.itemsize)
    bufs = {}
    bias4 = None if bias is None else bias.reshape(1, g.O, 1, 1)
    for a, e in tiles:
        b = e - a
        if b not in bufs:
            bufs[b] = _BatchInner(g, b, x.dtype)
        out = bufs[b].conv(wm, x[a:e])
        _epilogue(out, bias4, y[a:e], activation, slope)


def _bi_backward(g, gy_all, x, weight, wm, y, activation, slope, needs, gx_all, n0, n1, budget):
    """Batch-inner backward. grad_x: for stride 1 the transposed conv of grad_y (one
    column copy + GEMM), else col2im of ``W^T @ grad_y`` with KH*KW strided adds."""
    _, tiles = _bi_tiles(g, n0, n1, budget, x.itemsize)
    G, Og, O, dt = g.G, g.Og, g.O, x.dtype
    gwT = np.zeros((G, g.Kg, Og), dtype=dt) if needs[1] else None
    gb = np.zeros((O,), dtype=dt) if needs[2] else None
    # The transposed conv copies O*KH*KW columns per pixel, col2im adds C*KH*KW.
    transposed = needs[0] and _flat_ok(g) and g.O <= 4 * g.C
    if transposed:
        gq = _transposed_geom(g)
        wq = _flipped_weight(weight, g).reshape(G, g.Cg, Og * g.KH * g.KW)
    elif needs[0]:
        wt = np.ascontiguousarray(wm.transpose(0, 2, 1))
    bufs = {}
    for a, e in tiles:
        b = e - a
        if b not in bufs:
            bufs[b] = {
                "x": _BatchInner(g, b, dt) if needs[1] else None,
                "q": _BatchInner(gq, b, dt) if transposed else None,
                "gyT": np.empty((O, g.OH, g.OW, b), dtype=dt),
                "work": np.empty((b, O, g.OH, g.OW), dtype=dt) if activation else None,
                "gwt": np.empty((G, g.Kg, Og), dtype=dt) if needs[1] else None,
                "gcols": np.empty((G, g.Kg, g.L * b), dtype=dt) if needs[0] and not transposed else None,
                "gframe": np.empty((g.C, g.Hp, g.Wp, b), dtype=dt) if needs[0] and not transposed else None,
            }
        buf = bufs[b]
        gyt = _masked_grad(np, gy_all[a:e], None if y is None else y[a:e], activation, slope, buf["work"])
        if needs[2]:
            gb += gyt.sum(axis=(0, 2, 3))
        if needs[1] or not transposed:
            gyT = buf["gyT"]
            np.copyto(gyT, gyt.transpose(1, 2, 3, 0))
            gy2 = gyT.reshape(G, Og, g.L * b)
        if needs[1]:
            cols = buf["x"].load(x[a:e])
            np.matmul(cols, gy2.transpose(0, 2, 1), out=buf["gwt"])  # see _generic_backward
            gwT += buf["gwt"]
        if transposed:
            np.copyto(gx_all[a:e], buf["q"].conv(wq, gyt))
        elif needs[0]:
            np.matmul(wt, gy2, out=buf["gcols"])
            gc = buf["gcols"].reshape(g.C, g.KH, g.KW, g.OH, g.OW, b)
            gf = buf["gframe"]
            gf[...] = 0
            for kh in range(g.KH):
                hs = slice(kh * g.dh, kh * g.dh + (g.OH - 1) * g.sh + 1, g.sh)
                for kw in range(g.KW):
                    ws = slice(kw * g.dw, kw * g.dw + (g.OW - 1) * g.sw + 1, g.sw)
                    gf[:, hs, ws, :] += gc[:, kh, kw]
            np.copyto(gx_all[a:e], gf[:, g.ph : g.ph + g.H, g.pw : g.pw + g.W, :].transpose(3, 0, 1, 2))
    return (None if gwT is None else np.ascontiguousarray(gwT.transpose(0, 2, 1))), gb


# ----------------------------------------------------------------------------- flat path


def _flat_ok(g):
    return g.sh == 1 and g.sw == 1


def _path(g):
    """Which NumPy implementation serves ``g`` (thresholds measured on the 2-core dev
    machine, see the module docstring)."""
    forced = knobs.get("conv_cpu_path")  # tests and benchmarks pin a path
    if forced is not None:
        return "generic" if forced == "flat" and not _flat_ok(g) else forced
    if g.Kg < GENERIC_MAX_DEPTH or (g.G == 1 and g.C <= GENERIC_MAX_CHANNELS):
        return "generic"
    if g.G == 1 and g.KH * g.KW > 1:
        small = g.OW < BATCH_INNER_MAX_OW or (g.O >= NHWC_MIN_CHANNELS and g.OW <= NHWC_MAX_OW)
        if small or not _flat_ok(g):
            return "nhwc"
    if g.OW < BATCH_INNER_MAX_OW:
        return "batch_inner"
    return "flat" if _flat_ok(g) else "generic"


class _Frame:
    """A zeroed buffer holding ``b`` images of ``ch`` channels on a ``(hf, wf)`` grid,
    laid out per channel as one 1-D signal ``(ch, b, hf, wf)``, plus a tail slack so that
    tap slices of garbage outputs never run past the allocation."""

    def __init__(self, ch, b, hf, wf, slack, dtype):
        self.ch, self.b, self.hf, self.wf = ch, b, hf, wf
        self.stride = b * hf * wf  # elements between channels
        self.buf = np.zeros(ch * self.stride + slack, dtype=dtype)
        self.grid = self.buf[: ch * self.stride].reshape(ch, b, hf, wf)

    def rows(self, start, length):
        """(ch, length) view starting at flat offset ``start`` in every channel."""
        it = self.buf.itemsize
        return as_strided(self.buf[start:], shape=(self.ch, length), strides=(self.stride * it, it))


def _ext_view(ext, b, ch, h, w, hf, wf):
    """The valid ``(b, ch, h, w)`` pixels of a GEMM output ``ext`` (ch, Lb) computed on
    the stacked ``(b, hf, wf)`` grid."""
    it = ext.itemsize
    return as_strided(ext, shape=(b, ch, h, w), strides=(hf * wf * it, ext.strides[-2], wf * it, it))


def _flat_len(b, hf, out_h, wf):
    """Number of flat output positions covering ``b`` stacked images of ``out_h`` rows."""
    return ((b - 1) * hf + out_h) * wf


class _FrameConv:
    """Stride-1 convolution of a frame's stacked images: ``ext (G, Og, lb) =
    sum over taps of w[:, :, kh, kw] @ frame shifted by kh*dh*wf + kw*dw``.

    Two strategies, both measured on the 64-channel 32x32 benchmark layer:

    * ``shift`` (``Cin/G >= SHIFT_MIN_CHANNELS``): one GEMM per tap straight on the
      shifted frame (a strided matrix, no copy), accumulated with an add: ~10% faster
      than building columns when the per-tap depth ``Cin/G`` is large.
    * ``cols``: copy the ``(Cin, KH, KW, lb)`` column matrix (one copy of long
      contiguous runs) and run one deep GEMM; better for few channels.
    """

    def __init__(self, w4, groups, frame, lmax, kh, kw, dh, dw):
        self.frame, self.G = frame, groups
        cout, self.cg = int(w4.shape[0]), int(w4.shape[1])
        self.og = cout // groups
        self.kh, self.kw, self.dh, self.dw = kh, kw, dh, dw
        self.offsets = [i * dh * frame.wf + j * dw for i in range(kh) for j in range(kw)]
        self.shift = self.cg >= SHIFT_MIN_CHANNELS
        if self.shift:
            wt = w4.reshape(groups, self.og, self.cg, kh * kw).transpose(3, 0, 1, 2)
            self.wt = np.ascontiguousarray(wt)  # (KH*KW, G, Og, Cg)
            self.tmp = np.empty((groups, self.og, lmax), dtype=frame.buf.dtype)
        else:
            self.wm = np.ascontiguousarray(w4).reshape(groups, self.og, self.cg * kh * kw)
            self.cols = np.empty((frame.ch, kh, kw, lmax), dtype=frame.buf.dtype)
        self._views = {}

    def _inputs(self, lb):
        """The per-tap input views (shift) or the column source view (cols) for ``lb``."""
        views = self._views.get(lb)
        if views is None:
            fr, it = self.frame, self.frame.buf.itemsize
            if self.shift:
                strides = (self.cg * fr.stride * it, fr.stride * it, it)
                shape = (self.G, self.cg, lb)
                views = [as_strided(fr.buf[off:], shape=shape, strides=strides) for off in self.offsets]
            else:
                src = as_strided(
                    fr.buf,
                    shape=(fr.ch, self.kh, self.kw, lb),
                    strides=(fr.stride * it, self.dh * fr.wf * it, self.dw * it, it),
                )
                views = (src, self.cols[..., :lb])
            self._views[lb] = views
        return views

    def __call__(self, ext, lb):
        views = self._inputs(lb)
        if self.shift:
            tmp = self.tmp[..., :lb]
            np.matmul(self.wt[0], views[0], out=ext)
            for t in range(1, len(views)):
                np.matmul(self.wt[t], views[t], out=tmp)
                np.add(ext, tmp, out=ext)
        else:
            src, cols = views
            np.copyto(cols, src)
            np.matmul(self.wm, cols.reshape(self.G, -1, lb), out=ext)


def _frame_conv_bytes(cin, cin_g, cout, kh, kw, cells, itemsize):
    """Working set per image of a ``_FrameConv`` on ``cells = hf*wf`` grid cells."""
    if cin_g >= SHIFT_MIN_CHANNELS:
        return (cin + 2 * cout) * cells * itemsize
    return (cin * kh * kw + cout) * cells * itemsize


def _flat_forward(g, x, weight, bias, activation, slope, y, n0, n1, budget):
    it = x.itemsize
    per_image = _frame_conv_bytes(g.C, g.Cg, g.O, g.KH, g.KW, g.Hp * g.Wp, it)
    bmax, tiles = _tiles(n0, n1, per_image, budget)
    frame = _Frame(g.C, bmax, g.Hp, g.Wp, (g.KW - 1) * g.dw + 1, x.dtype)
    lmax = _flat_len(bmax, g.Hp, g.OH, g.Wp)
    conv = _FrameConv(weight, g.G, frame, lmax, g.KH, g.KW, g.dh, g.dw)
    extbuf = np.empty((g.G, g.Og, lmax), dtype=x.dtype)
    bias4 = None if bias is None else bias.reshape(1, g.O, 1, 1)
    interior = (slice(g.ph, g.ph + g.H), slice(g.pw, g.pw + g.W))
    outs = {}
    for a, e in tiles:
        b = e - a
        lb = _flat_len(b, g.Hp, g.OH, g.Wp)
        if b not in outs:
            ext = extbuf[..., :lb]
            outs[b] = (ext, _ext_view(ext.reshape(g.O, lb), b, g.O, g.OH, g.OW, g.Hp, g.Wp))
        ext, src = outs[b]
        frame.grid[:, :b, interior[0], interior[1]] = x[a:e].transpose(1, 0, 2, 3)
        conv(ext, lb)
        _epilogue(src, bias4, y[a:e], activation, slope)


def _flat_backward(g, gy_all, x, weight, y, activation, slope, needs, gx_all, n0, n1, budget):
    """Stride-1 backward on flat frames (see the module docstring)."""
    it = x.itemsize
    G, Og, O, C, Cg = g.G, g.Og, g.O, g.C, g.Cg
    # grad_x = correlation of grad_y (padded by q = d*(K-1) - p, cropped if q < 0) with
    # the flipped, transposed kernel, on a grid (hq, wq) = (H, W) + d*(K-1).
    qh, qw = g.dh * (g.KH - 1) - g.ph, g.dw * (g.KW - 1) - g.pw
    hq, wq = g.H + g.dh * (g.KH - 1), g.W + g.dw * (g.KW - 1)
    shared = needs[0] and qh == g.ph and qw == g.pw  # "same" padding: one gy frame
    need_wb = needs[1] or needs[2]
    per_image = max(
        (C + O) * g.Hp * g.Wp * it if need_wb else 0,
        _frame_conv_bytes(O, Og, C, g.KH, g.KW, hq * wq, it) if needs[0] else 0,
    )
    bmax, tiles = _tiles(n0, n1, per_image, budget)
    slack = max(g.Wp, wq) * (g.KH * g.dh + 1) + (g.KW - 1) * g.dw + 1

    gw = None
    gb = np.zeros((O,), dtype=x.dtype) if needs[2] else None
    if needs[0]:
        qframe = _Frame(O, bmax, hq, wq, slack, x.dtype)
        lqmax = _flat_len(bmax, hq, g.H, wq)
        qconv = _FrameConv(_flipped_weight(weight, g), G, qframe, lqmax, g.KH, g.KW, g.dh, g.dw)
        qext = np.empty((G, Cg, lqmax), dtype=x.dtype)
        # Where grad_y lands in the q-frame (cropped when q < 0).
        rh0, rw0 = max(qh, 0), max(qw, 0)
        sh0, sw0 = max(-qh, 0), max(-qw, 0)
        nh, nw = min(g.OH - sh0, hq - rh0), min(g.OW - sw0, wq - rw0)
    if need_wb:
        pframe = qframe if shared else _Frame(O, bmax, g.Hp, g.Wp, slack, x.dtype)
        poff = (qh * wq + qw) if shared else 0
        prh, prw = (qh, qw) if shared else (0, 0)
    if needs[1]:
        # x tile, zero-padded, channels-last: (b, Hp, Wp, C) + slack. Tap (kh, kw) of the
        # stacked output grid is then a plain (lb, C) matrix at offset
        # (kh*dh*Wp + kw*dw)*C, so grad_w needs no column buffer: one NN GEMM per tap
        # and group, gw[g, kh, kw] += gy[g] (Og, lb) @ x_tap[g] (lb, Cg) (NN is ~1.6x
        # faster in OpenBLAS than gy @ cols^T, the NT form).
        xcl = np.zeros(bmax * g.Hp * g.Wp * C + ((g.KW - 1) * g.dw + 1) * C, dtype=x.dtype)
        xcl4 = xcl[: bmax * g.Hp * g.Wp * C].reshape(bmax, g.Hp, g.Wp, C)
        gw = np.zeros((G, g.KH, g.KW, Og, Cg), dtype=x.dtype)
        gwt = np.empty_like(gw)

    work = np.empty((bmax, O, g.OH, g.OW), dtype=x.dtype) if activation else None
    views = {}
    for a, e in tiles:
        b = e - a
        gyt = gy_all[a:e]
        yt = None if y is None else y[a:e]
        lb = _flat_len(b, g.Hp, g.OH, g.Wp)
        lq = _flat_len(b, hq, g.H, wq)
        if b not in views:
            v = {}
            if need_wb:
                v["pdst"] = pframe.grid[:, :b, prh : prh + g.OH, prw : prw + g.OW].transpose(1, 0, 2, 3)
                v["gyext"] = pframe.rows(poff, lb)  # (O, lb), zeros off the valid pixels
            if needs[1]:
                v["taps"] = as_strided(
                    xcl,
                    shape=(G, g.KH, g.KW, lb, Cg),
                    strides=(Cg * it, g.dh * g.Wp * C * it, g.dw * C * it, C * it, it),
                )
            if needs[0]:
                v["qdst"] = qframe.grid[:, :b, rh0 : rh0 + nh, rw0 : rw0 + nw].transpose(1, 0, 2, 3)
                ext = qext[..., :lq]
                v["qext"] = ext
                v["gxsrc"] = _ext_view(ext.reshape(C, lq), b, C, g.H, g.W, hq, wq)
            views[b] = v
        v = views[b]
        gm = _masked_grad(np, gyt, yt, activation, slope, None if work is None else work[:b])
        if need_wb:
            np.copyto(v["pdst"], gm)
            gyext = v["gyext"]
            if needs[2]:
                gb += gyext.sum(axis=1)
            if needs[1]:
                xcl4[:b, g.ph : g.ph + g.H, g.pw : g.pw + g.W] = x[a:e].transpose(0, 2, 3, 1)
                np.matmul(gyext.reshape(G, 1, 1, Og, lb), v["taps"], out=gwt)
                gw += gwt
        if needs[0]:
            if not (shared and need_wb):
                np.copyto(v["qdst"], gm[:, :, sh0 : sh0 + nh, sw0 : sw0 + nw])
            qconv(v["qext"], lq)
            np.copyto(gx_all[a:e], v["gxsrc"])
    if gw is not None:
        gw = np.ascontiguousarray(gw.transpose(0, 3, 4, 1, 2)).reshape(G, Og, g.Kg)
    return gw, gb


# ----------------------------------------------------------------------------- nhwc path


class _Nhwc:
    """Buffers of one tile of up to ``bmax`` images in the channels-last layout: the
    zero-padded input frame ``(b, Hp, Wp, C)`` and its columns
    ``(b, OH, OW, G, KH, KW, Cg)`` = ``(b*L, G, Kg)``: G column matrices side by side.
    The column copy moves runs of ``KW*C`` elements (``Cg`` with groups or dilation).
    A negative padding (grad_x's transposed conv) crops the input instead."""

    def __init__(self, g, bmax, dtype):
        self.g = g
        it = np.dtype(dtype).itemsize
        self.frame = np.zeros((bmax, g.Hp, g.Wp, g.C), dtype=dtype)
        rh0, rw0, sh0, sw0 = max(g.ph, 0), max(g.pw, 0), max(-g.ph, 0), max(-g.pw, 0)
        nh, nw = min(g.H - sh0, g.Hp - rh0), min(g.W - sw0, g.Wp - rw0)
        self.interior = self.frame[:, rh0 : rh0 + nh, rw0 : rw0 + nw, :]
        self.crop = (slice(sh0, sh0 + nh), slice(sw0, sw0 + nw))
        self.cols = np.empty((bmax * g.L, g.G, g.Kg), dtype=dtype)
        self.cols7 = self.cols.reshape(bmax, g.OH, g.OW, g.G, g.KH, g.KW, g.Cg)
        row, px = g.Wp * g.C * it, g.C * it
        self.src = as_strided(
            self.frame,
            shape=self.cols7.shape,
            strides=(g.Hp * row, g.sh * row, g.sw * px, g.Cg * it, g.dh * row, g.dw * px, it),
        )

    def load(self, xt, nchw=True):
        """The tile's columns ``(G, b*L, Kg)`` of ``xt``: (b, C, H, W), or channels-last
        (b, H, W, C) with ``nchw=False``."""
        b = xt.shape[0]
        if nchw:
            self.interior[:b] = xt[:, :, self.crop[0], self.crop[1]].transpose(0, 2, 3, 1)
        else:
            self.interior[:b] = xt[:, self.crop[0], self.crop[1]]
        np.copyto(self.cols7[:b], self.src[:b])
        return self.cols[: b * self.g.L].transpose(1, 0, 2)


def _nhwc_weight(weight, groups):
    """``(G, KH*KW*Cg, Og)``: each group's weight as the right operand of its columns."""
    O, Cg, KH, KW = weight.shape
    w = weight.reshape(groups, O // groups, Cg, KH, KW).transpose(0, 3, 4, 2, 1)
    return np.ascontiguousarray(w).reshape(groups, KH * KW * Cg, O // groups)


def _nhwc_tiles(g, n0, n1, budget, it):
    per_image = (g.Kg * g.G + 2 * max(g.O, g.C)) * g.L * it
    return _tiles(n0, n1, per_image, budget)


def _nhwc_forward(g, x, weight, bias, activation, slope, y, n0, n1, budget):
    bmax, tiles = _nhwc_tiles(g, n0, n1, budget, x.itemsize)
    dt = x.dtype
    buf = _Nhwc(g, bmax, dt)
    out = np.empty((bmax * g.L, g.G, g.Og), dtype=dt)
    wcl = _nhwc_weight(weight, g.G)
    bias4 = None if bias is None else bias.reshape(1, g.O, 1, 1)
    for a, e in tiles:
        b = e - a
        ob = out[: b * g.L]
        np.matmul(buf.load(x[a:e]), wcl, out=ob.transpose(1, 0, 2))
        src = ob.reshape(b, g.OH, g.OW, g.O).transpose(0, 3, 1, 2)
        _epilogue(src, bias4, y[a:e], activation, slope)


def _nhwc_backward(g, gy_all, x, weight, y, activation, slope, needs, gx_all, n0, n1, budget):
    """Channels-last backward. grad_w: ``cols^T @ grad_y`` per group. grad_x: for stride
    1 and ``O <= 4*C`` the transposed conv of the channels-last grad_y (one column copy
    + GEMM), else the col2im of ``grad_y @ W`` with KH*KW strided adds into a padded
    channels-last frame."""
    dt = x.dtype
    G, O, C, Og, Cg, L = g.G, g.O, g.C, g.Og, g.Cg, g.L
    bmax, tiles = _nhwc_tiles(g, n0, n1, budget, x.itemsize)
    gyl = np.empty((bmax * L, G, Og), dtype=dt)
    work = np.empty((bmax, O, g.OH, g.OW), dtype=dt) if activation else None
    gw = np.zeros((G, g.Kg, Og), dtype=dt) if needs[1] else None
    gb = np.zeros((O,), dtype=dt) if needs[2] else None
    if needs[1]:
        xbuf = _Nhwc(g, bmax, dt)
        gwt = np.empty_like(gw)
    transposed = needs[0] and _flat_ok(g) and O <= 4 * C
    if transposed:
        gq = _transposed_geom(g)
        qbuf = _Nhwc(gq, bmax, dt)
        wq = _nhwc_weight(_flipped_weight(weight, g), G)
        gxl = np.empty((bmax * gq.L, G, Cg), dtype=dt)
    elif needs[0]:
        wg = weight.reshape(G, Og, Cg, g.KH, g.KW).transpose(0, 1, 3, 4, 2)
        wg = np.ascontiguousarray(wg).reshape(G, Og, g.Kg)  # (G, Og, Kg), Kg as (kh, kw, cg)
        gcols = np.empty((bmax * L, G, g.Kg), dtype=dt)
        gframe = np.empty((bmax, g.Hp, g.Wp, G, Cg), dtype=dt)
    for a, e in tiles:
        b = e - a
        wk = None if work is None else work[:b]
        gm = _masked_grad(np, gy_all[a:e], None if y is None else y[a:e], activation, slope, wk)
        gt = gyl[: b * L]
        np.copyto(gt.reshape(b, g.OH, g.OW, O), gm.transpose(0, 2, 3, 1))
        gyg = gt.transpose(1, 0, 2)  # (G, b*L, Og)
        if needs[2]:
            gb += gt.reshape(b * L, O).sum(axis=0)
        if needs[1]:
            np.matmul(xbuf.load(x[a:e]).transpose(0, 2, 1), gyg, out=gwt)
            gw += gwt
        if transposed:
            gx2 = gxl[: b * gq.L]
            np.matmul(qbuf.load(gt.reshape(b, g.OH, g.OW, O), nchw=False), wq, out=gx2.transpose(1, 0, 2))
            np.copyto(gx_all[a:e], gx2.reshape(b, g.H, g.W, C).transpose(0, 3, 1, 2))
        elif needs[0]:
            gc2 = gcols[: b * L]
            np.matmul(gyg, wg, out=gc2.transpose(1, 0, 2))
            gc = gc2.reshape(b, g.OH, g.OW, G, g.KH, g.KW, Cg)
            gf = gframe[:b]
            gf[...] = 0
            for kh in range(g.KH):
                hs = slice(kh * g.dh, kh * g.dh + (g.OH - 1) * g.sh + 1, g.sh)
                for kw in range(g.KW):
                    ws = slice(kw * g.dw, kw * g.dw + (g.OW - 1) * g.sw + 1, g.sw)
                    gf[:, hs, ws] += gc[:, :, :, :, kh, kw]
            src = gf[:, g.ph : g.ph + g.H, g.pw : g.pw + g.W].reshape(b, g.H, g.W, C)
            np.copyto(gx_all[a:e], src.transpose(0, 3, 1, 2))
    if gw is not None:
        gw = gw.reshape(G, g.KH, g.KW, Cg, Og).transpose(0, 4, 3, 1, 2)
        gw = np.ascontiguousarray(gw).reshape(O, Cg, g.KH, g.KW)
    return gw, gb


# ----------------------------------------------------------------------------- API


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, activation=None, negative_slope=0.01):
    """y = act(conv(x, w) + b).

    Args:
        x: (N, C, H, W) array (numpy or cupy).
        weight: (O, C // groups, KH, KW), same dtype as ``x``.
        bias: (O,) or None.
        stride, padding, dilation: ``(h, w)`` int pairs (symmetric padding per axis).
        groups: int dividing C and O.
        activation: None, ``'relu'`` or ``'leaky_relu'`` (applied in place on ``y``).
        negative_slope: leaky ReLU slope (>= 0).

    Returns:
        y (N, O, OH, OW), same dtype as ``x``.
    """
    xp = get_array_module(x, weight)
    g = _Geom(x.shape, weight.shape, stride, padding, dilation, groups)
    y = xp.empty((g.N, g.O, g.OH, g.OW), dtype=x.dtype)
    if y.size == 0:
        return y
    weight = xp.ascontiguousarray(weight)
    wm = weight.reshape(g.G, g.Og, g.Kg)
    if bias is not None:
        bias = xp.ascontiguousarray(bias).reshape(g.O)
    if xp is not np:
        _generic_forward(xp, g, x, wm, bias, activation, negative_slope, y, 0, g.N, CUPY_TILE_BYTES)
        return y
    path = _path(g)
    if path == "flat":

        def work(a, e):
            _flat_forward(g, x, weight, bias, activation, negative_slope, y, a, e, TILE_BYTES)

    elif path == "nhwc":

        def work(a, e):
            _nhwc_forward(g, x, weight, bias, activation, negative_slope, y, a, e, TILE_BYTES)

    elif path == "batch_inner":

        def work(a, e):
            _bi_forward(g, x, wm, bias, activation, negative_slope, y, a, e, TILE_BYTES)

    else:

        def work(a, e):
            _generic_forward(np, g, x, wm, bias, activation, negative_slope, y, a, e, TILE_BYTES)

    _run_chunks(g, work)
    return y


def conv2d_backward(
    grad_y,
    x,
    weight,
    y,
    stride,
    padding,
    dilation,
    groups,
    activation=None,
    negative_slope=0.01,
    needs=(True, True, True),
):
    """Gradients of ``conv2d_forward`` with respect to x, weight and bias.

    ``grad_y`` is first multiplied by the activation's derivative read from the saved
    output ``y`` (relu: ``y > 0``; leaky_relu: 1 where ``y > 0`` else
    ``negative_slope``); ``y`` is only read when ``activation`` is set.

    Returns:
        ``(grad_x, grad_weight, grad_bias)``; an entry is None when ``needs[i]`` is
        False.
    """
    xp = get_array_module(grad_y, x, weight)
    g = _Geom(x.shape, weight.shape, stride, padding, dilation, groups)
    needs = tuple(bool(n) for n in needs)
    dtype = x.dtype
    grad_x = xp.empty(x.shape, dtype=dtype) if needs[0] else None
    if not any(needs):
        return None, None, None
    if grad_y.size == 0 or x.size == 0:
        if needs[0]:
            grad_x[...] = 0
        gw = xp.zeros(weight.shape, dtype=dtype) if needs[1] else None
        gb = xp.zeros((g.O,), dtype=dtype) if needs[2] else None
        return grad_x, gw, gb
    weight = xp.ascontiguousarray(weight)
    wm = weight.reshape(g.G, g.Og, g.Kg)
    if activation is None:
        y = None
    if xp is not np:
        gw, gb = _generic_backward(
            xp, g, grad_y, x, wm, y, activation, negative_slope, needs, grad_x, 0, g.N, CUPY_TILE_BYTES
        )
        return grad_x, (None if gw is None else gw.reshape(weight.shape)), gb
    path = _path(g)
    if path == "flat":

        def work(a, e):
            return _flat_backward(
                g, grad_y, x, weight, y, activation, negative_slope, needs, grad_x, a, e, TILE_BYTES
            )

    elif path == "nhwc":

        def work(a, e):
            return _nhwc_backward(
                g, grad_y, x, weight, y, activation, negative_slope, needs, grad_x, a, e, TILE_BYTES
            )

    elif path == "batch_inner":

        def work(a, e):
            return _bi_backward(
                g, grad_y, x, weight, wm, y, activation, negative_slope, needs, grad_x, a, e, TILE_BYTES
            )

    else:

        def work(a, e):
            return _generic_backward(
                np, g, grad_y, x, wm, y, activation, negative_slope, needs, grad_x, a, e, TILE_BYTES
            )

    results = _run_chunks(g, work)
    gw = gb = None
    if needs[1]:
        gw = results[0][0]
        for r in results[1:]:
            gw += r[0]
        gw = gw.reshape(weight.shape)
    if needs[2]:
        gb = results[0][1]
        for r in results[1:]:
            gb += r[1]
    return grad_x, gw, gb
