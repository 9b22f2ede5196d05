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
negative pads crop); for strides > 1 (groups 1) ``sh*sw`` stride-1 convs of grad_y, one
per sub-pixel phase of x (``_Phases``); else the col2im of ``grad_y @ W`` with KH*KW
strided adds into a channels-last frame.
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

    @classmethod
    def of(cls, role, g, bmax, dtype):
        """The tile buffers of ``role`` (what they hold: "x", "q") for these sizes:
        this thread's from an earlier call where small enough (``common.scratch``);
        every call rewrites the frame's interior and the columns, never the border."""
        it = np.dtype(dtype).itemsize
        nbytes = bmax * (g.Hp * g.Wp * g.C + g.L * g.G * g.Kg) * it
        return common.scratch(("nhwc", role, g, bmax, np.dtype(dtype).str), nbytes, lambda: cls(g, bmax, dtype))

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


def _phase_axis(phase, s, p, d, k, n_in):
    """One axis of a sub-pixel phase: the kernel taps that reach the inputs ``phase + s*i``
    (``(phase + p - t*d) % s == 0``), ordered by their offset into grad_y
    (``off = (phase + p - t*d) // s``: input ``phase + s*i`` gets ``gy[i + off] w[t]``),
    the offsets, and how many inputs the phase holds."""
    taps = sorted((t for t in range(k) if (phase + p - t * d) % s == 0), key=lambda t: -t)
    return taps, [(phase + p - t * d) // s for t in taps], len(range(phase, n_in, s))


class _Phases:
    """grad_x of a strided conv (groups 1) as ``sh*sw`` stride-1 convs of grad_y, one
    per sub-pixel phase of x (the inputs ``(ph + sh*i, pw + sw*j)``): each phase is
    reached by its own taps only (3x3 stride 2: 1, 2, 2 and 4 of the 9), so its columns
    are a plain window copy of the channels-last, zero-padded grad_y and one GEMM
    ``(b*Lph, taps*O) @ (taps*O, C)`` lands on the phase's pixels: the same FLOPs as
    col2im's ``grad_y @ W``, without its KH*KW strided read-modify-write adds into a
    frame (measured, one thread, per 32x32 image of 16->32 stride 2: col2im's GEMM 26 +
    adds 47 + frame copy-out 10 us, against window copy 10 + GEMMs 30 + scatter 9 us;
    32->64 16x16: 46 against 37 us)."""

    def __init__(self, g, weight, bmax, dtype):
        self.g = g
        rows = [_phase_axis(ph, g.sh, g.ph, g.dh, g.KH, g.H) for ph in range(g.sh)]
        cols = [_phase_axis(pw, g.sw, g.pw, g.dw, g.KW, g.W) for pw in range(g.sw)]
        lo = [max([0] + [-o for _, offs, _ in ax for o in offs]) for ax in (rows, cols)]
        hi = [max([0] + [n - 1 + o - (out - 1) for _, offs, n in ax if n for o in offs])
              for ax, out in ((rows, g.OH), (cols, g.OW))]
        self.pad = np.zeros((bmax, g.OH + lo[0] + hi[0], g.OW + lo[1] + hi[1], g.O), dtype=dtype)
        self.interior = self.pad[:, lo[0] : lo[0] + g.OH, lo[1] : lo[1] + g.OW]
        it = self.pad.itemsize
        img, row, px = self.pad.strides[0], self.pad.strides[1], self.pad.strides[2]
        flat = self.pad.reshape(-1)
        self.plans, self.empty = [], []
        for ph, (th, oh, nh) in enumerate(rows):
            for pw, (tw, ow, nw) in enumerate(cols):
                if not (nh and nw):
                    continue
                if not (th and tw):  # no tap reaches these inputs: their gradient is 0
                    self.empty.append((ph, pw))
                    continue
                step_h = oh[1] - oh[0] if len(oh) > 1 else 0
                step_w = ow[1] - ow[0] if len(ow) > 1 else 0
                start = ((lo[0] + oh[0]) * self.pad.shape[2] + lo[1] + ow[0]) * g.O
                src = as_strided(flat[start:], shape=(bmax, nh, nw, len(th), len(tw), g.O),
                                 strides=(img, row, px, step_h * row, step_w * px, it))
                w = weight[:, :, th][:, :, :, tw].transpose(2, 3, 0, 1)  # (th, tw, O, C)
                self.plans.append((ph, pw, nh, nw, src, np.ascontiguousarray(w).reshape(-1, g.C)))
        most = max([0] + [p[2] * p[3] * p[4].shape[3] * p[4].shape[4] for p in self.plans])
        self.cols = np.empty(bmax * most * g.O, dtype=dtype)
        self.res = np.empty(bmax * max([0] + [p[2] * p[3] for p in self.plans]) * g.C, dtype=dtype)

    def grad_x(self, gy_cl, gx):
        """``gx`` (b, C, H, W) from the tile's channels-last masked grad_y (b, OH, OW, O)."""
        g, b = self.g, gy_cl.shape[0]
        self.interior[:b] = gy_cl
        for ph, pw in self.empty:
            gx[:, :, ph :: g.sh, pw :: g.sw] = 0
        for ph, pw, nh, nw, src, w in self.plans:
            cols = self.cols[: src[:b].size].reshape(src[:b].shape)
            np.copyto(cols, src[:b])
            res = self.res[: b * nh * nw * g.C].reshape(b * nh * nw, g.C)
            np.matmul(cols.reshape(b * nh * nw, -1), w, out=res)
            np.copyto(gx[:, :, ph :: g.sh, pw :: g.sw], res.reshape(b, nh, nw, g.C).transpose(0, 3, 1, 2))


def _nhwc_tiles(g, n0, n1, budget, it):
    per_image = (g.Kg * g.G + 2 * max(g.O, g.C)) * g.L * it
    return common.tiles(n0, n1, per_image, budget, -(-MIN_GEMM_ROWS // max(1, g.L)))


def nhwc_forward(g, x, weight, bias, activation, slope, y, n0, n1, budget):
    """``y[n0:n1] = act(conv(x[n0:n1], w) + b)`` channels-last, tile by tile."""
    bmax, tiles = _nhwc_tiles(g, n0, n1, budget, x.itemsize)
    dt = x.dtype
    buf = _Nhwc.of("x", g, bmax, dt)
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
        xbuf = _Nhwc.of("x", g, bmax, dt)
        gwt = np.empty_like(gw)
    transposed = needs[0] and common.flat_ok(g) and O <= TRANSPOSED_MAX_O_PER_C * C
    phases = _Phases(g, weight, bmax, dt) if needs[0] and G == 1 and not common.flat_ok(g) else None
    if transposed:
        gq = common.transposed_geom(g)
        qbuf = _Nhwc.of("q", gq, bmax, dt)
        wq = _nhwc_weight(common.flipped_weight(weight, g), G)
        gxl = np.empty((bmax * gq.L, G, Cg), dtype=dt)
    elif needs[0] and phases is None:
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
            gb += common.channel_sums(np, gt.reshape(b * L, O))
        if needs[1]:
            np.matmul(xbuf.load(x[a:e]).transpose(0, 2, 1), gyg, out=gwt)
            gw += gwt
        if transposed:
            gx2 = gxl[: b * gq.L]
            np.matmul(qbuf.load(gt.reshape(b, g.OH, g.OW, O), nchw=False), wq, out=gx2.transpose(1, 0, 2))
            np.copyto(gx_all[a:e], gx2.reshape(b, g.H, g.W, C).transpose(0, 3, 1, 2))
        elif phases is not None:
            phases.grad_x(gt.reshape(b, g.OH, g.OW, O), gx_all[a:e])
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
