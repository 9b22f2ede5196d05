"""NumPy reference: batch normalisation over every axis but the channel axis 1.

Training: the batch mean and biased variance normalise x; the running statistics move
by ``momentum`` towards the batch mean and the UNBIASED variance (PyTorch's rule).
Eval: the running statistics normalise x.

Formulas (per channel; x viewed as (N, C, L), L = H*W, n = N*L values per channel)
---------------------------------------------------------------------------------
Both directions are a per-channel affine map of whole arrays, so nothing but x, mean
and inv_std is saved:
  forward   y = a x + c,  a = gamma * inv_std,  c = beta - a * mean
  backward  dbeta = sum(g),  dgamma = inv_std * sum(g (x - mean))
            training: dx = a (g + k x + k0),  k = -inv_std dgamma / n,
                                              k0 = -dbeta / n - k mean
            eval:     dx = a g
The statistics and coefficients are formed in float64 from float64 partial sums and
rounded once to x's dtype; the affine form ``a x + c`` (PyTorch's CPU kernel uses it
too) errs by a few ulps of ``a |x|``, the order of the mean's own rounding.

Statistics: sums of x and x^2 in one read, shifted when that would cancel
----------------------------------------------------------------------------
Row sums over L run in x's dtype (on NumPy a BLAS dot per row, with ones for the sum:
SIMD accumulators over at most a few hundred values) and the row results are added in
float64, so float32 sums keep ~1e-8 relative error. The variance
``sum(x^2)/n - mean^2`` then loses a factor ``1 + mean^2/var`` to cancellation
(measured in float32: 2e-7 relative at |mean| = 3 std, 2e-5 at 30 std). So when
|mean| > SHIFT_RATIO * std for some channel, the sums are redone on ``t = x - shift``
(the mean rounded to x's dtype, written into y: the "shifted sums", mean = shift +
sum(t)/n, var = sum(t^2)/n - (sum(t)/n)^2, ~1e-8 again) and y is formed from t in
place. The backward's ``sum(g x) - mean sum(g)`` (error ~eps |mean| / std relative)
likewise goes through ``t = x - mean``, written into dx's buffer, past that ratio.

Memory traffic (S = bytes of x)
-------------------------------
NumPy has no fused multiply-add, so each affine map is two passes:
  training forward  sum(x), sum(x^2) | y = a x, y += c            4 passes
  eval forward      y = a x, y += c                                2 passes
  training backward sum(g), sum(g x) | d = k x, d += g, d += k0, d *= a   6 passes
  eval backward     [sum(g), sum(g x)] | dx = a g                  1-3 passes
Large arrays are worked in pieces of ~1-2 MiB (below), so a piece's second and later
passes find it in L2: memory sees 3 S / 2 S / 5 S / 2 S, what a fused kernel needs,
and the extra passes cost L2 time (~80 GB/s per core). This machine moves ~30 GB/s
(read + write counted) per core between L3 and a core and ~58 GB/s with both cores,
so (128, 16, 32, 32) float32 (S = 8.4 MB) needs at least ~0.43 / 0.29 / 0.72 ms on two
cores (0.85 / 0.57 / 1.42 on one).

Threads, pieces and CuPy
------------------------
Every whole-array pass goes through ``_parallel.run_pieces``, which cuts the batch into
pieces and, for large calls, works them on two threads (why threads, the ~100 us
hand-off and the shared lock: ``_parallel``'s module docstring). What is batch norm's
own: einsum's reductions barely run in parallel with another thread, vecdot with a
ones vector does; and a gufunc such as vecdot only releases the GIL past 500 outer
iterations (``_split_rows``). Per-channel coefficients are broadcast as contiguous
(C, L) rows: a ``(b, C, L) op (C, L)`` ufunc runs ~1.5x faster than one against a
(C, 1) column. CuPy runs the same code as one piece on the calling thread (einsum for
the row dots).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from . import _parallel

#: |mean| / std above which the one-read sums would cancel: shifted sums instead.
SHIFT_RATIO = 4.0


def _view(x):
    """x as (N, C, L) with L the flattened spatial size (1 for (N, C) inputs)."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _rows(v, x3, xp):
    """Per-channel values ``v`` (C,) as a contiguous (C, L) array of x's dtype."""
    c, l = x3.shape[1:]
    return xp.ascontiguousarray(xp.broadcast_to(v.astype(x3.dtype)[:, None], (c, l)))


