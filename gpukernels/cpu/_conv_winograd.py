"""The ``winograd`` path of the NumPy conv2d (``gpukernels.cpu.conv``): 3x3 kernels,
stride 1, dilation 1, groups 1, by Winograd's minimal filtering F(2x2, 3x3) (Lavin and
Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).

The formulas
------------
Each 2x2 output tile ``Y`` reads a 4x4 input tile ``d`` (tiles overlap by 2):
``Y = A^T [sum_c (G g G^T) * (B^T d B)] A``, so with ``U = G g G^T`` (the weight, once
per call) and ``V = B^T d B`` (the input) the products become 16 GEMMs, one per entry
``xi`` of the 4x4 transformed tile: ``M[xi] = V[xi] @ U[xi]``, ``(tiles, C) @ (C, O)``.
That is 16 multiplies per channel pair for 4 outputs instead of 36: 2.25x fewer FLOPs
than any im2col path. Backward, with ``dM = A dY A^T``: ``grad_U[xi] = V[xi]^T @ dM[xi]``
(then ``grad_w = G^T grad_U G``) and ``dV[xi] = dM[xi] @ U[xi]^T`` (then ``grad_x`` is
the overlap-add of ``B dV B^T``): every product stays a GEMM with the tile count as M
or K. ``A``, ``B`` only add and subtract; ``G`` has halves, so float32 rounding grows
a little (|error| ~ 3e-7 of the output's scale on 32- and 64-channel layers, against
~1e-7 for a direct sum) and float64 stays at ~1e-15.

The transforms
--------------
Channels-last: the tile is copied into a zero-padded frame ``(b, 2*TH + 2, 2*TW + 2, C)``
(``TH, TW``: tiles per column and row) and every transform is separable, one 1-D pass
along the columns and one along the rows, each a few NumPy adds over stride-2 views
whose inner runs are C (or O) contiguous elements (kept NCHW, the same passes have
inner runs of TW, 16 for 32x32 images, and the input transform ran 3x slower). The
NCHW -> NHWC copies are ``_conv_common.to_channels_last``; the way back (y, grad_x) is
one strided copy, which runs at full speed in that direction.

The work goes one transformed column j at a time (see "buffers" below), so a tile
holds a quarter of V and M. Measured, fwd+bwd, float32, 1 core / 2 threads against the
path the dispatcher took before: 128x16x16 b64 110 / 63 ms (nhwc 209 / 110; all 16
columns at once 131 / 77); 256x8x8 b32 55 / 31 (nhwc 92 / 53). Its transforms make
about a third of a call; two threads scale 1.8x, where the all-columns version, its
working set 3x larger, scaled 1.5x.

Where numba is installed (``_jit``) each transform of a column is one compiled pass
(``_jit_kernels.winograd_*``: the input's ``B^T`` column then rows, the output's
``A^T`` with its column share, grad_y's ``A``, grad_x's ``B`` overlap-add with the
adjoint of ``B^T``'s column) instead of 4-8 NumPy operations over stride-2 views;
same buffers, same GEMMs, the forward bit for bit the same. fwd+bwd, 2 threads, ms,
NumPy against compiled transforms: 128x16x16 b64 112 / 63, 64x32x32 b64 175 / 84.

Where it pays (dispatch in ``cpu.conv._path``): from 128 channels on with the NumPy
transforms, from 32 with the compiled ones (``conv.WINOGRAD_JIT_MIN_CHANNELS``).
With the NumPy transforms at 64 channels it loses on two threads (64x32x32 b64 115 against flat's 102 ms; one thread 174 against
194), and at 16 the transforms cost 3-5x the GEMMs they save.
"""

from __future__ import annotations

import numpy as np

from . import _conv_common as common
from . import _jit

#: ``U = G g G^T``: the weight transform of F(2x2, 3x3).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: ``kron(G, G)`` (16, 9): ``U[4i + j] = sum_kl G[i, k] G[j, l] g[k, l]``.
_GG = np.kron(_G, _G)


def winograd_ok(g, dtype):
    """3x3, stride 1, dilation 1, groups 1, non-negative padding, float32 or float64."""
    return (
        g.G == 1
        and (g.KH, g.KW) == (3, 3)
        and (g.sh, g.sw, g.dh, g.dw) == (1, 1, 1, 1)
        and min(g.ph, g.pw) >= 0
        and np.dtype(dtype) in (np.float32, np.float64)
    )


# ----------------------------------------------------------------------------- 1-D passes
# Each pass runs along one axis (1: tile rows, 2: tile columns) of channels-last arrays
# (b, rows, columns, channels); a list argument holds the 4 (or 2) entries of a tile
# along that axis, each an array over all tiles.


