"""The ``pointwise`` path of the NumPy conv2d (``gpukernels.cpu.conv``): 1x1 kernels,
groups 1, no padding, any stride (ResNet's strided shortcut projections, bottleneck
1x1s).

A 1x1 conv is one GEMM per image on the (subsampled) pixels, no columns to gather:
``y[n] (O, L) = W (O, C) @ xs[n] (C, L)``, with ``xs = x[:, :, ::sh, ::sw]`` copied
contiguous for a stride > 1 (one pass over a quarter of x at stride 2). NumPy's stacked
matmul runs the per-image GEMMs in one call (a C loop of BLAS calls, no Python per
image), writing straight into y's NCHW rows: no transposes on either side, where
``batch_inner`` moved the batch innermost and back (ResNet-8's 32->64 8x8 shortcut,
batch 64 on one thread: 1.1 -> 0.23 ms).

Backward, per tile of images: ``gm`` the masked grad_y, ``grad_w = sum_n gm[n] @
xs[n]^T`` (a stacked NT product summed over the tile), ``grad_b = sum gm``, and
``grad_x[n]`` at the strided pixels ``= W^T @ gm[n]``, zero elsewhere.
"""

from __future__ import annotations

import numpy as np

from . import _conv_common as common


def pointwise_ok(g):
    """The geometries this path serves: 1x1, groups 1, no padding (dilation is moot)."""
    return g.KH == 1 and g.KW == 1 and g.G == 1 and g.ph == 0 and g.pw == 0


def _unstrided(g):
    """Whether the output pixels are all of x's (stride 1): x's rows are then the GEMM
    operand as they are."""
    return g.sh == 1 and g.sw == 1 and g.OH == g.H and g.OW == g.W


def _tiles(g, n0, n1, budget, it):
    return common.tiles(n0, n1, (g.C + g.O) * g.L * it, budget)


def _subsampled(g, xt, buf):
    """The tile's strided pixels ``(b, C, L)``: a view when stride is 1, else copied
    into ``buf``."""
    b = xt.shape[0]
    if _unstrided(g):
        return xt.reshape(b, g.C, g.L)
    xs = buf[:b]
    np.copyto(xs.reshape(b, g.C, g.OH, g.OW), xt[:, :, : g.OH * g.sh : g.sh, : g.OW * g.sw : g.sw])
    return xs


def pointwise_forward(g, x, weight, bias, activation, slope, y, n0, n1, budget):
    """``y[n0:n1] = act(W @ xs + b)``, tile by tile, in place in y."""
    bmax, tiles = _tiles(g, n0, n1, budget, x.itemsize)
    buf = np.empty((bmax, g.C, g.L), dtype=x.dtype)
    w2 = weight.reshape(g.O, g.C)
    bias3 = None if bias is None else bias.reshape(1, g.O, 1)
    for a, e in tiles:
        yt = y[a:e].reshape(e - a, g.O, g.L)
        np.matmul(w2, _subsampled(g, x[a:e], buf), out=yt)
        if bias3 is not None:
            np.add(yt, bias3, out=yt)
        common.activate(np, yt, activation, slope)


def pointwise_backward(g, gy_all, x, weight, y, activation, slope, needs, gx_all, n0, n1, budget):
    """grad_x rows of ``[n0, n1)`` written in place; returns that range's (grad_w, grad_b)."""
    dt = x.dtype
    bmax, tiles = _tiles(g, n0, n1, budget, x.itemsize)
    w2 = weight.reshape(g.O, g.C)
    wt = np.ascontiguousarray(w2.T)
    buf = np.empty((bmax, g.C, g.L), dtype=dt) if needs[1] else None
    work = np.empty((bmax, g.O, g.OH, g.OW), dtype=dt) if activation else None
    gw = np.zeros((g.O, g.C), dtype=dt) if needs[1] else None
    gb = np.zeros((g.O,), dtype=dt) if needs[2] else None
    direct = _unstrided(g)
    gxs = None if direct or not needs[0] else np.empty((bmax, g.C, g.L), dtype=dt)
    for a, e in tiles:
        b = e - a
        gm = common.masked_grad(np, gy_all[a:e], None if y is None else y[a:e], activation, slope,
                                None if work is None else work[:b])
        gm3 = gm.reshape(b, g.O, g.L)
        if needs[2]:
            gb += common.channel_sums(np, gm3)
        if needs[1]:
            xs = _subsampled(g, x[a:e], buf)
            gw += np.matmul(gm3, xs.transpose(0, 2, 1)).sum(axis=0)
        if needs[0]:
            gxt = gx_all[a:e]
            if direct:
                np.matmul(wt, gm3, out=gxt.reshape(b, g.C, g.L))
            else:
                np.matmul(wt, gm3, out=gxs[:b])
                gxt[...] = 0
                gxt[:, :, : g.OH * g.sh : g.sh, : g.OW * g.sw : g.sw] = gxs[:b].reshape(b, g.C, g.OH, g.OW)
    return (None if gw is None else gw.reshape(g.O, g.C, 1, 1)), gb