def _split_rows(a3):
    """a3 (b, C, L) as (b, C, k, L/k), k a power of two making at least 512 rows of at
    least 64 values where L allows. NumPy releases the GIL in a gufunc such as vecdot
    only when its outer loop runs more than 500 times, and a 1 MiB piece of a 16-channel
    32x32 array is only 256 rows of 1024: without the split the other thread waits."""
    b, c, l = a3.shape
    k = 1
    while b * c * k < 512 and l % (2 * k) == 0 and l // (2 * k) >= 64:
        k *= 2
    return a3.reshape(b, c, k, l // k)


def _sums(a3, xp):
    """float64 (C,) sums of a3 (b, C, L): rows summed in a3's dtype (on NumPy a BLAS dot
    with ones per row: ~2x faster than a pairwise ``sum`` over short rows, and unlike
    einsum's reduction it runs in parallel with other threads), rows added in float64."""
    if xp is np and a3.shape[2] >= 16:
        a4 = _split_rows(a3)
        return np.vecdot(a4, np.ones(a4.shape[3], dtype=a4.dtype)).sum((0, 2), dtype=np.float64)
    return a3.sum(axis=2).sum(0, dtype=xp.float64)


def _dots(a3, b3, xp):
    """float64 (C,) sums of a3 * b3, likewise (a BLAS dot per row on NumPy; einsum for
    short rows, where a call per few-element row would dominate)."""
    if xp is np and a3.shape[2] >= 16:
        return np.vecdot(_split_rows(a3), _split_rows(b3)).sum((0, 2), dtype=np.float64)
    return xp.einsum("ncl,ncl->nc", a3, b3).sum(0, dtype=xp.float64)


def _reduce(a3, b3, shift, out, xp):
    """float64 per-channel (sum(a), sum(a * b)) over the batch, where ``a3`` is summed
    as is and ``b3`` is first shifted: ``b3 - shift`` is written to ``out`` and used
    (``shift`` None: ``b3`` itself). ``a3`` None stands for the shifted ``b3``."""
    shift_rows = None if shift is None else _rows(shift, b3, xp)

    def work(n0, n1):
        b = b3[n0:n1]
        if shift is not None:
            b = xp.subtract(b, shift_rows, out=out[n0:n1])
        a = b if a3 is None else a3[n0:n1]
        return _sums(a, xp), _dots(a, b, xp)

    parts = _parallel.run_pieces(b3, work, 2 if shift is None else 3)
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def _affine(src3, a, c, out3, xp):
    """out = a * src + c per channel (``out3`` may be ``src3``)."""
    a_rows, c_rows = _rows(a, src3, xp), _rows(c, src3, xp)

    def work(n0, n1):
        xp.multiply(src3[n0:n1], a_rows, out=out3[n0:n1])
        xp.add(out3[n0:n1], c_rows, out=out3[n0:n1])

    _parallel.run_pieces(src3, work, 2)
    return out3


def _f64(v, xp):
    return None if v is None else v.astype(xp.float64)


def batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """Returns (y, mean, inv_std); mean/inv_std are what normalised x (saved for backward).
    Updates running_mean/var IN PLACE when training."""
    xp = get_array_module(x)
    x3 = _view(x)
    dt = x.dtype
    y3 = xp.empty(x3.shape, dtype=dt)
    src, shift = x3, None
    if training:
        count = x3.shape[0] * x3.shape[2]
        s1, s2 = _reduce(None, x3, None, None, xp)
        mean = s1 / count
        var = s2 / count - mean * mean
        if bool((mean * mean > SHIFT_RATIO**2 * var).any()):
            # Cancellation (see the module docstring): shifted sums of t = x - mean into y.
            shift = mean.astype(dt)
            s1, s2 = _reduce(None, x3, shift, y3, xp)
            d = s1 / count
            mean = shift.astype(xp.float64) + d
            var = s2 / count - d * d
            src = y3
        var = xp.maximum(var, 0)
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += (momentum * mean).astype(running_mean.dtype)
            running_var *= 1 - momentum
            running_var += (momentum * var * (count / max(count - 1, 1))).astype(running_var.dtype)
    else:
        mean, var = _f64(running_mean, xp), _f64(running_var, xp)
    inv_std = 1.0 / xp.sqrt(var + eps)
    a = inv_std if weight is None else inv_std * _f64(weight, xp)
    # y = a (x - mean) + beta; from the shifted t = x - shift (already in y) when present.
    c = -a * (mean if shift is None else mean - shift.astype(xp.float64))
    if bias is not None:
        c = c + _f64(bias, xp)
    _affine(src, a, c, y3, xp)
    return y3.reshape(x.shape), mean.astype(dt), inv_std.astype(dt)


def batch_norm_backward(grad_y, x, mean, inv_std, weight, training, needs=(True, True, True)):
    """Returns (dx, dgamma, dbeta); entries are None where ``needs`` says so."""
    xp = get_array_module(grad_y)
    g3, x3 = _view(grad_y), _view(x)
    dt = grad_y.dtype
    mean64, inv64 = _f64(mean, xp), _f64(inv_std, xp)
    a = inv64 if weight is None else inv64 * _f64(weight, xp)
    dx3 = xp.empty(g3.shape, dtype=dt) if needs[0] else None
    dgamma = dbeta = None
    src = x3
    if needs[1] or needs[2] or (training and needs[0]):
        # sum(g (x - mean)) = sum(g x) - mean sum(g), unless that cancels: then from
        # t = x - mean (written into dx's buffer, reused below).
        if bool((xp.abs(mean64) * inv64 > SHIFT_RATIO).any()):
            buf = dx3 if dx3 is not None else xp.empty(g3.shape, dtype=dt)
            dbeta, sgx = _reduce(g3, x3, mean, buf, xp)
            src, shift = buf, mean64
        else:
            dbeta, sgx = _reduce(g3, x3, None, None, xp)
            sgx = sgx - mean64 * dbeta
            shift = 0.0
        dgamma = inv64 * sgx
    if needs[0]:
        a_rows = _rows(a, g3, xp)
        if training:
            count = g3.shape[0] * g3.shape[2]
            k = -inv64 * dgamma / count
            k_rows = _rows(k, g3, xp)
            k0_rows = _rows(-dbeta / count - k * (mean64 - shift), g3, xp)

            def work(n0, n1):  # dx = a (g + k src + k0), src = x or x - mean
                d = dx3[n0:n1]
                xp.multiply(src[n0:n1], k_rows, out=d)
                xp.add(d, g3[n0:n1], out=d)
                xp.add(d, k0_rows, out=d)
                xp.multiply(d, a_rows, out=d)
        else:

            def work(n0, n1):
                xp.multiply(g3[n0:n1], a_rows, out=dx3[n0:n1])

        _parallel.run_pieces(g3, work, 4 if training else 1)
    return (None if dx3 is None else dx3.reshape(grad_y.shape),
            dgamma.astype(dt) if needs[1] else None,
            dbeta.astype(dt) if needs[2] else None)
