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
a little (|error| ~ 4e-7 of the output's scale on the benchmark layers, against ~1e-7
for a direct sum) and float64 stays at ~1e-15.

The transforms
--------------
Channels-last: the tile is copied into a zero-padded frame ``(b, 2*TH + 2, 2*TW + 2, C)``
(``TH, TW``: tiles per column and row) and every transform is separable, one 1-D pass
along the rows and one along the columns, each a few NumPy adds over stride-2 views
whose inner runs are C (or O) contiguous elements. Per image of the 64-channel 32x32
layer (1 core): the forward's input transform moves ~5 MB in ~0.18 ms (~27 GB/s,
cache-resident), the GEMMs take ~0.38 ms at ~90 GFLOP/s, the output transform
~0.11 ms; the NCHW<->NHWC copies are ``_conv_common.to_channels_last``. Kept NCHW
instead, the same passes have inner runs of TW (16 for 32x32 images) and the input
transform ran 3x slower.

Where it pays (measured, dispatch in ``cpu.conv._path``): from 32 channels on. At 16
channels the transforms cost 3-5x the GEMMs they save (16x32x32, 32 images on one core:
transforms 7 ms, GEMMs 0.9 ms, flat's whole forward 4 ms).
"""

from __future__ import annotations

import numpy as np

from . import _conv_common as common

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


def _bt(src, axis, t, out):
    """``B^T d`` along ``axis`` of ``src`` (2t + 2 long): tile k's entries are
    ``d_i = src[2k + i]``, its transform ``(d0 - d2, d1 + d2, d2 - d1, d1 - d3)``."""
    d = [_along(src, axis, i, i + 2 * t, 2) for i in range(4)]
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[1], d[3], out=out[3])


def _at(m, out0, out1):
    """``A^T m`` of a tile's 4 entries: ``(m0 + m1 + m2, m1 - m2 - m3)``."""
    np.add(m[0], m[1], out=out0)
    out0 += m[2]
    np.subtract(m[1], m[2], out=out1)
    out1 -= m[3]


def _a(y0, y1, out):
    """``A y`` (the adjoint of ``_at``) of a tile's 2 entries: ``(y0, y0 + y1, y0 - y1,
    -y1)``; ``out[0]`` None hands ``y0`` itself back. Returns the 4 arrays."""
    if out[0] is not None:
        np.copyto(out[0], y0)
    np.add(y0, y1, out=out[1])
    np.subtract(y0, y1, out=out[2])
    np.negative(y1, out=out[3])
    return [y0 if out[0] is None else out[0], *out[1:]]


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


class _Tiles:
    """One thread's buffers for tiles of up to ``bmax`` images: the padded
    channels-last frame and the transformed input ``V`` (16, bmax * T, C), viewed as
    ``V6`` (4, 4, bmax, TH, TW, C); ``load`` fills ``V`` from NCHW images."""

    def __init__(self, g, bmax, dtype):
        self.g = g
        self.TH, self.TW = -(-g.OH // 2), -(-g.OW // 2)
        self.T = self.TH * self.TW
        hf, wf = 2 * self.TH + 2, 2 * self.TW + 2
        self.frame = np.zeros((bmax, hf, wf, g.C), dtype=dtype)
        self.interior = self.frame[:, g.ph : g.ph + g.H, g.pw : g.pw + g.W]
        self.rows = np.empty((4, bmax, self.TH, wf, g.C), dtype=dtype)
        self.V = np.empty((16, bmax * self.T, g.C), dtype=dtype)
        self.V6 = self.V.reshape(4, 4, bmax, self.TH, self.TW, g.C)

    def load(self, xt):
        """``V`` of the NCHW images ``xt``; returns its ``(16, b * T, C)`` part."""
        b = xt.shape[0]
        common.to_channels_last(self.interior[:b], xt)
        _bt(self.frame[:b], 1, self.TH, [r[:b] for r in self.rows])
        for i in range(4):
            _bt(self.rows[i, :b], 2, self.TW, [self.V6[i, j, :b] for j in range(4)])
        return self.V[:, : b * self.T]


def weight_transform(weight):
    """``U = G g G^T`` as ``(16, O, C)``: one GEMM ``kron(G, G) @ g`` over the taps, in
    the weight's dtype (the factors 1, 1/2, 1/4 are exact, so only the sums round)."""
    o, c = weight.shape[:2]
    return (_GG.astype(weight.dtype) @ weight.reshape(o * c, 9).T).reshape(16, o, c)


def weight_grad(gu):
    """``grad_w = G^T grad_U G`` of ``gu`` (16, O, C), as (O, C, 3, 3)."""
    o, c = gu.shape[1:]
    return (gu.reshape(16, o * c).T @ _GG.astype(gu.dtype)).reshape(o, c, 3, 3)


def _tiles(g, n0, n1, budget, it):
    # Per image: frame + rows + V (~7 C-wide planes of T tiles, 16 of them V) and the
    # output side (M, its row pass and the output tile: ~28 O-wide ones), forward;
    # backward holds about as much.
    t = -(-g.OH // 2) * -(-g.OW // 2)
    per_image = (24 * g.C + 28 * g.O) * t * it
    return common.tiles(n0, n1, per_image, budget, -(-MIN_GEMM_ROWS // t))


#: Tile count (GEMM rows) a tile's 16 GEMMs get at least, whatever the budget: each
#: GEMM packs its (C, O) weight, so the rows amortise it (8x8 images have 16 tiles each).
MIN_GEMM_ROWS = 128


# ----------------------------------------------------------------------------- forward / backward


def winograd_forward(g, x, u, bias, activation, slope, y, n0, n1, budget):
    """``y[n0:n1] = act(conv(x[n0:n1], w) + b)``, tile by tile; ``u`` is
    ``weight_transform(w)``."""
    dt = x.dtype
    bmax, tiles = _tiles(g, n0, n1, budget, x.itemsize)
    buf = _Tiles(g, bmax, dt)
    TH, TW, T, O = buf.TH, buf.TW, buf.T, g.O
    ut = u.transpose(0, 2, 1)  # (16, C, O), BLAS reads it transposed
    m = np.empty((16, bmax * T, O), dtype=dt)
    m6 = m.reshape(4, 4, bmax, TH, TW, O)
    s = np.empty((2, 4, bmax, TH, TW, O), dtype=dt)
    out = np.empty((bmax, TH, 2, TW, 2, O), dtype=dt)
    bias4 = None if bias is None else bias.reshape(1, O, 1, 1)
    for a, e in tiles:
        b = e - a
        np.matmul(buf.load(x[a:e]), ut, out=m[:, : b * T])
        for j in range(4):
            _at([m6[i, j, :b] for i in range(4)], s[0, j, :b], s[1, j, :b])
        for r in range(2):
            _at([s[r, j, :b] for j in range(4)], out[:b, :, r, :, 0], out[:b, :, r, :, 1])
        src = out[:b].reshape(b, 2 * TH, 2 * TW, O)[:, : g.OH, : g.OW].transpose(0, 3, 1, 2)
        common.epilogue(src, bias4, y[a:e], activation, slope)


def winograd_backward(g, gy_all, x, u, y, activation, slope, needs, gx_all, n0, n1, budget):
    """grad_w from ``V^T @ dM``, grad_x from ``dM @ U^T`` (module docstring), tile by tile;
    ``u`` is ``weight_transform(w)``. Returns this range's ``(grad_w, grad_b)`` sums."""
    dt = x.dtype
    bmax, tiles = _tiles(g, n0, n1, budget, x.itemsize)
    buf = _Tiles(g, bmax, dt)
    TH, TW, T, O, C = buf.TH, buf.TW, buf.T, g.O, g.C
    gyp = np.zeros((bmax, 2 * TH, 2 * TW, O), dtype=dt)  # rows/columns past OH, OW stay 0
    work = np.empty((bmax, O, g.OH, g.OW), dtype=dt) if activation else None
    rows = np.empty((3, bmax, TH, 2 * TW, O), dtype=dt)
    dm = np.empty((16, bmax * T, O), dtype=dt)
    dm6 = dm.reshape(4, 4, bmax, TH, TW, O)
    gu = np.zeros((16, O, C), dtype=dt) if needs[1] else None
    gb = np.zeros((O,), dtype=dt) if needs[2] else None
    if needs[1]:
        gut = np.empty_like(gu)
    if needs[0]:
        dv = np.empty((16, bmax * T, C), dtype=dt)
        dv6 = dv.reshape(4, 4, bmax, TH, TW, C)
        cols = np.empty((4, bmax, TH, 2 * TW + 2, C), dtype=dt)
        tmp_c = np.empty((bmax, TH, TW, C), dtype=dt)
        tmp_r = np.empty((bmax, TH, 2 * TW + 2, C), dtype=dt)
        gframe = np.empty_like(buf.frame)
    for a, e in tiles:
        b = e - a
        wk = None if work is None else work[:b]
        gm = common.masked_grad(np, gy_all[a:e], None if y is None else y[a:e], activation, slope, wk)
        common.to_channels_last(gyp[:b, : g.OH, : g.OW], gm)
        if needs[2]:
            gb += gyp[:b].reshape(-1, O).sum(axis=0)
        r = _a(gyp[:b, 0::2], gyp[:b, 1::2], [None, *(q[:b] for q in rows)])
        for i in range(4):
            _a(r[i][:, :, 0::2], r[i][:, :, 1::2], [dm6[i, j, :b] for j in range(4)])
        dmb = dm[:, : b * T]
        if needs[1]:
            np.matmul(dmb.transpose(0, 2, 1), buf.load(x[a:e]), out=gut)
            gu += gut
        if needs[0]:
            np.matmul(dmb, u, out=dv[:, : b * T])  # u[xi] is U[xi]^T
            for i in range(4):
                _b([dv6[i, j, :b] for j in range(4)], 2, TW, cols[i, :b], tmp_c[:b])
            _b([c[:b] for c in cols], 1, TH, gframe[:b], tmp_r[:b])
            src = gframe[:b, g.ph : g.ph + g.H, g.pw : g.pw + g.W].transpose(0, 3, 1, 2)
            np.copyto(gx_all[a:e], src)
    return (None if gu is None else weight_grad(gu)), gb
