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
