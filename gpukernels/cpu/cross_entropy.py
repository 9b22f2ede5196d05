"""The ``numpy`` backend's softmax, log-softmax and softmax cross-entropy (formulas:
``gpukernels.reference.cross_entropy``, log-sum-exp form).

Cross-entropy computes the loss AND its gradient in the forward (Liger-Kernel style):
the gradient w.r.t. the logits is (softmax - q) * scale, q = (1 - eps) onehot + eps / C,
ready the moment the loss is known, so the backward only scales it.

Memory traffic (S = bytes of the (N, C) logits)
-----------------------------------------------
The minimum: the forward reads the logits and writes the gradient (2 S), the backward
reads that and writes the scaled copy autograd hands out (2 S). Worked on whole arrays,
the forward's five passes (max, shift, exp, sum, scale) move ~9 S; here each thread
works its rows in blocks of ~ROW_BLOCK_BYTES: the max brings a block of logits in, and
the shift (into the gradient's block), the exp in place, the row sums and the scaling
find it in L2 or close, so memory sees ~2 S and the rest is compute (NumPy's float32
exp: ~0.4 ns an element on one core, the largest single cost; all five: ~1 ns).
B=8192 C=1000 float32 (S = 32.8 MB): 131 MB in all, 5.3 ms at the 24.8 GB/s copy
ceiling; measured ~7 ms forward + ~1.5-3 ms backward on two cores (the two fresh
gradient arrays are page-faulted in on first write: ~3 ms each on one core, split
across both here). Blocks are ~1 MiB, not L2-sized halves of it: every NumPy call
hands the GIL over once, and on this 2-vCPU VM a handover the other thread waits for
costs tens of microseconds, so 256 KiB blocks ran the forward 25% slower on two threads.

Both directions cut the rows into pieces across both cores (``_parallel.run_pieces``);
a call of one block stays on the calling thread. Where no row is ignored (every target
a class index, the common case) the per-row factor is one scalar and no (N,) mask is
formed; short rows (C < SHORT_ROW) take their maxima from a transposed copy; the column
operations run with NumPy's buffer at one row (``_row_chunks``).

Exactness: every row goes through the operations of the former whole-array form, in
its order (row max, z - m, exp, pairwise row sum, log, scale), and a row's results do
not depend on which rows share its block or thread, so the results are those of the
whole-array form bit for bit (tests/cpu/test_cross_entropy_fast.py checks threads and
blocks against one serial block). Softmax and log-softmax are the reference's.
"""

from __future__ import annotations

import numpy as np

from ..reference import cross_entropy as reference_ce
from ..reference.cross_entropy import (  # noqa: F401 - already the fastest NumPy form
    log_softmax_backward,
    log_softmax_forward,
    softmax_backward,
    softmax_forward,
)
from . import _parallel

__all__ = ["softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
           "cross_entropy_forward", "cross_entropy_backward"]

#: Bytes of logits per block of rows (the module docstring says why 1 MiB: the block and
#: its gradient mostly stay in L2, 2 MiB a core, and the GIL changes hands rarely enough).
ROW_BLOCK_BYTES = 1 << 20


#: Rows shorter than this take their max from a transposed copy (see ``_row_max``).
SHORT_ROW = 64


def _row_max(z):
    """The (rows,) maxima of a block. NumPy reduces short rows one at a time (~4 us for
    64 rows of 10, 0.5 ms for 8192), but the transposed copy's column maxima run as
    elementwise maximum over whole rows of the copy (8192 x 10: 40 us with the copy).
    Maxima do not depend on the order (NaN propagates either way; a tie of -0 and +0
    changes no z - m, exp or sum below)."""
    if z.shape[1] < SHORT_ROW:
        return np.maximum.reduce(np.ascontiguousarray(z.T), axis=0)
    return np.maximum.reduce(z, axis=1)


class _row_chunks:
    """NumPy's iterator buffer (this thread's, a context variable) at about one row of C
    elements for the ``with`` block. A ``(rows, C) op (rows, 1)`` ufunc (the shift by the
    row max, the scaling by 1 / row sum) otherwise gathers chunks of the default 8192
    elements across rows and copies the broadcast column into a buffer for each:
    measured 2-3x slower than the same operation with a scalar (64 x 1000 float32: 21 us
    against 7-9 us). With chunks of at most a row the column stays a stride-0 operand
    and the ufunc runs its scalar SIMD loop. The buffer size changes no result: the
    column operations are elementwise, and the row reductions inside the block (max,
    sum, mean of contiguous rows, no casting) run unbuffered (tests/cpu check the
    results bit for bit against the whole-array form). Short rows (C < 256) keep the default: their
    chunks would be too short to pay."""

    def __init__(self, c):
        self.size = (c // 16) * 16 if c >= 256 else None  # NumPy wants a multiple of 16

    def __enter__(self):
        self.saved = np.setbufsize(self.size) if self.size else None

    def __exit__(self, *exc):
        if self.saved is not None:
            np.setbufsize(self.saved)


def _scale(target, valid_all, ignore_index, reduction, n, c, dtype):
    """``(valid, count, scale)``: the rows not ignored (None: all of them), how many, and
    the gradient's per-row factor ``[valid] (/ count for "mean")``, a scalar of ``dtype``
    when no row is ignored (the common case: no (N,) mask arrays at all). Raises the
    reference's ValueError for the first target neither a class index nor ignored."""
    if valid_all:
        count = np.int64(n)
        one = dtype.type(1)
        return None, count, one / dtype.type(count) if reduction == "mean" else one
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= c))
    if bool(bad.any()):  # a negative index would silently pick another class
        first = int(bad.nonzero()[0][0])
        raise ValueError(f"cross_entropy: target[{first}] = {int(target[first])} is not a class "
                         f"index in [0, {c}) nor ignore_index={ignore_index}")
    scale = valid.astype(dtype)
    count = valid.sum()
    if reduction == "mean":
        # every row ignored: the loss is 0/0 = nan but the gradient stays 0, as in PyTorch
        scale /= np.maximum(count, 1).astype(dtype)
    return valid, count, scale


