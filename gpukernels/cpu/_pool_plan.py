"""Geometry, block driver and backward scatter of ``gpukernels.cpu.pool`` (why each is
built this way, and what it costs: that module's docstring).

A pool's taps are row-major k = i*KW + j; tap k of output (p, q) reads padded pixel
(p*sh + i*dh, q*sw + j*dw) of an image plane padded by (ph, pw).
"""

from __future__ import annotations

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


def planes(a):
    """(N, C, H, W) -> a C-contiguous (N*C, H, W) view (a copy when ``a`` is strided)."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2], a.shape[3])


def _dropped(offset, out, size):
    """The output indices o < out whose target o + offset falls outside [0, size)."""
    lo, hi = min(out, max(0, -offset)), max(0, min(out, size - offset))
    return [s for s in (slice(0, lo), slice(max(lo, hi), out)) if s.stop > s.start]


def plan(x_shape, kernel, stride, padding, dilation):
    """``Plan`` of one call, shared by every call of the same sizes (a Plan is never
    changed after it is built): building one costs ~35 us, a fifth of a small pool."""
    return _plan(tuple(int(v) for v in x_shape), pair(kernel), pair(stride), pair(padding), pair(dilation))


@lru_cache(maxsize=512)
def _plan(x_shape, kernel, stride, padding, dilation):
    return Plan(x_shape, kernel, stride, padding, dilation)


class Plan:
    """One call's geometry: the output size, the padded plane (``hp`` x ``wp``; the image
    itself without padding) and the ``(k, view)`` taps, ``view`` indexing a block's padded
    (planes, hp, wp) array (all full views: the padding is in memory); and how the
    backward scatters each tap's (planes, OH, OW) contribution back onto dx."""

    def __init__(self, x_shape, kernel, stride, padding, dilation):
        (kh, kw), (sh, sw), (dh, dw) = pair(kernel), pair(stride), pair(dilation)
        self.h, self.w = h, w = x_shape[2], x_shape[3]
        self.ph, self.pw = ph, pw = pair(padding)
        self.padded = bool(ph or pw)
        self.hp, self.wp = h + 2 * ph, w + 2 * pw
        self.oh, self.ow = oh, ow = conv2d_output_size(h, w, kernel, stride, padding, dilation)
        self.kk = kh * kw
        offsets = [(i * kw + j, i * dh, j * dw) for i in range(kh) for j in range(kw)]
        self.taps = [(k, (slice(None), slice(r0, r0 + (oh - 1) * sh + 1, sh),
                          slice(c0, c0 + (ow - 1) * sw + 1, sw))) for k, r0, c0 in offsets]
        # Scatter classes: dx pixels (R, C) with R = r mod sh, C = c mod sw form class
        # (r, c), an (nr, nc) grid; tap k lands on it at (p + di, q + dj) for every output.
        self.classes = []
        for r in range(sh):
            for c in range(sw):
                nr, nc = len(range(r, h, sh)), len(range(c, w, sw))
                if nr and nc:
                    taps = [(k, (r0 - ph) // sh, (c0 - pw) // sw) for k, r0, c0 in offsets
                            if (r0 - ph) % sh == r and (c0 - pw) % sw == c]
                    self.classes.append(((nr, nc), taps, (slice(None), slice(r, h, sh), slice(c, w, sw))))
        # the shift scatter needs every class grid to fit in (oh, ow) (module docstring)
        self.shift = all(nr <= oh and nc <= ow for (nr, nc), _, _ in self.classes)

    def interior(self, padded_block):
        """The image inside a padded (planes, hp, wp) block."""
        return padded_block[:, self.ph:self.ph + self.h, self.pw:self.pw + self.w]

    # --------------------------------------------------------------- the scatter

    def scatter_scratch(self, count, dtype):
        """The scatter's per-thread scratch, ``count`` planes deep."""
        if self.shift:  # one tap's contribution, one class's sum
            return [np.empty((count, self.oh, self.ow), dtype), np.empty((count, self.oh, self.ow), dtype)]
        return [np.empty((count, self.hp, self.wp), dtype), np.empty((count, self.oh, self.ow), dtype)]

    def scatter(self, db, scratch, contribution, clean=lambda k: False):
        """db (planes, H, W) = the sum over taps k of tap k's contribution placed at the
        pixels tap k read, the padding's share dropped. ``contribution(k, out)`` writes
        tap k's (planes, OH, OW) contribution into ``out`` (scratch, or a strided view of
        dx) and returns it, or returns an array holding it that the scatter only reads;
        ``clean(k)``: True when it is already 0 wherever tap k reads padding (the max
        pool's taps k > 0: only the first tap can be the argmax of an all -inf window).
        ``scratch``: from ``scatter_scratch``, sliced to the block. Sums run in tap order,
        as the reference's."""
        if self.shift:
            self._scatter_shift(db, scratch, contribution, clean)
        else:
            self._scatter_padded(db, scratch, contribution)

    def _scatter_shift(self, db, scratch, contribution, clean):
        """Per class: each tap's contribution (zeroed where it lands outside the class
        grid) moved by di*OW + dj in the flattened (planes, OH, OW) scratch (contiguous:
        one long NumPy loop; the valid elements stay in their plane), summed, then
        copied once into the class's strided view of dx."""
        part, acc = scratch
        flat_acc, n = acc.reshape(-1), part.size
        oh, ow = self.oh, self.ow
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
                    [(slice(None), rows) for rows in _dropped(di, oh, nr)]
                    + [(slice(None), slice(None), cols) for cols in _dropped(dj, ow, nc)])
                if drops and got is not part:  # a read-only contribution: zero a copy
                    np.copyto(part, got)
                    got = part
                for index in drops:  # the share of a tap that reads padding must not wrap
                    got[index] = 0
                flat_part = got.reshape(-1)
                d = di * ow + dj  # acc.flat[f + d] += part.flat[f] for f + d in [0, n)
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
            np.copyto(dv, acc[:, :nr, :nc])

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
    """``work(b0, b1, tmp)`` over blocks of ~BLOCK_BYTES (``scatter``:
    SCATTER_BLOCK_BYTES) of image planes of ``planes3`` (P, H, W), on two threads from
    ``_parallel.MIN_PARALLEL_BYTES`` of operations. ``scratch(count)``: this thread's
    list of scratch arrays, ``count`` planes deep, made once per thread's piece; ``tmp``
    is that list sliced to the block (or [])."""
    block = SCATTER_BLOCK_BYTES if scatter else BLOCK_BYTES
    per = max(1, block // max(1, plan.h * plan.w * planes3.itemsize))

    def piece(a, b):
        bufs = [] if scratch is None else scratch(min(per, b - a))
        for b0 in range(a, b, per):
            b1 = min(b0 + per, b)
            work(b0, b1, [t[:b1 - b0] for t in bufs])

    _parallel.run_pieces(planes3, piece, sweeps)


def padded_scratch(plan, dtype, fill):
    """The forwards' scratch: a padded (count, hp, wp) block, its border ``fill`` (blocks
    rewrite only the interior); None without padding."""
    if not plan.padded:
        return None
    return lambda count: [np.full((count, plan.hp, plan.wp), fill, dtype=dtype)]
