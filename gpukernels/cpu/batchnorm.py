"""The numpy backend's batch norm over every axis but the channel axis 1: NumPy passes,
or numba's compiled kernels where installed (below).

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
Row sums over L run in x's dtype (on NumPy a GEMV of the rows with ones for the sum, a
BLAS dot per row for the products: SIMD accumulators over at most a few thousand
values) and the row results are added in float64, so float32 sums keep ~1e-8
relative error. The variance ``sum(x^2)/n - mean^2`` then loses a factor
``1 + mean^2/var`` to cancellation (measured in float32: 2e-7 relative at |mean| = 3
std, 2e-5 at 30 std). So when |mean| > SHIFT_RATIO * std for some channel, the sums
are redone on ``t = x - shift`` (the mean rounded to x's dtype, written into y: the
"shifted sums", mean = shift + sum(t)/n, var = sum(t^2)/n - (sum(t)/n)^2, ~1e-8
again) and y is formed from t in place. The backward's ``sum(g x) - mean sum(g)``
(error ~eps |mean| / std relative) likewise goes through ``t = x - mean``, written
into dx's buffer, past that ratio.

Memory traffic (S = bytes of x)
-------------------------------
NumPy has no fused multiply-add, so each affine map is two passes:
  training forward  sum(x), sum(x^2) | y = a x, y += c            4 passes
  eval forward      y = a x, y += c                                2 passes
  training backward sum(g), sum(g x) | d = k x, d += g, d += k0, d *= a   6 passes
  eval backward     [sum(g), sum(g x)] | dx = a g                  1-3 passes
The elementwise passes work sub-blocks of BLOCK_BYTES (one thread) or
THREADED_BLOCK_BYTES, so a sub-block's later passes find it in L2; the reductions
run over whole arrays (the GEMV is fastest over many rows). Memory then sees ~3 S /
2 S / 5 S / 2 S, plus the write-allocate read of each fresh output, and the rest is
L2 time (NumPy: ~0.17 ns an element a pass). This VM moves ~30 GB/s (read + write
counted) per core between L3 and a core, so (32, 128, 16, 16) float32 (S = 4.2 MB)
needs ~0.4 / 0.3 / 0.7 ms on one core; measured 0.73-0.8 / - / 1.1-1.2 ms.

Compiled kernels (numba, where installed: ``_jit``)
---------------------------------------------------
Float32 / float64 C-contiguous NumPy calls run ``_jit_kernels`` instead of the passes
above: training forward one read of x for float64 sums of ``x - x[0, c, 0]`` (the
shift makes the cancellation above harmless, so there is no second, shifted read),
then one pass ``y = max(a (x - m) + c', 0)``: 3 S. Backward one read of g, x (and the
relu's saved y, ``y=``, masking g in the same read) for sum(gm) and sum(gm (x - mean)),
then one pass for dx: 5 S, 7 S with y, against 8 S for a ReLU backward pass then the
NumPy passes. Same pieces on the same threads. Measured, two threads, fwd + bwd
(``benchmarks.run --only batchnorm``, ms, compiled / NumPy passes / torch 2.13):
(32, 64, 32, 32) 2.25 / 4.59 / 4.45-4.64 (18.7 against 9.1 GB/s), (32, 128, 16, 16)
1.16 / 2.93 / 1.76-2.17, (32, 256, 8, 8) 0.66 / 1.42 / 0.93-0.98; a ResNet-8 b128
step, median of 24 interleaved, 170 -> 155 and 174 -> 156 ms.

Threads, sub-blocks and CuPy
----------------------------
Arrays of THREADS_FROM_BYTES and more go through ``_parallel.run_pieces`` (two
threads); smaller ones stay on the calling thread. BLAS is held to one thread in the
reductions either way (``_parallel.blas_single``): its threads beside ours made the
GEMVs 12x slower, and after a call of their own they spin on a core for ~0.1 s. On
this VM a hand-off between Python threads costs 50-70 us and two threads over
L3-resident data each run at ~60% of one's speed, so below ~4 MiB the second thread
never paid (measurements at THREADS_FROM_BYTES). A gufunc such as vecdot
only releases the GIL past 500 outer iterations (``_split_rows``). Per-channel
coefficients are broadcast as contiguous (C, L) rows, made in one copy per call: a
``(b, C, L) op (C, L)`` ufunc runs ~1.5x faster than one against a (C, 1) column. The
outputs are returned as allocated, never as reshaped views (autograd copies a view
before it becomes a ``.grad``). CuPy runs the same code on the calling thread
(einsum for the row dots).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from . import _jit, _parallel
from .activation import relu_backward

#: |mean| / std above which the one-read sums would cancel: shifted sums instead.
SHIFT_RATIO = 4.0


def _view(x):
    """x as (N, C, L) with L the flattened spatial size (1 for (N, C) inputs)."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _rows(v, x3, xp, *more):
    """Per-channel values ``v`` (C,) as a contiguous (C, L) array of x's dtype; with
    ``more`` values, a tuple of such arrays, filled by one copy into one (k, C, L) block
    (``broadcast_to`` + ``ascontiguousarray`` per row array costs ~10 us of Python)."""
    c, l = x3.shape[1:]
    if not more:
        return xp.ascontiguousarray(xp.broadcast_to(v.astype(x3.dtype)[:, None], (c, l)))
    values = (v,) + more
    out = xp.empty((len(values), c, l), dtype=x3.dtype)
    xp.copyto(out, xp.stack(values).astype(x3.dtype)[:, :, None])
    return tuple(out)


