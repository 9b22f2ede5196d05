"""Geometry, layouts, block driver and backward scatter of ``gpukernels.cpu.pool`` (why
each is built this way, and what it costs: that module's docstring).

A pool's taps are row-major k = i*KW + j; tap k of output (p, q) reads padded pixel
(p*sh + i*dh, q*sw + j*dw) of an image plane padded by (ph, pw). A call's arrays are
worked in one of two layouts, the plan's: ``(P, H, W)`` image planes (P = N*C, a view
of NCHW), or, for small planes, planes-last ``(H, W, P)`` (a transposed copy).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..shapes import conv2d_output_size, pair
from . import _parallel

#: Bytes of x per block of planes in the forwards: x, y, the argmax and a tap's
#: temporaries (~1.5 MiB) then stay in L2 (2 MiB a core), and each NumPy call's loop
#: (~20-60 us) dwarfs its ~1-2 us of Python and the GIL hand-over between the two
#: threads (512 KiB blocks ran no faster on two threads than on one).
BLOCK_BYTES = 1 << 20
#: Bytes of dx per block in the backwards. A scatter runs ~40 NumPy calls a block, each
#: a GIL hand-over on two threads: measured on 32x64x32x32 (3x3 s2 p1), one block per
#: thread's piece (4 MiB) beat 1 MiB blocks by 20-25% though it spills L2 (the strided
#: operations are bound by the core, not by L3).
SCATTER_BLOCK_BYTES = 4 << 20
#: Outputs at most this wide, of calls whose input is at most LAST_MAX_BYTES, are worked
#: planes-last, (H, W, P), in one block on the calling thread: each tap's NumPy loop then
#: runs over P contiguous elements instead of OW strided ones, which pays for the two
#: transposing copies where OW is this short (max forward, float32, ms: 64x16x8x8 2x2
#: 0.131 -> 0.097, 3x3 s2 p1 0.384 -> 0.160; 64x32x4x4 2x2 0.113 -> 0.058; 32x128x8x8
#: 2x2 0.459 -> 0.365; at OW 8, 32x64x16x16 2x2, 0.400 -> 1.318 the other way).
LAST_MAX_OW = 4
LAST_MAX_BYTES = 1 << 20


def planes(a):
    """(N, C, H, W) -> a C-contiguous (N*C, H, W) view (a copy when ``a`` is strided)."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2], a.shape[3])


