"""The ``flat`` path of the NumPy conv2d (``gpukernels.cpu.conv``): stride 1, wide
outputs (the 32x32 stages of a CIFAR ResNet).

The tile is copied, zero-padded, into a *frame* ``(C, b, Hp, Wf)``. Seen per channel as
one 1-D signal, tap ``(kh, kw)`` of every output pixel is the slice starting at
``kh*dh*Wf + kw*dw``, so the conv is computed on the padded grid ``(b, Hp, Wf)``
with no im2col gather; the ``Wf-OW`` right columns and the rows between stacked
images are garbage, never read back. A row holds its left padding and the image but no
right padding (``frame_width``: Wf = W + pw, 33 at 32x32 instead of Wp = 34): a tap
past the row's end reads the next row's left padding, zeros too. So 3% extra GEMM work
at 32x32, padding 1 (1056 output cells an image against 1024; 6% with the full Wp), 6%
at 16x16, but 40% at 8x8, hence nhwc there. Only the KW column shifts are copied (3x
the frame, in long runs), and each kernel row is one GEMM on that copy shifted by a row
(``_FrameConv``).

Backward writes the masked ``grad_y`` into a zeroed frame: its zeros cancel the garbage
positions in ``grad_w``, and it is also the padded input of ``grad_x`` (the transposed
conv, computed the same way: no col2im scatter-adds). ``grad_w`` uses a channels-last
copy of the x tile: tap ``(kh, kw)`` is then a plain ``(lb, C)`` matrix, so it is one
NN GEMM per tap, ~1.6x faster in OpenBLAS than ``grad_y @ cols^T`` (NT).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _conv_common as common

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


def frame_width(n_in, n_out, pad):
    """Columns of a frame row holding ``pad`` zero columns then ``n_in`` pixels, for
    ``n_out`` outputs of a stride-1 conv: the image and every output row must fit.
    Nothing more is needed for the taps: a stride-1 conv's widest tap reads column
    ``n_out - 1 + (k-1)*d = n_in + 2*pad - 1`` at most (less where the q-frame crops),
    so a read past the row's end lands within the next row's ``pad`` zero columns (the
    right padding is the next row's left padding)."""
    return max(n_in + pad, n_out)


def _flat_len(b, hf, out_h, wf):
    """Number of flat output positions covering ``b`` stacked images of ``out_h`` rows."""
    return ((b - 1) * hf + out_h) * wf


#: Bytes of the KH stacked row-tap products (``_FrameConv``) up to which they are one
#: stacked matmul plus one sum.
STACKED_MAX_BYTES = 512 << 10


class _FrameConv:
    """Stride-1 convolution of a frame's stacked images: ``ext (G, Og, lb) =
    sum over taps of w[:, :, kh, kw] @ frame shifted by kh*dh*wf + kw*dw``.

    Only the KW column shifts are copied, into ``(G, KW, Cg, lb + (KH-1)*dh*wf)``: row
    tap kh is then that buffer shifted by ``kh*dh*wf``, a strided ``(KW*Cg, lb)`` matrix
    with one row stride, so the conv is KH GEMMs of depth KW*Cg plus KH-1 adds. Measured
    against the two former strategies, copying the full ``(Cg*KH*KW, lb)`` columns for one
    deep GEMM (9x the frame in copies) and one GEMM of depth Cg per tap on the uncopied
    frame (9 shallow GEMMs, 8 adds): one 32x32 image on one thread, 16->16 86 / 80 ->
    59 us; whole calls, two threads, forward / backward ms: 16->16 32x32 b128 6.8 / 12.0
    -> 6.1 / 11.5, 32->32 16x16 b128 6.1 / 11.6 -> 5.5 / 9.7, 64->64 32x32 b64 31.3 / 62.9
    -> 29.8 / 61.6, 64->128 32x32 b32 29.6 / 58.0 -> 27.4 / 58.3.

    Where the KH products fit STACKED_MAX_BYTES they run as one stacked matmul into a
    ``(KH, G, Og, lb)`` buffer summed by one reduce: two NumPy calls instead of 2 KH - 1,
    so two threads hand the GIL over less often (two threads, b128, fwd / bwd ms:
    16->16 32x32 6.23 / 11.68 -> 5.34 / 10.87, 32->32 16x16 6.12 / 10.94 -> 5.94 /
    10.26; one thread 2% slower). Larger ones keep the GEMM-and-add loop: at 64->64
    32x32 the stacked products (835 KB an image) push the tile out of L2 (2.5% slower).
    """

    def __init__(self, w4, groups, frame, lmax, kh, kw, dh, dw):
        self.frame, self.G = frame, groups
        cout, self.cg = int(w4.shape[0]), int(w4.shape[1])
        self.og = cout // groups
        self.kh, self.kw, self.dh, self.dw = kh, kw, dh, dw
        dtype = frame.buf.dtype
        it = np.dtype(dtype).itemsize
        self.stacked = kh > 1 and kh * cout * lmax * it <= STACKED_MAX_BYTES
        self.tmp = np.empty((kh if self.stacked else 1, groups, self.og, lmax), dtype=dtype)
        wr = w4.reshape(groups, self.og, self.cg, kh, kw).transpose(3, 0, 1, 4, 2)
        self.wr = np.ascontiguousarray(wr).reshape(kh, groups, self.og, kw * self.cg)  # rows (kw, c)
        self.row_span = (kh - 1) * dh * frame.wf  # the kh shifts beyond lb
        self.cols = np.empty((groups, kw, self.cg, lmax + self.row_span), dtype=dtype)
        self._views = {}

    def _inputs(self, lb):
        """The column copy's source and destination and the per-row-tap GEMM operands
        for ``lb`` outputs."""
        views = self._views.get(lb)
        if views is None:
            fr, it = self.frame, self.frame.buf.itemsize
            span = lb + self.row_span
            src = as_strided(
                fr.buf,
                shape=(self.G, self.kw, self.cg, span),
                strides=(self.cg * fr.stride * it, self.dw * it, fr.stride * it, it),
            )
            dst = self.cols[..., :span]
            rows = dst.reshape(self.G, self.kw * self.cg, span)
            step = self.dh * fr.wf
            stacked = as_strided(rows, shape=(self.kh,) + rows.shape[:-1] + (lb,),
                                 strides=(step * it,) + rows.strides)  # rows[kh] = stacked[kh]
            views = (src, dst, stacked)
            self._views[lb] = views
        return views

    def __call__(self, ext, lb):
        src, dst, rows = self._inputs(lb)
        np.copyto(dst, src)
        tmp = self.tmp[..., :lb]
        if self.stacked:  # one stacked matmul (one GIL release) and one sum
            np.matmul(self.wr, rows, out=tmp)
            np.add.reduce(tmp, axis=0, out=ext)
            return
        np.matmul(self.wr[0], rows[0], out=ext)
        for t in range(1, self.kh):
            np.matmul(self.wr[t], rows[t], out=tmp[0])
            np.add(ext, tmp[0], out=ext)


def _frame_conv_bytes(cin, cout, kh, kw, cells, itemsize):
    """Working set per image of a ``_FrameConv`` on ``cells = hf*wf`` grid cells: frame,
    column shifts, output and its accumulator would be (KW*cin + cin + 2*cout) cells, but
    the full-columns count below keeps the one-image tiles measured best (16 channels:
    2-image tiles ran no faster per image)."""
    return (cin * kh * kw + cout) * cells * itemsize


def flat_forward(g, x, weight, bias, activation, slope, y, n0, n1, budget):
    """``y[n0:n1] = act(conv(x[n0:n1], w) + b)`` on flat frames, tile by tile."""
    it = x.itemsize
    wf = frame_width(g.W, g.OW, g.pw)
    per_image = _frame_conv_bytes(g.C, g.O, g.KH, g.KW, g.Hp * wf, it)
    bmax, tiles = common.tiles(n0, n1, per_image, budget)
    frame = _Frame(g.C, bmax, g.Hp, wf, (g.KW - 1) * g.dw + 1 + g.pw, x.dtype)
    lmax = _flat_len(bmax, g.Hp, g.OH, wf)
    conv = _FrameConv(weight, g.G, frame, lmax, g.KH, g.KW, g.dh, g.dw)
    extbuf = np.empty((g.G, g.Og, lmax), dtype=x.dtype)
    bias4 = None if bias is None else bias.reshape(1, g.O, 1, 1)
    interior = (slice(g.ph, g.ph + g.H), slice(g.pw, g.pw + g.W))
    outs = {}
    for a, e in tiles:
        b = e - a
        lb = _flat_len(b, g.Hp, g.OH, wf)
        if b not in outs:
            ext = extbuf[..., :lb]
            outs[b] = (ext, _ext_view(ext.reshape(g.O, lb), b, g.O, g.OH, g.OW, g.Hp, wf))
        ext, src = outs[b]
        frame.grid[:, :b, interior[0], interior[1]] = x[a:e].transpose(1, 0, 2, 3)
        conv(ext, lb)
        common.epilogue(src, bias4, y[a:e], activation, slope)


def flat_backward(g, gy_all, x, weight, y, activation, slope, needs, gx_all, n0, n1, budget):
    """Stride-1 backward on flat frames (see the module docstring)."""
    it = x.itemsize
    G, Og, O, C, Cg = g.G, g.Og, g.O, g.C, g.Cg
    # grad_x = correlation of grad_y (padded by q = d*(K-1) - p, cropped if q < 0) with
    # the flipped, transposed kernel, on a grid of hq = H + d*(KH-1) rows and wq columns.
    qh, qw = g.dh * (g.KH - 1) - g.ph, g.dw * (g.KW - 1) - g.pw
    hq = g.H + g.dh * (g.KH - 1)
    # Where grad_y lands in the q-frame (cropped when q < 0).
    rh0, rw0 = max(qh, 0), max(qw, 0)
    sh0, sw0 = max(-qh, 0), max(-qw, 0)
    nh, nw = min(g.OH - sh0, hq - rh0), min(g.OW - sw0, g.W + g.dw * (g.KW - 1) - rw0)
    wq = frame_width(nw, g.W, rw0)
    wf = frame_width(g.W, g.OW, g.pw)  # the forward's frame: x's and grad_y's
    # "same" padding: one gy frame (its width: wq == wf there, as OW == W)
    shared = needs[0] and qh == g.ph and qw == g.pw
    need_wb = needs[1] or needs[2]
    per_image = max(
        (C + O) * g.Hp * wf * it if need_wb else 0,
        _frame_conv_bytes(O, C, g.KH, g.KW, hq * wq, it) if needs[0] else 0,
    )
    bmax, tiles = common.tiles(n0, n1, per_image, budget)
    slack = max(wf, wq) * (g.KH * g.dh + 1) + (g.KW - 1) * g.dw + 1 + max(g.pw, rw0)

    gw = None
    gb = np.zeros((O,), dtype=x.dtype) if needs[2] else None
    if needs[0]:
        qframe = _Frame(O, bmax, hq, wq, slack, x.dtype)
        lqmax = _flat_len(bmax, hq, g.H, wq)
        qconv = _FrameConv(common.flipped_weight(weight, g), G, qframe, lqmax, g.KH, g.KW, g.dh, g.dw)
        qext = np.empty((G, Cg, lqmax), dtype=x.dtype)
    if need_wb:
        pframe = qframe if shared else _Frame(O, bmax, g.Hp, wf, slack, x.dtype)
        poff = (qh * wq + qw) if shared else 0
        prh, prw = (qh, qw) if shared else (0, 0)
    if needs[1]:
        # x tile, zero-padded, channels-last: (b, Hp, Wf, C) + slack. Tap (kh, kw) of the
        # stacked output grid is then a plain (lb, C) matrix at offset
        # (kh*dh*Wf + kw*dw)*C, so grad_w needs no column buffer: one NN GEMM per tap
        # and group, gw[g, kh, kw] += gy[g] (Og, lb) @ x_tap[g] (lb, Cg) (NN is ~1.6x
        # faster in OpenBLAS than gy @ cols^T, the NT form).
        xcl = np.zeros(bmax * g.Hp * wf * C + ((g.KW - 1) * g.dw + 1 + g.pw) * C, dtype=x.dtype)
        xcl4 = xcl[: bmax * g.Hp * wf * C].reshape(bmax, g.Hp, wf, C)
        gw = np.zeros((G, g.KH, g.KW, Og, Cg), dtype=x.dtype)
        gwt = np.empty_like(gw)

    work = np.empty((bmax, O, g.OH, g.OW), dtype=x.dtype) if activation else None
    views = {}
    for a, e in tiles:
        b = e - a
        gyt = gy_all[a:e]
        yt = None if y is None else y[a:e]
        lb = _flat_len(b, g.Hp, g.OH, wf)
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
                    strides=(Cg * it, g.dh * wf * C * it, g.dw * C * it, C * it, it),
                )
            if needs[0]:
                v["qdst"] = qframe.grid[:, :b, rh0 : rh0 + nh, rw0 : rw0 + nw].transpose(1, 0, 2, 3)
                ext = qext[..., :lq]
                v["qext"] = ext
                v["gxsrc"] = _ext_view(ext.reshape(C, lq), b, C, g.H, g.W, hq, wq)
            views[b] = v
        v = views[b]
        gm = common.masked_grad(np, gyt, yt, activation, slope, None if work is None else work[:b])
        if need_wb:
            np.copyto(v["pdst"], gm)
            gyext = v["gyext"]
            if needs[2]:
                gb += common.channel_sums(np, gyext, channel_axis=0)
            if needs[1]:
                common.to_channels_last(xcl4[:b, g.ph : g.ph + g.H, g.pw : g.pw + g.W], x[a:e])
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