#: Bytes of x per sub-block of the elementwise passes on one thread: the passes work a
#: sub-block at a time, so the later passes over it find their operands (two or three
#: arrays and the coefficient rows) in L2.
BLOCK_BYTES = 256 << 10
#: The same on two threads: larger, since every NumPy call hands the GIL over, and a
#: hand-off the other thread waits for costs tens of us here (dx at (32, 64, 32, 32)
#: float32 on two threads: 1.40 ms in 256 KiB sub-blocks, 1.01-1.13 ms in 1 MiB ones).
THREADED_BLOCK_BYTES = 1 << 20
#: Arrays from which batch norm's passes run on two threads (``_parallel.run_pieces``).
#: Below it one thread (with BLAS's own threads in the sums' GEMV) is as fast or faster
#: on the 2-vCPU VM: a hand-off to the pool thread and back costs ~100 us (futex
#: wake-ups of an idle vCPU, 50-70 us each), and two threads over L3-resident arrays
#: each run at ~60% of one's speed. Measured, float32, dx: (32, 256, 8, 8) (2 MiB)
#: 0.42-0.44 ms threaded against 0.37-0.38 on one thread, (32, 64, 32, 32) (8 MiB)
#: 1.32-1.38 against 1.50-1.57; (32, 128, 16, 16) (4 MiB) 0.76-0.78 against 0.76 then,
#: and forward + backward through autograd 1.40 / 1.53 ms (min / median of 15)
#: against 1.68 / 1.89 since (2 MiB: 0.86 / 1.08 against 0.84 / 0.88, still one thread).
THREADS_FROM_BYTES = 4 << 20