def _along(a, axis, start, stop, step=1):
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop, step)
    return a[tuple(index)]


#: ``B^T``'s rows 0, 2, 3 as (plus, minus) taps: entry j of a tile is ``d[plus] -
#: d[minus]`` (``_bt``), and ``_bt_adjoint`` adds an entry's gradient back onto those
#: taps. Row 1 is ``d1 + d2`` (both users special-case it: None holds its place).
_BT_TAPS = ((0, 2), None, (2, 1), (1, 3))


def _bt_entry(src, axis, t, j, out):
    """Entry ``j`` of ``_bt`` alone: ``(d0 - d2, d1 + d2, d2 - d1, d1 - d3)[j]``."""
    d = [_along(src, axis, i, i + 2 * t, 2) for i in range(4)]
    if j == 1:
        np.add(d[1], d[2], out=out)
    else:
        plus, minus = _BT_TAPS[j]
        np.subtract(d[plus], d[minus], out=out)


def _bt(src, axis, t, out):
    """``B^T d`` along ``axis`` of ``src`` (2t + 2 long): tile k's entries are
    ``d_i = src[2k + i]``, its transform ``(d0 - d2, d1 + d2, d2 - d1, d1 - d3)``."""
    for j in range(4):
        _bt_entry(src, axis, t, j, out[j])


def _bt_adjoint(dv, axis, t, j, dst):
    """``dst += (B^T)^T`` of entry ``j``: the adjoint of ``_bt_entry`` (``dst`` 2t + 2 long
    along ``axis``, tiles overlapping by 2, so the adds go tap by tap)."""
    d = [_along(dst, axis, i, i + 2 * t, 2) for i in range(4)]
    if j == 1:
        d[1] += dv
        d[2] += dv
    else:
        plus, minus = _BT_TAPS[j]
        d[plus] += dv
        d[minus] -= dv


def _at(m, out0, out1):
    """``A^T m`` of a tile's 4 entries: ``(m0 + m1 + m2, m1 - m2 - m3)``."""
    np.add(m[0], m[1], out=out0)
    out0 += m[2]
    np.subtract(m[1], m[2], out=out1)
    out1 -= m[3]


def _a(y0, y1, out):
    """``A y`` (the adjoint of ``_at``) of a tile's 2 entries: ``(y0, y0 + y1, y0 - y1,
    -y1)``."""
    np.copyto(out[0], y0)
    np.add(y0, y1, out=out[1])
    np.subtract(y0, y1, out=out[2])
    np.negative(y1, out=out[3])


def _b(dv, axis, t, dst, tmp):
    """``B dv`` (the adjoint of ``_bt``) of every tile's 4 entries, overlap-added into
    ``dst`` (2t + 2 long along ``axis``): tile k's ``(dv0, dv1 - dv2 + dv3,
    dv1 + dv2 - dv0, -dv3)`` lands on ``dst[2k : 2k + 4]``, so ``dst``'s even entries
    are ``dv0[k] + (dv1 + dv2 - dv0)[k - 1]`` and its odd ones ``(dv1 - dv2 + dv3)[k] -
    dv3[k - 1]``. ``tmp`` has one tile entry's shape."""
    even, odd = _along(dst, axis, 0, None, 2), _along(dst, axis, 1, None, 2)
    np.copyto(_along(even, axis, 0, t), dv[0])
    _along(even, axis, t, None)[...] = 0
    np.add(dv[1], dv[2], out=tmp)
    tmp -= dv[0]
    _along(even, axis, 1, None)[...] += tmp
    head = _along(odd, axis, 0, t)
    np.subtract(dv[1], dv[2], out=head)
    head += dv[3]
    _along(odd, axis, t, None)[...] = 0
    _along(odd, axis, 1, None)[...] -= dv[3]


# ----------------------------------------------------------------------------- buffers
# The 16 GEMMs run one transformed column j at a time (the 4 entries xi = 4i + j):
# the input transform's column pass then its row pass give V[:, j]; M[:, j]'s row pass
# is accumulated into the output tile at once. A tile then holds a quarter of V and M,
# not all of them: 64x32x32 / 128x16x16 float32 ~1.3 / 0.7 MB an image against ~3.6 /
# 1.9 MB, which is what let two threads scale (below).


