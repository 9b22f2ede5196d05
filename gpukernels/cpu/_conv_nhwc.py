"""The ``nhwc`` (channels-last) path of the NumPy conv2d (``gpukernels.cpu.conv``):
groups 1, kernels larger than 1x1, and either stride > 1 or narrow outputs (the 16x16
and 8x8 ResNet stages and every strided 3x3).

The tile is copied channels-last into a zero-padded frame ``(b, Hp, Wp, C)`` and the
columns are ``(b, OH, OW, KH, KW, C)``, one ``(b*L, Kg)`` matrix filled by one copy in
runs of ``KW*C`` elements. All three GEMMs then have the long ``b*L`` side as M or K:
``y = cols @ W`` and ``grad_w = cols^T @ grad_y`` run at 110-140 GFLOP/s per core where
the NCHW forms ``W @ cols`` / ``grad_y @ cols^T`` with M = O = 32 run at 75-100 (the
16x16 layer's forward+backward 17 -> 13 ms, the 8x8 one's 13 -> 9.5 ms). ``grad_x`` is,
for stride 1 and ``O <= 2*C`` (TRANSPOSED_MAX_O_PER_C), the same conv applied to the
channels-last ``grad_y`` with the flipped, transposed kernel (padding ``d*(K-1) - p``;
negative pads crop), else the col2im of ``grad_y @ W`` with KH*KW strided adds into a
channels-last frame.
Groups are supported (G column blocks side by side, one GEMM per group) but not
dispatched here: per-group GEMMs with N = Og on strided blocks are 2-8x slower than
batch_inner's.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _conv_common as common


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
            common.to_channels_last(self.interior[:b], xt[:, :, self.crop[0], self.crop[1]])
        else:
            self.interior[:b] = xt[:, self.crop[0], self.crop[1]]
        np.copyto(self.cols7[:b], self.src[:b])
        return self.cols[: b * self.g.L].transpose(1, 0, 2)


def _nhwc_weight(weight, groups):
    """``(G, KH*KW*Cg, Og)``: each group's weight as the right operand of its columns."""
    O, Cg, KH, KW = weight.shape
    w = weight.reshape(groups, O // groups, Cg, KH, KW).transpose(0, 3, 4, 2, 1)
    return np.ascontiguousarray(w).reshape(groups, KH * KW * Cg, O // groups)


#: Rows (tile pixels, b*L) a tile's GEMMs get at least, whatever the budget: OpenBLAS
#: packs the whole (Kg, O) weight for every call, so a one-image tile of a small,
#: deep layer spent more time packing than multiplying (fast CIFAR's 256->256 8x8,
#: batch 16 on a thread: backward 36.8 -> 30.8 ms with 8-image tiles; its 4x4 layer had
#: 16-row GEMMs).
MIN_GEMM_ROWS = 512
#: grad_x by the transposed conv (stride 1) while O <= this * C, else by col2im. The
#: transposed conv's columns are O*KH*KW deep: measured (backward, ms), O = C 32->32
#: 16x16 b128 10.4-11.8 against col2im's 18-22, O = 2C 32->64 16x16 b64 11.3 against
#: 13.1; O = 4C 64->256 16x16 b32 34-35 against 29-30 (fast CIFAR's widening layer).
TRANSPOSED_MAX_O_PER_C = 2


def _nhwc_tiles(g, n0, n1, budget, it):
    per_image = (g.Kg * g.G + 2 * max(g.O, g.C)) * g.L * it
    return common.tiles(n0, n1, per_image, budget, -(-MIN_GEMM_ROWS // max(1, g.L)))


def nhwc_forward(g, x, weight, bias, activation, slope, y, n0, n1, budget):
    """``y[n0:n1] = act(conv(x[n0:n1], w) + b)`` channels-last, tile by tile."""
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
        common.epilogue(src, bias4, y[a:e], activation, slope)


def nhwc_backward(g, gy_all, x, weight, y, activation, slope, needs, gx_all, n0, n1, budget):
    """Channels-last backward. grad_w: ``cols^T @ grad_y`` per group. grad_x: for stride
    1 and ``O <= 2*C`` the transposed conv of the channels-last grad_y (one column copy
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
    transposed = needs[0] and common.flat_ok(g) and O <= TRANSPOSED_MAX_O_PER_C * C
    if transposed:
        gq = common.transposed_geom(g)
        qbuf = _Nhwc(gq, bmax, dt)
        wq = _nhwc_weight(common.flipped_weight(weight, g), G)
        gxl = np.empty((bmax * gq.L, G, Cg), dtype=dt)
    elif needs[0]:
        wg = weight.reshape(G, Og, Cg, g.KH, g.KW).transpose(0, 1, 3, 4, 2)
        wg = np.ascontiguousarray(wg).reshape(G, Og, g.Kg)  # (G, Og, Kg), Kg as (kh, kw, cg)
        gcols = np.empty((bmax * L, G, g.Kg), dtype=dt)
        gframe = np.empty((bmax, g.Hp, g.Wp, G, Cg), dtype=dt)
    for a, e in tiles:
        b = e - a
        wk = None if work is None else work[:b]
        gm = common.masked_grad(np, gy_all[a:e], None if y is None else y[a:e], activation, slope, wk)
        gt = gyl[: b * L]
        common.to_channels_last(gt.reshape(b, g.OH, g.OW, O), gm)
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