def _blocks(n0, n1, x3, size=None):
    """Sub-blocks of images ``[n0, n1)`` of about ``size`` (BLOCK_BYTES) bytes each."""
    per = max(1, (size or BLOCK_BYTES) // max(1, x3[:1].nbytes))
    return [(a, min(a + per, n1)) for a in range(n0, n1, per)]


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
    """float64 (C,) sums of a3 (b, C, L): rows summed in a3's dtype, rows added in
    float64. On NumPy a GEMV of the (b C, L) rows with ones: BLAS streams it at memory
    speed, 3-4x faster than a BLAS dot per row ((32, 128, 256) float32: 50 us against
    150 us); einsum rows for short rows. Callers hold BLAS to one thread (``_pair``)."""
    b, c, l = a3.shape
    if xp is np and l >= 16 and a3.flags.c_contiguous:
        return (a3.reshape(b * c, l) @ np.ones(l, dtype=a3.dtype)).reshape(b, c).sum(0, dtype=np.float64)
    if xp is np and l >= 16:
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

    with _parallel.blas_single:  # see _pair
        parts = _parallel.run_pieces(b3, work, 2 if shift is None else 3)
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def _f64(v, xp):
    return None if v is None else v.astype(xp.float64)


def _stats(s1, s2, count, shift, xp):
    """float64 (mean, biased var) from the sums of t = x - shift (shift None: of x)."""
    d = s1 / count
    if shift is None:
        return d, s2 / count - d * d
    return shift.astype(xp.float64) + d, s2 / count - d * d


def _update_running(running_mean, running_var, mean, var, momentum, count):
    """PyTorch's rule, in place: towards the batch mean and the UNBIASED variance."""
    running_mean *= 1 - momentum
    running_mean += (momentum * mean).astype(running_mean.dtype)
    running_var *= 1 - momentum
    running_var += (momentum * var * (count / max(count - 1, 1))).astype(running_var.dtype)


def _threaded(x3):
    """Whether batch norm's passes over ``x3`` go through ``_parallel``'s threaded piece
    driver: from THREADS_FROM_BYTES on, or at any size under the knob ``cpu_threads``
    = "forced" (never under "serial")."""
    min_bytes = _parallel.policy()[1]
    return min_bytes == 0 or (x3.nbytes >= THREADS_FROM_BYTES and min_bytes != float("inf"))


def _pair(a3, b3, xp):
    """float64 per-channel (sum(a), sum(a * b)): whole arrays on the calling thread, or
    by pieces on two threads (``_reduce``); BLAS (``_sums``' GEMV) held to one thread
    either way (``_parallel.blas_single``): BLAS's spinning threads beside ours made the
    pieces' GEMVs 12x slower ((32, 64, 32, 32) float32: 7.9 ms against 0.65 ms on one
    thread), and after a call on its own threads they keep a core busy for ~0.1 s."""
    with _parallel.blas_single:
        if xp is np and _threaded(a3):
            return _reduce(a3, b3, None, None, xp)
        return _sums(a3, xp), _dots(a3, b3, xp)


def _passes(x3, block, sweeps):
    """``block(b0, b1)`` over sub-blocks of ~BLOCK_BYTES of the images of ``x3``: on the
    calling thread, or within the pieces of ``_parallel.run_pieces`` (``sweeps``: its
    NumPy operations per sub-block) when ``_threaded``."""

    def work(n0, n1, size=THREADED_BLOCK_BYTES):
        for b0, b1 in _blocks(n0, n1, x3, size):
            block(b0, b1)

    if isinstance(x3, np.ndarray) and _threaded(x3):
        _parallel.run_pieces(x3, work, sweeps)
    else:
        work(0, x3.shape[0], BLOCK_BYTES)


def _activation_arg(activation):
    """True for "relu", False for None; anything else is refused."""
    if activation not in (None, "relu"):
        raise ValueError(f"batch_norm: activation must be None or 'relu', got {activation!r}")
    return activation == "relu"


def batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps, activation=None):
    """Returns (y, mean, inv_std); mean/inv_std are what normalised x (saved for backward).
    Updates running_mean/var IN PLACE when training. ``activation="relu"``: y = max(a x +
    c, 0), the max one more operation on each sub-block while it is in L2, instead of a
    ReLU pass over the whole of y (reads y, writes a new array)."""
    xp = get_array_module(x)
    x3 = _view(x)
    dt = x.dtype
    y = xp.empty(x.shape, dtype=dt)  # returned as allocated: a view would be copied by
    y3 = _view(y)  # autograd wherever it became a .grad (its base is held elsewhere)
    shift = None
    jit = _jit_kernels(x3) if x3.size else None
    if training:
        count = x3.shape[0] * x3.shape[2]
        if jit is not None:  # sums of x - (each channel's first value), in float64
            first = x3[0, :, 0].astype(np.float64)
            mean, var = _stats(*_jit_sums(x3, lambda a, b, out: jit.channel_moments(x3[a:b], first, out)),
                               count, first, xp)
        else:
            mean, var = _stats(*_pair(x3, x3, xp), count, None, xp)
        if jit is None and bool((mean * mean > SHIFT_RATIO**2 * var).any()):
            # Cancellation (see the module docstring): shifted sums of t = x - mean into y
            shift = mean.astype(dt)
            mean, var = _stats(*_reduce(None, x3, shift, y3, xp), count, shift, xp)
        var = xp.maximum(var, 0)
        if running_mean is not None:
            _update_running(running_mean, running_var, mean, var, momentum, count)
    else:
        mean, var = _f64(running_mean, xp), _f64(running_var, xp)
    inv_std = 1.0 / xp.sqrt(var + eps)
    a = inv_std if weight is None else inv_std * _f64(weight, xp)
    # y = a (x - mean) + beta; from the shifted t = x - shift (already in y) when present
    c = -a * (mean if shift is None else mean - shift.astype(xp.float64))
    if bias is not None:
        c = c + _f64(bias, xp)
    relu = _activation_arg(activation)
    if jit is not None:  # y = max(a (x - m) + (c + a m), 0) in one pass, m = mean rounded to x's dtype
        md = mean.astype(dt)
        ad, cd = a.astype(dt), (c + a * md.astype(np.float64)).astype(dt)
        _jit_pieces(x3, lambda b0, b1: jit.affine(x3[b0:b1], md, ad, cd, relu, y3[b0:b1]))
        return y, md, inv_std.astype(dt)
    if relu:  # zeros as rows too: maximum with a scalar 0 runs NumPy's slower scalar loop
        a_rows, c_rows, zero_rows = _rows(a, x3, xp, c, xp.zeros_like(a))
    else:
        a_rows, c_rows = _rows(a, x3, xp, c)
    src = x3 if shift is None else y3

    def affine(b0, b1):  # y = a src + c: the add (and the max) find the sub-block in L2
        yb = y3[b0:b1]
        xp.multiply(src[b0:b1], a_rows, out=yb)
        xp.add(yb, c_rows, out=yb)
        if relu:
            xp.maximum(yb, zero_rows, out=yb)

    _passes(x3, affine, 3 if relu else 2)
    return y, mean.astype(dt), inv_std.astype(dt)


