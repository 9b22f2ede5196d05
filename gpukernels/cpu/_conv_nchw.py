"""The channels-first column paths of the NumPy conv2d (``gpukernels.cpu.conv``):
``generic`` and ``batch_inner``. Both build an explicit column matrix per tile and
run ``W @ cols`` per group; they differ in where the batch sits in it.

* **generic** (shallow GEMMs, RGB first layers, strided 1x1 and grouped strided convs,
  and CuPy): columns ``(C, KH, KW, b, OH, OW)`` filled by KH*KW strided slice copies
  clipped to the valid input range (the buffer's out-of-range border is zeroed once and
  never written: no padded copy of x); ``grad_x`` is the col2im of ``W^T @ grad_y``
  with KH*KW strided slice-adds.
* **batch_inner** (grouped convs, and 1x1 kernels, with narrow outputs): frame
  ``(C, Hp, Wp, b)`` and columns ``(C, KH, KW, OH, OW, b)`` with the batch innermost,
  so the im2col is one copy in runs of ``OW*b`` (stride 1) or ``b`` elements instead of
  runs of ``OW`` = 4; one (batched over groups) GEMM per tile. ``grad_x`` is the
  transposed conv (stride 1, ``O <= 4*C``) or col2im.

``grad_w`` is computed with the column matrix as the left operand (``cols @ grad_y^T``):
OpenBLAS runs these long-K products with M, N <= 32 ~1.5x faster that way round than as
``grad_y @ cols^T``. Each function works the images ``[n0, n1)`` of one call, tile by
tile (``common.tiles``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _conv_common as common


# ----------------------------------------------------------------------------- generic path

#: Ungrouped NumPy convs with outputs of at least this many pixels get generic's grad_w
#: as one product per image (K = OH*OW) summed over the tile, rather than one product
#: with K = b*OH*OW.
PER_IMAGE_GW_MIN_L = 256


@lru_cache(maxsize=512)
def _im2col_taps(g):
    """Per kernel tap with in-range inputs: ``(kh, kw, oh slice, ow slice, ih slice, iw
    slice)``, the columns' and the input's windows, computed once per ``Geom``: built
    every call they cost a 1x1x4x4 conv ~6 us of its 31 us forward (the digits CNN's
    first conv copies its 9 taps in 22 us)."""
    sh, sw = g.sh, g.sw
    out = []
    for kh, (oh0, oh1, ih0) in enumerate(g.rows_h):
        if oh1 <= oh0:
            continue
        hs = slice(ih0, ih0 + (oh1 - oh0 - 1) * sh + 1, sh)
        for kw, (ow0, ow1, iw0) in enumerate(g.rows_w):
            if ow1 <= ow0:
                continue
            out.append((kh, kw, slice(oh0, oh1), slice(ow0, ow1), hs, slice(iw0, iw0 + (ow1 - ow0 - 1) * sw + 1, sw)))
    return tuple(out)


def _im2col(g, src, cols):
    """cols[c, kh, kw, b, oh, ow] = src[b, c, oh*sh + kh*dh - ph, ow*sw + kw*dw - pw]
    for in-range inputs; out-of-range entries of ``cols`` are left as they are (zero)."""
    srct = src.transpose(1, 0, 2, 3)
    for kh, kw, ohs, ows, hs, ws in _im2col_taps(g):
        cols[:, kh, kw, :, ohs, ows] = srct[:, :, hs, ws]


def _col2im(xp, g, gcols, gx):
    """gx[b, c, ih, iw] = sum over taps of gcols[c, kh, kw, b, oh, ow] (the adjoint of
    ``_im2col``). A tap that covers every input pixel (stride 1) is assigned first,
    which saves zero-filling ``gx``."""
    taps = _im2col_taps(g)
    whole = slice(0, g.H, 1), slice(0, g.W, 1)
    stride1 = g.sh == g.sw == 1
    first = next((t for t in taps if stride1 and (t[4], t[5]) == whole), None)
    gxt = gx.transpose(1, 0, 2, 3)
    if first is None:
        gx[...] = 0
    else:
        kh, kw, ohs, ows, _, _ = first
        gxt[...] = gcols[:, kh, kw, :, ohs, ows]
    for tap in taps:
        if tap is not first:
            kh, kw, ohs, ows, hs, ws = tap
            gxt[:, :, hs, ws] += gcols[:, kh, kw, :, ohs, ows]


def _cols_buffer(g, bmax, dtype, xp):
    """The zeroed ``(C, KH, KW, bmax, OH, OW)`` columns ``_im2col`` fills: on NumPy this
    thread's from an earlier call of these sizes where small (``common.scratch``; every
    call writes the same in-range entries, the out-of-range ones stay zero)."""
    shape = (g.C, g.KH, g.KW, bmax, g.OH, g.OW)
    if xp is not np:
        return xp.zeros(shape, dtype=dtype)
    nbytes = g.C * g.KH * g.KW * bmax * g.L * np.dtype(dtype).itemsize
    return common.scratch(("generic cols", g, bmax, np.dtype(dtype).str), nbytes,
                          lambda: np.zeros(shape, dtype=dtype))


def generic_forward(g, x, weight, bias, activation, slope, y, n0, n1, budget, xp=np):
    """``y[n0:n1] = act(conv(x[n0:n1], w) + b)``, tile by tile (NumPy or CuPy)."""
    wm = weight.reshape(g.G, g.Og, g.Kg)
    per_image = g.Kg * g.G * g.L * x.itemsize
    bmax, tiles = common.tiles(n0, n1, per_image, budget)
    colsbuf = _cols_buffer(g, bmax, x.dtype, xp)
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
        common.activate(xp, yt, activation, slope)


def generic_backward(g, gy_all, x, weight, y, activation, slope, needs, gx_all, n0, n1, budget, xp=np):
    """Writes ``gx_all[n0:n1]``; returns this range's (grad_w as (G, Og, Kg), grad_b)
    sums (None where not needed)."""
    wm = weight.reshape(g.G, g.Og, g.Kg)
    G, Og, Kg, L, O = g.G, g.Og, g.Kg, g.L, g.O
    per_image = max(Kg * G, O) * L * x.itemsize
    bmax, tiles = common.tiles(n0, n1, per_image, budget)
    colsbuf = _cols_buffer(g, bmax, x.dtype, xp) if needs[1] else None
    gwT = xp.zeros((G, Kg, Og), dtype=x.dtype) if needs[1] else None
    gb = xp.zeros((O,), dtype=x.dtype) if needs[2] else None
    wt = wm.transpose(0, 2, 1) if needs[0] else None
    # grad_w as one product per image (measured for ungrouped convs on OpenBLAS only)
    gw_per_image = xp is np and G == 1 and L >= PER_IMAGE_GW_MIN_L
    for a, e in tiles:
        b = e - a
        gyt = common.masked_grad(xp, gy_all[a:e], None if y is None else y[a:e], activation, slope)
        if needs[2]:
            gb += common.channel_sums(xp, gyt)
        gyp = None
        if needs[0] or (needs[1] and not gw_per_image):
            # (G, Og, b*L): the tile's gradient with the batch inside the GEMM's N dimension.
            gyp = xp.ascontiguousarray(gyt.reshape(b, G, Og, L).transpose(1, 2, 0, 3)).reshape(G, Og, b * L)
        if needs[1]:
            cols = colsbuf[:, :, :, :b]
            _im2col(g, x[a:e], cols)
            if gw_per_image:
                # One (Kg, L) @ (L, Og) product per image, summed: OpenBLAS runs these
                # 2x faster than one product with K = b*L (RGB first layer, 8 images:
                # 164 -> 78 us), and grad_y is read in place.
                cimg = cols.reshape(G, Kg, b, L).transpose(2, 0, 1, 3)
                gwT += xp.matmul(cimg, gyt.reshape(b, G, Og, L).transpose(0, 1, 3, 2)).sum(axis=0)
            else:
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


def _bi_tiles(g, n0, n1, budget, it):
    per_image = (g.C * g.KH * g.KW + 2 * g.O) * g.L * it
    return common.tiles(n0, n1, per_image, budget)


def batch_inner_forward(g, x, weight, bias, activation, slope, y, n0, n1, budget):
    """``y[n0:n1] = act(conv(x[n0:n1], w) + b)``, tile by tile."""
    wm = weight.reshape(g.G, g.Og, g.Kg)
    _, tiles = _bi_tiles(g, n0, n1, budget, x.itemsize)
    bufs = {}
    bias4 = None if bias is None else bias.reshape(1, g.O, 1, 1)
    for a, e in tiles:
        b = e - a
        if b not in bufs:
            bufs[b] = _BatchInner(g, b, x.dtype)
        out = bufs[b].conv(wm, x[a:e])
        common.epilogue(out, bias4, y[a:e], activation, slope)


def batch_inner_backward(g, gy_all, x, weight, y, activation, slope, needs, gx_all, n0, n1, budget):
    """Batch-inner backward. grad_x: for stride 1 the transposed conv of grad_y (one
    column copy + GEMM), else col2im of ``W^T @ grad_y`` with KH*KW strided adds."""
    _, tiles = _bi_tiles(g, n0, n1, budget, x.itemsize)
    G, Og, O, dt = g.G, g.Og, g.O, x.dtype
    gwT = np.zeros((G, g.Kg, Og), dtype=dt) if needs[1] else None
    gb = np.zeros((O,), dtype=dt) if needs[2] else None
    # The transposed conv copies O*KH*KW columns per pixel, col2im adds C*KH*KW.
    transposed = needs[0] and common.flat_ok(g) and g.O <= 4 * g.C
    if transposed:
        gq = common.transposed_geom(g)
        wq = common.flipped_weight(weight, g).reshape(G, g.Cg, Og * g.KH * g.KW)
    elif needs[0]:
        wt = np.ascontiguousarray(weight.reshape(G, Og, g.Kg).transpose(0, 2, 1))
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
        gyt = common.masked_grad(np, gy_all[a:e], None if y is None else y[a:e], activation, slope, buf["work"])
        if needs[2]:
            gb += common.channel_sums(np, gyt)
        if needs[1] or not transposed:
            gyT = buf["gyT"]
            np.copyto(gyT, gyt.transpose(1, 2, 3, 0))
            gy2 = gyT.reshape(G, Og, g.L * b)
        if needs[1]:
            cols = buf["x"].load(x[a:e])
            np.matmul(cols, gy2.transpose(0, 2, 1), out=buf["gwt"])  # see generic_backward
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