class _Tiles:
    """One thread's buffers for tiles of up to ``bmax`` images: the padded
    channels-last frame, one column pass of it ``col`` (b, Hf, TW, C) and the
    transformed input's column ``V_j`` (4, bmax * T, C), viewed as ``vj6`` (4, bmax,
    TH, TW, C)."""

    def __init__(self, g, bmax, dtype):
        self.TH, self.TW, self.T = _grid(g)
        self.frame = np.zeros((bmax, 2 * self.TH + 2, 2 * self.TW + 2, g.C), dtype=dtype)
        self.interior = self.frame[:, g.ph : g.ph + g.H, g.pw : g.pw + g.W]
        self.col = np.empty((bmax, 2 * self.TH + 2, self.TW, g.C), dtype=dtype)
        self.vj = np.empty((4, bmax * self.T, g.C), dtype=dtype)
        self.vj6 = self.vj.reshape(4, bmax, self.TH, self.TW, g.C)

    def load(self, xt):
        """Copy the NCHW images ``xt`` into the frame."""
        common.to_channels_last(self.interior[: xt.shape[0]], xt)

    def column(self, b, j, jit=None):
        """``V[:, j]`` (4, b * T, C) of the loaded images (in one pass by ``jit``, the
        compiled kernels, when given)."""
        if jit is not None:
            jit.winograd_input_column(self.frame[:b], j, self.vj6[:, :b])
        else:
            _bt_entry(self.frame[:b], 2, self.TW, j, self.col[:b])
            _bt(self.col[:b], 1, self.TH, [v[:b] for v in self.vj6])
        return self.vj[:, : b * self.T]


def weight_transform(weight):
    """``U = G g G^T`` as ``(16, O, C)``: one GEMM ``kron(G, G) @ g`` over the taps, in
    the weight's dtype (the factors 1, 1/2, 1/4 are exact, so only the sums round)."""
    o, c = weight.shape[:2]
    return (_GG.astype(weight.dtype) @ weight.reshape(o * c, 9).T).reshape(16, o, c)


def weight_grad(gu):
    """``grad_w = G^T grad_U G`` of ``gu`` (16, O, C), as (O, C, 3, 3)."""
    o, c = gu.shape[1:]
    return (gu.reshape(16, o * c).T @ _GG.astype(gu.dtype)).reshape(o, c, 3, 3)