def batch_norm_backward(grad_y, x, mean, inv_std, weight, training, needs=(True, True, True), y=None):
    """Returns (dx, dgamma, dbeta); entries are None where ``needs`` says so. ``y``: the
    forward's output when it applied ``activation="relu"``: grad_y is then first masked
    by ``y > 0`` (in the same passes where the compiled kernels run)."""
    xp = get_array_module(grad_y)
    g3, x3 = _view(grad_y), _view(x)
    dt = grad_y.dtype
    mean64, inv64 = _f64(mean, xp), _f64(inv_std, xp)
    a = inv64 if weight is None else inv64 * _f64(weight, xp)
    jit = _jit_kernels(g3, x3, *(() if y is None else (_view(y),)))
    if jit is not None and (training or needs[1] or needs[2]):
        return _backward_jit(jit, g3, x3, None if y is None else _view(y), mean64, inv64, a, training, needs,
                             grad_y.shape)
    if y is not None:
        grad_y = relu_backward(grad_y, y)
        g3 = _view(grad_y)
    # dx is returned as allocated, not as a reshaped view: autograd copies a gradient
    # that is a view (its base could be shared) before making it a leaf's .grad, one
    # more pass over dx (0.6 ms at (32, 64, 32, 32) float32)
    dx = xp.empty(grad_y.shape, dtype=dt) if needs[0] else None
    dx3 = None if dx is None else _view(dx)
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
            dbeta, sgx = _pair(g3, x3, xp)
            sgx = sgx - mean64 * dbeta
            shift = 0.0
        dgamma = inv64 * sgx
    if needs[0]:
        if training:
            count = g3.shape[0] * g3.shape[2]
            k = -inv64 * dgamma / count
            a_rows, k_rows, k0_rows = _rows(a, g3, xp, k, -dbeta / count - k * (mean64 - shift))

            def block(b0, b1):  # dx = a (g + k src + k0), src = x or x - mean
                d = dx3[b0:b1]
                xp.multiply(src[b0:b1], k_rows, out=d)
                xp.add(d, g3[b0:b1], out=d)
                xp.add(d, k0_rows, out=d)
                xp.multiply(d, a_rows, out=d)
        else:
            a_rows = _rows(a, g3, xp)

            def block(b0, b1):
                xp.multiply(g3[b0:b1], a_rows, out=dx3[b0:b1])

        _passes(g3, block, 4 if training else 1)
    return (dx,
            dgamma.astype(dt) if needs[1] else None,
            dbeta.astype(dt) if needs[2] else None)