def empty_last(rows, cols, count, dtype):
    """An uninitialised (rows, cols, count) array whose pixels lie a multiple of 64 bytes
    apart, never of 4 KiB: a transposing copy to or from NCHW walks this array pixel by
    pixel, and reads 4 KiB apart (1024 float32 planes) all fall in the same L1 sets
    (64x16x8x8 float32 to NCHW: 0.180 ms at a 4 KiB stride, 0.021 at 4 KiB + 64)."""
    it = np.dtype(dtype).itemsize
    stride = -(-count * it // 64) * 64
    if stride % 4096 == 0:
        stride += 64
    return np.empty((rows, cols, stride // it), dtype=dtype)[:, :, :count]


#: Bytes of x's planes per copy in ``planes_last``: the copy walks the (H, W, P) output
#: in order, reading one element per plane, so the planes it reads from stay in L1
#: when there are at most this many bytes of them (32 KiB blocks, float32, us:
#: 64x16x8x8 38.8 -> 29.3, 64x32x4x4 19.7 -> 15.1, 32x128x8x8 183 -> 124; planes of
#: fewer than 16 pixels copy faster in one go: 128x32x2x2 5.0 against 6.7).
LAST_COPY_BLOCK_BYTES = 32 << 10


def planes_last(a):
    """(N, C, H, W) -> an (H, W, N*C) copy (``empty_last``'s strides), in blocks of
    planes of LAST_COPY_BLOCK_BYTES."""
    n, c, h, w = a.shape
    out = empty_last(h, w, n * c, a.dtype)
    plane = h * w * a.itemsize
    if not a.flags.c_contiguous or h * w < 16 or n * c * plane <= LAST_COPY_BLOCK_BYTES:
        np.copyto(out.reshape(h, w, n, c), a.transpose(2, 3, 0, 1))
        return out
    src = a.reshape(n * c, h, w).transpose(1, 2, 0)
    step = max(1, LAST_COPY_BLOCK_BYTES // plane)
    for p0 in range(0, n * c, step):
        np.copyto(out[:, :, p0 : p0 + step], src[:, :, p0 : p0 + step])
    return out


def _dropped(offset, out, size):
    """The output indices o < out whose target o + offset falls outside [0, size)."""
    lo, hi = min(out, max(0, -offset)), max(0, min(out, size - offset))
    return [s for s in (slice(0, lo), slice(max(lo, hi), out)) if s.stop > s.start]


def plan(x_shape, kernel, stride, padding, dilation, itemsize):
    """``Plan`` of one call (its layout: planes-last where the output is at most
    LAST_MAX_OW wide and x at most LAST_MAX_BYTES of ``itemsize``-byte elements), shared
    by every call of the same sizes (a Plan is never changed after it is built):
    building one costs ~35 us, a fifth of a small pool. Looked up by the call's own
    arguments first: normalising them (``pair``, the output size) cost ~10 us a call,
    a third of a digits-CNN pool."""
    key = (tuple(x_shape), kernel, stride, padding, dilation, itemsize, LAST_MAX_OW, LAST_MAX_BYTES)
    try:
        return _plan_of_call(*key)
    except TypeError:  # an unhashable argument (a list): normalised first
        return _plan_of_call(tuple(int(v) for v in x_shape), pair(kernel), pair(stride), pair(padding),
                             pair(dilation), *key[5:])


@lru_cache(maxsize=512)
def _plan_of_call(x_shape, kernel, stride, padding, dilation, itemsize, last_max_ow, last_max_bytes):
    x_shape, kernel, stride, padding, dilation = (
        tuple(int(v) for v in x_shape), pair(kernel), pair(stride), pair(padding), pair(dilation))
    ow = conv2d_output_size(x_shape[2], x_shape[3], kernel, stride, padding, dilation)[1]
    last = ow <= last_max_ow and math.prod(x_shape) * itemsize <= last_max_bytes
    return Plan(x_shape, kernel, stride, padding, dilation, last)


class Plan:
    """One call's geometry in one layout: the output size, the padded plane (``hp`` x
    ``wp``; the image itself without padding) and the ``(k, view)`` taps, ``view``
    indexing a block's padded (planes, hp, wp) array, or (hp, wp, planes) with
    ``last`` (all full views: the padding is in memory); and how the backward scatters
    each tap's (planes, OH, OW) contribution (or (OH, OW, planes)) back onto dx."""

    def __init__(self, x_shape, kernel, stride, padding, dilation, last):
        (kh, kw), (sh, sw), (dh, dw) = pair(kernel), pair(stride), pair(dilation)
        self.last = last
        self.h, self.w = h, w = x_shape[2], x_shape[3]
        self.ph, self.pw = ph, pw = pair(padding)
        self.padded = bool(ph or pw)
        self.hp, self.wp = h + 2 * ph, w + 2 * pw
        self.oh, self.ow = oh, ow = conv2d_output_size(h, w, kernel, stride, padding, dilation)
        self.kk = kh * kw
        offsets = [(i * kw + j, i * dh, j * dw) for i in range(kh) for j in range(kw)]
        self.taps = [(k, self.ix(slice(r0, r0 + (oh - 1) * sh + 1, sh), slice(c0, c0 + (ow - 1) * sw + 1, sw)))
                     for k, r0, c0 in offsets]
        # Scatter classes: dx pixels (R, C) with R = r mod sh, C = c mod sw form class
        # (r, c), an (nr, nc) grid; tap k lands on it at (p + di, q + dj) for every output.
        self.classes = []
        for r in range(sh):
            for c in range(sw):
                nr, nc = len(range(r, h, sh)), len(range(c, w, sw))
                if nr and nc:
                    taps = [(k, (r0 - ph) // sh, (c0 - pw) // sw) for k, r0, c0 in offsets
                            if (r0 - ph) % sh == r and (c0 - pw) % sw == c]
                    self.classes.append(((nr, nc), taps, self.ix(slice(r, h, sh), slice(c, w, sw))))
        # the shift scatter needs every class grid to fit in (oh, ow) (module docstring)
        self.shift = all(nr <= oh and nc <= ow for (nr, nc), _, _ in self.classes)

    # --------------------------------------------------------------- the layout

    def ix(self, rows, cols):
        """The index of ``rows``, ``cols`` of every plane in this plan's layout."""
        return (rows, cols, slice(None)) if self.last else (slice(None), rows, cols)

    def cut(self, b0, b1):
        """The index of planes [b0, b1) in this plan's layout."""
        return (slice(None), slice(None), slice(b0, b1)) if self.last else (slice(b0, b1),)

    def shape(self, count, rows, cols):
        """The shape of ``count`` planes of rows x cols in this plan's layout."""
        return (rows, cols, count) if self.last else (count, rows, cols)

    def empty(self, count, rows, cols, dtype):
        """An uninitialised array of ``count`` planes of rows x cols in this plan's layout,
        to be transposed to NCHW (``nchw``): C-contiguous planes, or ``empty_last``'s."""
        if self.last:
            return empty_last(rows, cols, count, dtype)
        return np.empty((count, rows, cols), dtype=dtype)

    def layout(self, a):
        """(N, C, rows, cols) ``a`` in this plan's layout: planes-last, a transposed copy;
        else its planes, a view where ``a`` is C-contiguous (a copy otherwise)."""
        return planes_last(a) if self.last else planes(a)

    def nchw(self, a3, n, c):
        """(N, C, rows, cols), C-contiguous, from ``a3`` in this plan's layout."""
        if not self.last:
            return a3.reshape(n, c, a3.shape[1], a3.shape[2])
        out = np.empty((n, c, a3.shape[0], a3.shape[1]), dtype=a3.dtype)
        np.copyto(out, a3.reshape(a3.shape[0], a3.shape[1], n, c).transpose(2, 3, 0, 1))
        return out

    def per_pixel(self, a):
        """An (OH, OW) array shaped to broadcast against output planes in this layout."""
        return a[:, :, None] if self.last and np.ndim(a) == 2 else a

    def interior(self, padded_block):
        """The image inside a padded block."""
        return padded_block[self.ix(slice(self.ph, self.ph + self.h), slice(self.pw, self.pw + self.w))]

    # --------------------------------------------------------------- the scatter

    def scatter_scratch(self, count, dtype):
        """The scatter's per-thread scratch, ``count`` planes deep."""
        out = np.empty(self.shape(count, self.oh, self.ow), dtype)
        if self.shift:  # one tap's contribution, one class's sum
            return [out, np.empty_like(out)]
        return [np.empty(self.shape(count, self.hp, self.wp), dtype), out]

    def scatter(self, db, scratch, contribution, clean=lambda k: False):
        """db (planes of H x W) = the sum over taps k of tap k's contribution placed at
        the pixels tap k read, the padding's share dropped. ``contribution(k, out)``
        writes tap k's contribution (planes of OH x OW) into ``out`` (scratch, or a
        strided view of dx) and returns it, or returns an array holding it that the
        scatter only reads; ``clean(k)``: True when it is already 0 wherever tap k reads padding (the max
        pool's taps k > 0: only the first tap can be the argmax of an all -inf window).
        ``scratch``: from ``scatter_scratch``, sliced to the block. Sums run in tap order,
        as the reference's."""
        if self.shift:
            self._scatter_shift(db, scratch, contribution, clean)
        else:
            self._scatter_padded(db, scratch, contribution)

    def _scatter_shift(self, db, scratch, contribution, clean):
        """Per class: each tap's contribution (zeroed where it lands outside the class
        grid) moved by di*OW + dj pixels in the flattened scratch (contiguous: one long
        NumPy loop; the valid elements stay in their plane), summed, then copied once
        into the class's strided view of dx."""
        part, acc = scratch
        flat_acc, n = acc.reshape(-1), part.size
        oh, ow = self.oh, self.ow
        unit = part.shape[2] if self.last else 1  # elements a pixel apart
        for (nr, nc), taps, dx_index in self.classes:
            dv = db[dx_index]
            if not taps:  # pixels no window reads
                dv[...] = 0
                continue
            if len(taps) == 1 and taps[0][1:] == (0, 0) and (nr, nc) == (oh, ow):
                got = contribution(taps[0][0], dv)  # this tap alone, in place: straight into dx
                if got is not dv:
                    np.copyto(dv, got)
                continue
            for m, (k, di, dj) in enumerate(taps):
                got = contribution(k, part)
                drops = [] if clean(k) else (
                    [self.ix(rows, slice(None)) for rows in _dropped(di, oh, nr)]
                    + [self.ix(slice(None), cols) for cols in _dropped(dj, ow, nc)])
                if drops and got is not part:  # a read-only contribution: zero a copy
                    np.copyto(part, got)
                    got = part
                for index in drops:  # the share of a tap that reads padding must not wrap
                    got[index] = 0
                flat_part = got.reshape(-1)
                d = (di * ow + dj) * unit  # acc.flat[f + d] += part.flat[f] for f + d in [0, n)
                lo = min(n, max(0, d))
                hi = max(lo, min(n, n + d))
                dst, src = flat_acc[lo:hi], flat_part[lo - d:hi - d]
                if m:
                    np.add(dst, src, out=dst)
                    continue
                np.copyto(dst, src)  # the first tap: the rest of the sum is 0
                if lo:
                    flat_acc[:lo] = 0
                if hi < n:
                    flat_acc[hi:] = 0
            np.copyto(dv, acc[self.ix(slice(0, nr), slice(0, nc))])

    def _scatter_padded(self, db, scratch, contribution):
        """The general scatter: every tap's contribution added into its strided view of
        a zeroed padded plane, whose interior is then copied to dx."""
        plane, part = scratch
        plane.fill(0)
        for k, view in self.taps:
            pv = plane[view]
            np.add(pv, contribution(k, part), out=pv)
        np.copyto(db, self.interior(plane))


def run_blocks(plan, planes3, work, sweeps, scratch=None, scatter=False):
    """``work(cut, tmp)`` over blocks of ~BLOCK_BYTES (``scatter``: SCATTER_BLOCK_BYTES)
    of image planes of ``planes3`` (in the plan's layout, of H x W planes), on two
    threads from ``_parallel.MIN_PARALLEL_BYTES`` of operations; ``cut`` indexes the
    block's planes (``plan.cut``). A planes-last plan is one block, on the calling
    thread. ``scratch(count)``: this thread's list of scratch arrays, ``count`` planes
    deep, made once per thread's piece; ``tmp`` is that list cut to the block (or [])."""
    if plan.last:
        count = planes3.shape[2]
        work(plan.cut(0, count), [] if scratch is None else scratch(count))
        return
    block = SCATTER_BLOCK_BYTES if scatter else BLOCK_BYTES
    per = max(1, block // max(1, plan.h * plan.w * planes3.itemsize))

    def piece(a, b):
        bufs = [] if scratch is None else scratch(min(per, b - a))
        for b0 in range(a, b, per):
            b1 = min(b0 + per, b)
            work(plan.cut(b0, b1), [t[:b1 - b0] for t in bufs])

    _parallel.run_pieces(planes3, piece, sweeps)


def padded_scratch(plan, dtype, fill):
    """The forwards' scratch: a padded block of ``count`` hp x wp planes, its border
    ``fill`` (blocks rewrite only the interior); None without padding."""
    if not plan.padded:
        return None
    return lambda count: [np.full(plan.shape(count, plan.hp, plan.wp), fill, dtype=dtype)]