def _grid(g):
    """``(TH, TW, T)``: 2x2 output tiles per column, per row, in all."""
    th, tw = -(-g.OH // 2), -(-g.OW // 2)
    return th, tw, th * tw


def _tiles(g, n0, n1, budget, it):
    # Per image, in C- or O-wide planes of T tiles: frame, column pass, V_j, and for
    # grad_x dV_j, its row pass, the grad frame (~20 C), and grad_y's frame, M_j / dM_j,
    # the output tile and its temporaries (~14 O).
    t = _grid(g)[2]
    per_image = (20 * g.C + 14 * g.O) * t * it
    return common.tiles(n0, n1, per_image, budget, -(-MIN_GEMM_ROWS // t))


#: Tile count (GEMM rows) a tile's GEMMs get at least, whatever the budget: each GEMM
#: packs its (C, O) weight, so the rows amortise it (8x8 images have 16 tiles each).
MIN_GEMM_ROWS = 256


# ----------------------------------------------------------------------------- forward / backward


def winograd_forward(g, x, u, bias, activation, slope, y, n0, n1, budget):
    """``y[n0:n1] = act(conv(x[n0:n1], w) + b)``, tile by tile; ``u`` is
    ``weight_transform(w)``."""
    dt = x.dtype
    bmax, tiles = _tiles(g, n0, n1, budget, x.itemsize)
    buf = _Tiles(g, bmax, dt)
    TH, TW, T, O = buf.TH, buf.TW, buf.T, g.O
    u4 = u.reshape(4, 4, O, g.C).transpose(1, 0, 3, 2)  # [j] = U[:, j] as (4, C, O)
    mj = np.empty((4, bmax * T, O), dtype=dt)
    mj6 = mj.reshape(4, bmax, TH, TW, O)
    out = np.empty((bmax, TH, 2, TW, 2, O), dtype=dt)
    tmp = np.empty((2, bmax, TH, TW, O), dtype=dt)
    bias4 = None if bias is None else bias.reshape(1, O, 1, 1)
    jit = _jit.kernels()
    for a, e in tiles:
        b = e - a
        buf.load(x[a:e])
        o = out[:b]
        oc = [o[:, :, :, :, 0], o[:, :, :, :, 1]]  # (b, TH, 2, TW, O): output columns 2k, 2k + 1
        for j in range(4):
            np.matmul(buf.column(b, j, jit), u4[j], out=mj[:, : b * T])
            if jit is not None:
                jit.winograd_output_column(mj6[:, :b], j, o)
                continue
            m = [q[:b] for q in mj6]
            # A^T along the rows, then column j's share of A^T along the columns:
            # oc[0] = s0 + s1 + s2, oc[1] = s1 - s2 - s3.
            if j == 0:
                _at(m, oc[0][:, :, 0], oc[0][:, :, 1])
            elif j == 1:
                _at(m, oc[1][:, :, 0], oc[1][:, :, 1])
                oc[0] += oc[1]
            else:
                _at(m, tmp[0, :b], tmp[1, :b])
                sj = tmp[:, :b].transpose(1, 2, 0, 3, 4)  # (b, TH, 2, TW, O) like oc[c]
                if j == 2:
                    oc[0] += sj
                oc[1] -= sj
        src = o.reshape(b, 2 * TH, 2 * TW, O)[:, : g.OH, : g.OW].transpose(0, 3, 1, 2)
        common.epilogue(src, bias4, y[a:e], activation, slope)


def winograd_backward(g, gy_all, x, u, y, activation, slope, needs, gx_all, n0, n1, budget):
    """grad_w from ``dM^T @ V``, grad_x from ``dM @ U`` (module docstring), tile by tile,
    one transformed column at a time; ``u`` is ``weight_transform(w)`` (read for grad_x
    only: ``cpu.conv`` passes the weight itself when grad_x is not needed). Returns this
    range's ``(grad_w, grad_b)`` sums."""
    dt = x.dtype
    bmax, tiles = _tiles(g, n0, n1, budget, x.itemsize)
    buf = _Tiles(g, bmax, dt) if needs[1] else None
    (TH, TW, T), O, C = _grid(g), g.O, g.C
    gyp = np.zeros((bmax, 2 * TH, 2 * TW, O), dtype=dt)  # rows/columns past OH, OW stay 0
    work = np.empty((bmax, O, g.OH, g.OW), dtype=dt) if activation else None
    acol = np.empty((bmax, 2 * TH, TW, O), dtype=dt)
    dmj = np.empty((4, bmax * T, O), dtype=dt)
    dmj6 = dmj.reshape(4, bmax, TH, TW, O)
    gu = np.zeros((4, 4, O, C), dtype=dt) if needs[1] else None  # [i, j]
    gb = np.zeros((O,), dtype=dt) if needs[2] else None
    if needs[1]:
        gut = np.empty((4, O, C), dtype=dt)
    if needs[0]:
        u4 = u.reshape(4, 4, O, C).transpose(1, 0, 2, 3)  # [j] = U[:, j]^T as (4, O, C)
        dvj = np.empty((4, bmax * T, C), dtype=dt)
        dvj6 = dvj.reshape(4, bmax, TH, TW, C)
        dcol = np.empty((bmax, 2 * TH + 2, TW, C), dtype=dt)
        tmp = np.empty((bmax, TH, TW, C), dtype=dt)
        gframe = np.empty((bmax, 2 * TH + 2, 2 * TW + 2, C), dtype=dt)
    jit = _jit.kernels()
    for a, e in tiles:
        b = e - a
        wk = None if work is None else work[:b]
        gm = common.masked_grad(np, gy_all[a:e], None if y is None else y[a:e], activation, slope, wk)
        common.to_channels_last(gyp[:b, : g.OH, : g.OW], gm)
        if needs[2]:
            gb += common.channel_sums(np, gyp[:b].reshape(-1, O))
        if needs[1]:
            buf.load(x[a:e])
        if needs[0]:
            gframe[:b] = 0
        y0, y1 = gyp[:b, :, 0::2], gyp[:b, :, 1::2]  # output columns 2k, 2k + 1
        for j in range(4 if needs[0] or needs[1] else 0):
            # dM[:, j] = A dY A^T's column j: A along the columns (entry j), then the rows.
            if jit is not None:
                jit.winograd_grad_column(gyp[:b], j, dmj6[:, :b])
            else:
                c = acol[:b]
                if j == 0:
                    c = y0
                elif j == 1:
                    np.add(y0, y1, out=c)
                elif j == 2:
                    np.subtract(y0, y1, out=c)
                else:
                    np.negative(y1, out=c)
                _a(c[:, 0::2], c[:, 1::2], [q[:b] for q in dmj6])
            dm = dmj[:, : b * T]
            if needs[1]:
                np.matmul(dm.transpose(0, 2, 1), buf.column(b, j, jit), out=gut)
                gu[:, j] += gut
            if needs[0]:
                np.matmul(dm, u4[j], out=dvj[:, : b * T])
                if jit is not None:
                    jit.winograd_input_grad_column(dvj6[:, :b], j, gframe[:b])
                else:
                    _b([q[:b] for q in dvj6], 1, TH, dcol[:b], tmp[:b])
                    _bt_adjoint(dcol[:b], 2, TW, j, gframe[:b])
        if needs[0]:
            src = gframe[:b, g.ph : g.ph + g.H, g.pw : g.pw + g.W].transpose(0, 3, 1, 2)
            np.copyto(gx_all[a:e], src)
    return (None if gu is None else weight_grad(gu.reshape(16, O, C))), gb