# ------------------------------------------------------------------ compiled kernels

def _jit_kernels(*arrays):
    """``_jit``'s kernels when they can serve these arrays (NumPy, C-contiguous, one dtype
    of float32 / float64, numba enabled), else None (the NumPy passes above)."""
    if not all(isinstance(v, np.ndarray) for v in arrays):
        return None
    dt = arrays[0].dtype
    if dt not in (np.float32, np.float64) or any(v.dtype != dt or not v.flags.c_contiguous for v in arrays):
        return None
    return _jit.kernels()


def _jit_pieces(x3, work):
    """``work(n0, n1)`` over the images of ``x3``: by pieces on two threads when
    ``_threaded`` (``_parallel.run_pieces``), else one call; the results in order."""
    if _threaded(x3):
        return _parallel.run_pieces(x3, work, 2)
    return [work(0, x3.shape[0])]


def _jit_sums(x3, kernel):
    """float64 ``(first, second)`` (C,) sums from ``kernel(n0, n1, out)``, which adds a
    piece's two sums into ``out`` (2, C), over the pieces of ``_jit_pieces``."""
    c = x3.shape[1]

    def work(n0, n1):
        out = np.zeros((2, c))
        kernel(n0, n1, out)
        return out

    total = sum(_jit_pieces(x3, work))
    return total[0], total[1]


def _backward_jit(jit, g3, x3, y3, mean64, inv64, a, training, needs, shape):
    """``batch_norm_backward`` by the compiled kernels: one pass for dbeta = sum(gm) and
    sum(gm (x - mean)) (gm: g masked by ``y3 > 0`` when given), one for dx (training)."""
    dt = g3.dtype
    relu = y3 is not None
    yy = y3 if relu else g3  # not read without relu: one compiled signature either way
    dbeta, sgx = _jit_sums(g3, lambda n0, n1, out: jit.grad_moments(
        g3[n0:n1], x3[n0:n1], yy[n0:n1], relu, mean64, out))
    dgamma = inv64 * sgx
    dx = None
    if needs[0]:
        dx = np.empty(shape, dtype=dt)
        dx3 = _view(dx)
        if training:
            count = g3.shape[0] * g3.shape[2]
            k, k0 = -inv64 * dgamma / count, -dbeta / count
        else:
            k, k0 = np.zeros_like(a), np.zeros_like(a)
        md, ad, kd, k0d = (v.astype(dt) for v in (mean64, a, k, k0))
        _jit_pieces(g3, lambda n0, n1: jit.grad_input(
            g3[n0:n1], x3[n0:n1], yy[n0:n1], relu, md, ad, kd, k0d, dx3[n0:n1]))
    return (dx,
            dgamma.astype(dt) if needs[1] else None,
            dbeta.astype(dt) if needs[2] else None)
