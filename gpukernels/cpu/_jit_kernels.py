"""numba kernels of the numpy backend (imported by ``_jit.kernels()`` only: importing
this module imports numba). Each is one pass over (N, C, L) C-contiguous arrays in
memory order, float32 or float64, with per-channel coefficients of the array's dtype
and float64 sums; callers cut the batch into pieces (``_parallel.run_pieces``) and add
the pieces' sums.

Flags: ``nogil`` (the pieces run on two Python threads), ``cache`` (compiled once per
machine), and of the fast-math flags only ``reassoc`` (so the sums vectorise) and
``contract`` (so ``x * a + c`` is one fused multiply-add): NaN and infinity keep
their IEEE meaning, so a NaN in x still reaches y and the sums.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_FLAGS = {"nogil": True, "cache": True, "fastmath": {"reassoc", "contract"}, "boundscheck": False}


@njit(**_FLAGS)
def channel_moments(x, shift, out):
    """``out[0, c] += sum(x[:, c] - shift[c])``, ``out[1, c] += sum((x[:, c] - shift[c])**2)``,
    in float64 (``shift``: float64 (C,); ``out``: float64 (2, C))."""
    n, c, l = x.shape
    for i in range(n):
        for ch in range(c):
            sh = shift[ch]
            s = 0.0
            s2 = 0.0
            for j in range(l):
                v = np.float64(x[i, ch, j]) - sh
                s += v
                s2 += v * v
            out[0, ch] += s
            out[1, ch] += s2


@njit(**_FLAGS)
def affine(x, m, a, c, relu, y):
    """``y = a (x - m) + c`` per channel (the subtraction first, so that ``|mean| >> std``
    costs no precision; then one fused multiply-add), then ``max(y, 0)`` where ``relu``;
    NaN stays NaN."""
    n, ch_, l = x.shape
    for i in range(n):
        for ch in range(ch_):
            mi = m[ch]
            ai = a[ch]
            ci = c[ch]
            for j in range(l):
                t = (x[i, ch, j] - mi) * ai + ci
                if relu and t < 0:
                    y[i, ch, j] = 0
                else:
                    y[i, ch, j] = t


@njit(**_FLAGS)
def grad_moments(g, x, y, relu, mean, out):
    """``out[0, c] += sum(gm[:, c])``, ``out[1, c] += sum(gm[:, c] (x[:, c] - mean[c]))`` in
    float64, where ``gm = g [y > 0]`` if ``relu`` (y: the forward's output) else ``g``
    (y is then not read). ``mean``: float64 (C,)."""
    n, c, l = x.shape
    for i in range(n):
        for ch in range(c):
            m = mean[ch]
            s = 0.0
            sx = 0.0
            for j in range(l):
                gv = np.float64(g[i, ch, j])
                if relu and not y[i, ch, j] > 0:
                    gv = gv * 0.0  # NumPy's g * [y > 0]: a NaN or inf g stays NaN
                s += gv
                sx += gv * (np.float64(x[i, ch, j]) - m)
            out[0, ch] += s
            out[1, ch] += sx


@njit(**_FLAGS)
def grad_input(g, x, y, relu, mean, a, k, k0, dx):
    """``dx = a (gm + k (x - mean) + k0)`` per channel, ``gm`` as in ``grad_moments``;
    ``mean``, ``a``, ``k``, ``k0`` (C,) of x's dtype."""
    n, c, l = x.shape
    for i in range(n):
        for ch in range(c):
            m = mean[ch]
            ai = a[ch]
            ki = k[ch]
            k0i = k0[ch]
            for j in range(l):
                gv = g[i, ch, j]
                if relu and not y[i, ch, j] > 0:
                    gv = gv * 0  # as in grad_moments
                dx[i, ch, j] = ai * (gv + ki * (x[i, ch, j] - m) + k0i)


# ----------------------------------------------------------------------------- winograd F(2x2, 3x3)
# ``_conv_winograd``'s transforms, one transformed column j (entries xi = 4i + j) a call,
# each a single pass in place of its 4-8 NumPy operations over strided views (that
# module's docstring has the formulas; the arrays are channels-last, C or O innermost).
# Column j of ``B^T`` as taps: entry j of a 4-vector d is ``d[t1] - d[t2]``, or
# ``d[t1] + d[t2]`` for j = 1 (branches, not a multiplied sign: a float64 sign would
# promote float32 arithmetic).
_BT_T1 = (0, 1, 2, 1)
_BT_T2 = (2, 2, 1, 3)


@njit(**_FLAGS)
def winograd_input_column(frame, j, v):
    """``V[:, j]`` of the tiles of ``frame`` (b, 2TH + 2, 2TW + 2, C) into ``v``
    (4, b, TH, TW, C): ``B^T`` entry j along the columns, then ``B^T`` along the rows."""
    b, _, _, cc = frame.shape
    th, tw = v.shape[2], v.shape[3]
    t1, t2, plus = _BT_T1[j], _BT_T2[j], j == 1
    for n in range(b):
        for p in range(th):
            r = 2 * p
            for q in range(tw):
                s1 = 2 * q + t1
                s2 = 2 * q + t2
                for c in range(cc):
                    if plus:
                        e0 = frame[n, r, s1, c] + frame[n, r, s2, c]
                        e1 = frame[n, r + 1, s1, c] + frame[n, r + 1, s2, c]
                        e2 = frame[n, r + 2, s1, c] + frame[n, r + 2, s2, c]
                        e3 = frame[n, r + 3, s1, c] + frame[n, r + 3, s2, c]
                    else:
                        e0 = frame[n, r, s1, c] - frame[n, r, s2, c]
                        e1 = frame[n, r + 1, s1, c] - frame[n, r + 1, s2, c]
                        e2 = frame[n, r + 2, s1, c] - frame[n, r + 2, s2, c]
                        e3 = frame[n, r + 3, s1, c] - frame[n, r + 3, s2, c]
                    v[0, n, p, q, c] = e0 - e2
                    v[1, n, p, q, c] = e1 + e2
                    v[2, n, p, q, c] = e2 - e1
                    v[3, n, p, q, c] = e1 - e3


@njit(**_FLAGS)
def winograd_output_column(m, j, out):
    """Column j's share of ``Y = A^T M A`` from ``m`` = M[:, j] (4, b, TH, TW, O) into
    ``out`` (b, TH, 2, TW, 2, O): ``A^T`` along the rows gives ``s = (m0 + m1 + m2,
    m1 - m2 - m3)``; along the columns, output column 0 gets ``M0 + M1 + M2`` and column
    1 ``M1 - M2 - M3``, so j = 0 sets column 0, j = 1 sets column 1 and adds it to 0,
    j = 2 adds to 0 and subtracts from 1, j = 3 subtracts from 1."""
    _, b, th, tw, oo = m.shape
    for n in range(b):
        for p in range(th):
            for q in range(tw):
                for o in range(oo):
                    m0 = m[0, n, p, q, o]
                    m1 = m[1, n, p, q, o]
                    m2 = m[2, n, p, q, o]
                    m3 = m[3, n, p, q, o]
                    s0 = m0 + m1 + m2
                    s1 = m1 - m2 - m3
                    if j == 0:
                        out[n, p, 0, q, 0, o] = s0
                        out[n, p, 1, q, 0, o] = s1
                    elif j == 1:
                        out[n, p, 0, q, 1, o] = s0
                        out[n, p, 1, q, 1, o] = s1
                        out[n, p, 0, q, 0, o] += s0
                        out[n, p, 1, q, 0, o] += s1
                    elif j == 2:
                        out[n, p, 0, q, 0, o] += s0
                        out[n, p, 1, q, 0, o] += s1
                        out[n, p, 0, q, 1, o] -= s0
                        out[n, p, 1, q, 1, o] -= s1
                    else:
                        out[n, p, 0, q, 1, o] -= s0
                        out[n, p, 1, q, 1, o] -= s1


@njit(**_FLAGS)
def winograd_grad_column(gy, j, dm):
    """``dM[:, j]`` = column j of ``A dY A^T`` from ``gy`` (b, 2TH, 2TW, O) into ``dm``
    (4, b, TH, TW, O): ``A``'s entry j along the columns (``y0``, ``y0 + y1``,
    ``y0 - y1``, ``-y1`` of the tile's two columns), then ``A`` along the rows
    (``z0, z0 + z1, z0 - z1, -z1``)."""
    _, b, th, tw, oo = dm.shape
    for n in range(b):
        for p in range(th):
            for q in range(tw):
                for o in range(oo):
                    a0 = gy[n, 2 * p, 2 * q, o]
                    b0 = gy[n, 2 * p, 2 * q + 1, o]
                    a1 = gy[n, 2 * p + 1, 2 * q, o]
                    b1 = gy[n, 2 * p + 1, 2 * q + 1, o]
                    if j == 0:
                        z0 = a0
                        z1 = a1
                    elif j == 1:
                        z0 = a0 + b0
                        z1 = a1 + b1
                    elif j == 2:
                        z0 = a0 - b0
                        z1 = a1 - b1
                    else:
                        z0 = -b0
                        z1 = -b1
                    dm[0, n, p, q, o] = z0
                    dm[1, n, p, q, o] = z0 + z1
                    dm[2, n, p, q, o] = z0 - z1
                    dm[3, n, p, q, o] = -z1


@njit(**_FLAGS)
def winograd_input_grad_column(dv, j, gframe):
    """``gframe`` (b, 2TH + 2, 2TW + 2, C) += column j's share of the overlap-add of
    ``B dV B^T``, ``dv`` = dV[:, j] (4, b, TH, TW, C): ``B`` along the rows (tile p's
    ``(dv0, dv1 - dv2 + dv3, dv1 + dv2 - dv0, -dv3)`` onto rows 2p .. 2p + 3), then the
    adjoint of ``B^T``'s entry j along the columns (onto columns 2q + t1 and 2q + t2)."""
    _, b, th, tw, cc = dv.shape
    t1, t2, plus = _BT_T1[j], _BT_T2[j], j == 1
    for n in range(b):
        for r in range(2 * th + 2):
            p = r // 2
            for q in range(tw):
                s1 = 2 * q + t1
                s2 = 2 * q + t2
                for c in range(cc):
                    if r % 2 == 0:  # dv0[p] + (dv1 + dv2 - dv0)[p - 1], the terms that exist
                        if p < th and p >= 1:
                            val = dv[0, n, p, q, c] + (dv[1, n, p - 1, q, c] + dv[2, n, p - 1, q, c] - dv[0, n, p - 1, q, c])
                        elif p < th:
                            val = dv[0, n, p, q, c]
                        else:
                            val = dv[1, n, p - 1, q, c] + dv[2, n, p - 1, q, c] - dv[0, n, p - 1, q, c]
                    else:  # (dv1 - dv2 + dv3)[p] - dv3[p - 1]
                        if p < th and p >= 1:
                            val = dv[1, n, p, q, c] - dv[2, n, p, q, c] + dv[3, n, p, q, c] - dv[3, n, p - 1, q, c]
                        elif p < th:
                            val = dv[1, n, p, q, c] - dv[2, n, p, q, c] + dv[3, n, p, q, c]
                        else:
                            val = -dv[3, n, p - 1, q, c]
                    gframe[n, r, s1, c] += val
                    if plus:
                        gframe[n, r, s2, c] += val
                    else:
                        gframe[n, r, s2, c] -= val


# ----------------------------------------------------------------------------- max pool 2x2 / 2
# ``pool``'s max pooling for the usual CNN geometry (kernel 2x2, stride 2, no padding or
# dilation) on (P, H, W) planes, P = N*C: the tie rule and NaN of that module's
# docstring, the four taps written out (a kernel taking the geometry as arguments ran
# its loops 4-13x slower: runtime bounds, nothing unrolled).


@njit(**_FLAGS)
def max_pool_2x2_forward(x, y, a):
    """``y[p, i, j]`` = max of ``x[p, 2i:2i+2, 2j:2j+2]``, ``a`` its tap ``2u + v``: the
    FIRST maximum (strictly greater replaces); a window holding a NaN gives NaN and 0."""
    planes = x.shape[0]
    oh, ow = y.shape[1], y.shape[2]
    for p in range(planes):
        for i in range(oh):
            r = 2 * i
            for j in range(ow):
                c = 2 * j
                x0 = x[p, r, c]
                x1 = x[p, r, c + 1]
                x2 = x[p, r + 1, c]
                x3 = x[p, r + 1, c + 1]
                best = x0
                arg = 0
                if x1 > best:
                    best = x1
                    arg = 1
                if x2 > best:
                    best = x2
                    arg = 2
                if x3 > best:
                    best = x3
                    arg = 3
                if x0 != x0 or x1 != x1 or x2 != x2 or x3 != x3:
                    y[p, i, j] = np.nan
                    a[p, i, j] = 0
                else:
                    y[p, i, j] = best
                    a[p, i, j] = arg


@njit(**_FLAGS)
def max_pool_2x2_backward(g, a, dx):
    """``dx[p, 2i + u, 2j + v]`` = ``g[p, i, j]`` where ``a[p, i, j] == 2u + v``, else 0
    (a select: an infinite g never becomes NaN elsewhere); rows and columns no window
    reads (odd H or W) are 0."""
    planes, h, w = dx.shape
    oh, ow = g.shape[1], g.shape[2]
    for p in range(planes):
        for r in range(2 * oh, h):
            for c in range(w):
                dx[p, r, c] = 0
        for i in range(oh):
            r = 2 * i
            if 2 * ow < w:
                dx[p, r, w - 1] = 0
                dx[p, r + 1, w - 1] = 0
            for j in range(ow):
                c = 2 * j
                gv = g[p, i, j]
                k = a[p, i, j]
                dx[p, r, c] = gv if k == 0 else 0
                dx[p, r, c + 1] = gv if k == 1 else 0
                dx[p, r + 1, c] = gv if k == 2 else 0
                dx[p, r + 1, c + 1] = gv if k == 3 else 0