def cross_entropy_forward(logits, target, reduction, ignore_index, label_smoothing):
    """Loss and d(loss)/d(logits) for class-index targets: the arguments, results and
    errors of ``gpukernels.reference.cross_entropy.cross_entropy_forward``."""
    if type(logits) is not np.ndarray or not logits.size:  # CuPy, or nothing to work:
        return reference_ce.cross_entropy_forward(logits, target, reduction, ignore_index, label_smoothing)
    n, c = logits.shape
    dtype = logits.dtype
    # every target a class index and none ignored: two reductions over the (N,) targets
    # (ufunc reductions called directly: the ndarray methods add ~0.3 us of Python each)
    valid_all = (not 0 <= ignore_index < c and 0 <= int(np.minimum.reduce(target))
                 and int(np.maximum.reduce(target)) < c)
    valid, count, scale = _scale(target, valid_all, ignore_index, reduction, n, c, dtype)
    safe_target = target if valid is None else np.where(valid, target, 0)
    z2 = np.ascontiguousarray(logits)
    grad = np.empty_like(z2)
    per_row = np.empty(n, dtype=dtype)
    on_target = dtype.type(1 - label_smoothing)
    smooth = dtype.type(label_smoothing / c) if label_smoothing else None
    rows_per_block = max(1, ROW_BLOCK_BYTES // (c * z2.itemsize))

    def block(a, b):
        """Rows [a, b): five passes, the block in L2 after the first."""
        z, g = z2[a:b], grad[a:b]
        at = np.arange(0, (b - a) * c, c) + safe_target[a:b]  # the targets' flat offsets in the block
        g_flat = g.reshape(-1)
        np.subtract(z, _row_max(z)[:, None], out=g)  # z - m <= 0: exp cannot overflow
        shifted_target = g_flat[at]
        shifted_mean = g.mean(axis=1) if label_smoothing else None
        np.exp(g, out=g)
        total = np.add.reduce(g, axis=1)
        lse = np.log(total)  # log sum exp(z - m)
        loss = np.subtract(lse, shifted_target, out=per_row[a:b])  # -log p[target]
        if label_smoothing:
            loss[...] = (1 - label_smoothing) * loss + label_smoothing * (lse - shifted_mean)
        s = scale if valid is None else scale[a:b]
        np.multiply(g, np.divide(s, total, out=total)[:, None], out=g)
        g_flat[at] -= on_target * s
        if label_smoothing:
            g -= smooth * s if valid is None else (smooth * s)[:, None]

    def work(n0, n1):
        with _row_chunks(c):
            for a in range(n0, n1, rows_per_block):
                block(a, min(a + rows_per_block, n1))

    if n <= rows_per_block and _parallel.policy()[1]:  # one block (not forced onto threads)
        block(0, n)
    else:
        _parallel.run_pieces(z2, work, 5)
    if valid is not None:
        per_row = np.where(valid, per_row, 0).astype(dtype)
    if reduction == "none":
        return per_row, grad
    if reduction == "sum":
        return per_row.sum(), grad
    if count:  # float32 sum / int64 count: a float64 division rounded once to the dtype
        return dtype.type(float(np.add.reduce(per_row)) / int(count)), grad
    with np.errstate(divide="ignore", invalid="ignore"):  # every row ignored: 0/0 = nan
        return (per_row.sum() / count).astype(dtype), grad


def cross_entropy_backward(grad_loss, grad_logits, reduction):
    """Scale the gradient saved by the forward by the upstream gradient (per row for
    "none"): ``grad_logits * grad_loss`` as the reference, into a fresh array written
    (and page-faulted) by both cores, one read and one write of ``grad_logits``."""
    if type(grad_logits) is not np.ndarray or grad_logits.ndim != 2:
        return reference_ce.cross_entropy_backward(grad_loss, grad_logits, reduction)
    factor = grad_loss[:, None] if reduction == "none" else grad_loss
    if grad_logits.nbytes < _parallel.policy()[1]:  # too small for a second thread
        return grad_logits * factor
    out = np.empty(grad_logits.shape, dtype=np.result_type(grad_logits, factor))

    def work(n0, n1):
        f = factor[n0:n1] if reduction == "none" else factor
        np.multiply(grad_logits[n0:n1], f, out=out[n0:n1])

    _parallel.run_pieces(grad_logits, work, 1)
    return out
