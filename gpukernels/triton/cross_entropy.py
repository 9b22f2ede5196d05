"""Softmax, log-softmax and fused softmax cross-entropy in Triton (row kernels).

The reference (the oracle every kernel is tested against) is
``gpukernels.cpu.cross_entropy``: the same function names, arguments and return
conventions.

Formulas, per row z of C values (float32 math whatever the storage dtype):

    m = max_j z_j,  s = sum_j exp(z_j - m),  lse = m + log s          (log-sum-exp)
    softmax      y_j = exp(z_j - m) / s          dx_j = y_j (g_j - sum_k g_k y_k)
    log_softmax  y_j = z_j - m - log s           dx_j = g_j - exp(y_j) sum_k g_k
    cross-entropy, target t, smoothing eps, q = (1 - eps) onehot(t) + eps / C:
        loss = lse - (1 - eps) z_t - eps/C sum_j z_j     (PyTorch's definition)
             = log s - (1 - eps)(z_t - m) - eps (mean_j z_j - m)
        dloss/dz_j = (softmax_j - q_j) * w,  w = 1/count ("mean"), 1 ("sum", "none"),
                     w = 0 on rows whose target is ignore_index;
        count = number of rows whose target is not ignore_index.

exp never sees a positive argument (z - m <= 0), and the loss is formed from the
differences z_t - m, never from lse - z_t of two large numbers: logits of 1e4 neither
overflow nor lose the loss to cancellation.

Kernels and memory traffic (s = bytes per element of the storage dtype):

- ``_ce_count_kernel``: reads the N targets, adds the number of non-ignored rows into
  a 2-int32 device buffer with integer atomics (exact, order-independent) and records
  the first out-of-range target there. "mean" reads that count on the device, so the
  loss and its gradient need no host sync. 8N bytes (int64 targets).
- ``_ce_fwd_kernel``: one program per ROWS rows. Rows with C <= BLOCK are loaded ONCE
  into registers: max, sum of exp, loss and gradient from that one read. Wider rows use
  an online log-sum-exp (running max m, sum s <- s exp(m_old - m_new) + sum exp(z - m_new)
  at each BLOCK-wide chunk) in a first sweep, then a second sweep writes the gradient; that
  sweep re-reads the row from L2 (a 32768-class bf16 row is 64 KB). Reads N*C*s
  (ignored rows are not read at all), writes the gradient N*C*s and the per-row loss 4N.
  The gradient goes to a FRESH buffer, never into the logits (which may have other
  consumers). "sum"/"mean" then add the per-row losses (a deterministic NumPy/CuPy
  reduction over 4N bytes, divided by the device count for "mean").
- ``_ce_bwd_kernel``: dz = grad_logits * g[row], with g a scalar (stride 0) for
  "mean"/"sum" or an (N,) vector of any stride, a broadcast (stride 0) view included,
  for "none". Reads N*C*s, writes N*C*s into a fresh buffer (the saved gradient stays
  valid for a second backward with retain_graph).
- ``_softmax_fwd_kernel`` / ``_softmax_bwd_kernel`` (LOG selects log-softmax): the
  same one-read-for-short-rows / two-sweeps-for-long-rows scheme. Forward reads x and
  writes y (2 R*C*s); backward reads g and y and writes dx (3 R*C*s). ``dim`` is moved
  last and the input made contiguous by the launcher (a copy only when it is not
  already); the result is returned as a view with ``dim`` moved back.

Known traps avoided (each has a test in tests/triton/test_cross_entropy.py):
- the gradient is never written in place into the logits (fresh buffer);
- reduction="none" returns an (N,) loss and the per-row gradient, and its backward
  scales row n by g[n];
- bf16/fp16 gradients are computed in float32 and rounded once, at the store;
- row offsets become int64 (INT64) once a tensor, or the memory span of a strided
  view, reaches 2**31 elements; every stride and row index is widened first, with
  ``tl.cast`` rather than ``.to()``: Triton passes an int argument equal to 1 (a unit
  stride) as a compile-time constant, which has no ``.to``;
- the logits' row AND column strides are both honoured (any strides, stride 0 too),
  as are the target's and the upstream gradient's: a broadcast (stride 0) upstream
  gradient is read as one value per row, never as if it were contiguous;
- row indices are clamped (rows past N read row 0 and store nothing) and so is the
  target index (to [0, C)), so an invalid target can never read out of bounds; column
  offsets are masked, not clamped, so that the compiler still sees them contiguous;
- a row whose first chunk is all -inf (a masked vocabulary) does not produce
  exp(-inf - -inf) = NaN: the running max is replaced by 0 in the subtractions while
  it is -inf;
- a mask ``cols < C`` with C = 1000 would force one-element accesses: ALIGN (the largest
  power of two <= 16 dividing C and the row strides) lets the masks and row starts be
  proven ALIGN-aligned, so the loads and stores vectorise (16-byte accesses).

Targets: int32 or int64 (other integer dtypes are converted); out-of-range class
indices that are not ``ignore_index`` raise the ValueError of ``functional.cross_entropy``
naming the first one. That check reads 8 bytes back from the device (one host sync,
after every kernel of the call is queued); the knob ``check_targets=False`` (``gpukernels.knobs``) skips it, and the
kernels then write NaN loss and NaN gradient rows for such targets instead.

Tile configs ``(ROWS, BLOCK, num_warps, num_stages)``: the autotuner only tries the
configs with the smallest BLOCK >= C, or those with BLOCK >= WIDE_BLOCK when C exceeds
the widest BLOCK (16384: wider rows would spill registers in the one-read path), so one
config list serves 1 to 128k classes. Under the interpreter one fixed config.
"""

from __future__ import annotations

import math

import numpy as np
import triton
import triton.language as tl

from .. import backend, cuda_graph, knobs
from ..backend import get_array_module, kernel_arg
from ._common import Tuned, arg, check_float, dtype_name, from_float32, kernel_view, needs_int64, strides

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _rows(N, ROWS: tl.constexpr, INT64: tl.constexpr):
    """Row indices of this program, their mask, and the clamped indices used in address
    arithmetic (rows past N read row 0; their stores are masked off)."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < N
    return row_ok, tl.where(row_ok, rows, 0)


@triton.jit
def _below(offs, C, ALIGN: tl.constexpr):
    """offs < C for ALIGN | C, written so the compiler sees the mask constant over
    ALIGN-wide groups and vectorises the masked loads and stores (``offs < C`` with a C
    it cannot prove divisible, e.g. 1000, forces one element per access)."""
    return (offs // ALIGN) < (C // ALIGN)


@triton.jit
def _online_lse(m, s, x):
    """Fold a (ROWS, BLOCK) chunk into the running max ``m`` and sum ``s`` of exp(x - m):
    s <- s exp(m - m_new) + sum exp(x - m_new). While a row's max is still -inf it is
    replaced by 0 in the subtractions (no -inf - -inf = NaN); exp(-inf - m_new) = 0
    then rescales the empty sum."""
    m_new = tl.maximum(m, tl.max(x, axis=1))
    m_use = tl.where(m_new == -float("inf"), 0.0, m_new)
    s = s * tl.exp(m - m_use) + tl.sum(tl.exp(x - m_use[:, None]), axis=1)
    return m_new, s


@triton.jit
def _ce_count_kernel(t_ptr, info_ptr, N, C, st, ignore_index,
                     INT64: tl.constexpr, BLOCK: tl.constexpr):
    """info[0] += number of targets != ignore_index;
    info[1] = max(info[1], N - n) over rows n whose target is neither ignore_index nor in
    [0, C): so N - info[1] is the first bad row, and info[1] == 0 means none."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
        # tl.cast, not .to(): Triton passes an int argument equal to 1 as a constant
        st = tl.cast(st, tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    i = tl.where(ok, offs, 0)
    t = tl.load(t_ptr + i * st, mask=ok, other=ignore_index)
    valid = ok & (t != ignore_index)
    bad = valid & ((t < 0) | (t >= C))
    tl.atomic_add(info_ptr, tl.sum(valid.to(tl.int32), axis=0))
    tl.atomic_max(info_ptr + 1, tl.max(tl.where(bad, N - offs, 0), axis=0).to(tl.int32))


@triton.jit
def _ce_total_kernel(per_row_ptr, info_ptr, loss_ptr, N, MEAN: tl.constexpr, BLOCK: tl.constexpr):
    """ONE program: loss = sum of the N per-row losses (float32, in a fixed order: the
    same bits every run), divided by the count of non-ignored rows (info[0]) with MEAN
    (0/0 = NaN when every row is ignored, as PyTorch), stored in the loss's dtype. The
    reduction's tail in one launch instead of a CuPy sum, a division and a cast."""
    acc = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(per_row_ptr + offs, mask=offs < N, other=0.0)
    total = tl.sum(acc, axis=0)
    if MEAN:
        total = total / tl.load(info_ptr).to(tl.float32)
    tl.store(loss_ptr, total.to(loss_ptr.dtype.element_ty))


@triton.jit
def _ce_target(t_ptr, r, st, row_ok, ignore_index, C, INT64: tl.constexpr):
    """A row's target: valid (not ignored), bad (valid but outside [0, C)) and the
    clamped index tc (never an out-of-bounds gather)."""
    t = tl.load(t_ptr + r * st, mask=row_ok, other=ignore_index)
    valid = row_ok & (t != ignore_index)
    in_range = (t >= 0) & (t < C)
    bad = valid & (~in_range)  # the launcher raises on these unless the check_targets knob is off
    tc = tl.where(valid & in_range, t, 0)  # clamped: never an out-of-bounds gather
    if INT64:
        tc = tc.to(tl.int64)
    else:
        tc = tc.to(tl.int32)
    return valid, bad, tc


@triton.jit
def _ce_store_loss(loss_ptr, t_ptr, r, st, row_ok, ignore_index, z_row, szc, s, m_use, z_sum, C, smoothing,
                   SMOOTH: tl.constexpr, INT64: tl.constexpr):
    """loss[r] from the row's log-sum-exp, as differences to the max (no cancellation of
    two large numbers). Stored as soon as s and m are known, before the gradient pass,
    with the target (and so valid, bad, z_t) read again here: with z_t gathered up front
    and the loss stored last, ptxas 12.x (Triton 3.6 for sm_80/sm_90, Triton 3.9 for
    sm_80) kept z_t or the ``bad`` flag across the row's whole tile and spilled it
    (4-36 bytes in 4 to 6 configs); this order was the one, of those tried, that spills in
    no config with either Triton. The re-read costs one target load per row."""
    valid, bad, tc = _ce_target(t_ptr, r, st, row_ok, ignore_index, C, INT64)
    z_t = tl.load(z_row + tc * szc, mask=valid, other=0.0).to(tl.float32)
    loss = tl.log(s) - (1.0 - smoothing) * (z_t - m_use)
    if SMOOTH:
        loss -= smoothing * (z_sum / C - m_use)
    loss = tl.where(valid, loss, 0.0)
    loss = tl.where(bad, float("nan"), loss)
    tl.store(loss_ptr + r, loss, mask=row_ok)


@triton.jit
def _ce_fwd_kernel(
    z_ptr, t_ptr, info_ptr, loss_ptr, grad_ptr,
    N, C, szr, szc, st, ignore_index, smoothing,
    MEAN: tl.constexpr, SMOOTH: tl.constexpr, ALIGN: tl.constexpr, INT64: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Per row n: loss[n] (float32) and grad[n, :] = (softmax - q) * w_n (fresh, contiguous)."""
    row_ok, r = _rows(N, ROWS, INT64)
    if INT64:  # tl.cast: a stride of 1 arrives as a constant (Triton's specialisation)
        szr, szc, st = tl.cast(szr, tl.int64), tl.cast(szc, tl.int64), tl.cast(st, tl.int64)
    valid, bad, tc = _ce_target(t_ptr, r, st, row_ok, ignore_index, C, INT64)
    z_row = z_ptr + tl.multiple_of(r * szr, ALIGN)
    g_row = grad_ptr + tl.multiple_of(r * C, ALIGN)

    # w_n: 1/count for "mean" (count read on the device: no host sync), 0 when ignored
    if MEAN:
        w = 1.0 / tl.maximum(tl.load(info_ptr).to(tl.float32), 1.0)
    else:
        w = 1.0
    scale = tl.where(valid, w, 0.0)
    scale = tl.where(bad, float("nan"), scale)
    on_target = (1.0 - smoothing) * scale
    uniform = (smoothing / C) * scale
    cols = tl.arange(0, BLOCK)
    out_ty = grad_ptr.dtype.element_ty

    if C <= BLOCK:
        # the whole row in registers: one read of the logits
        c_ok = _below(cols, C, ALIGN)
        ld = valid[:, None] & c_ok[None, :]  # ignored rows are never read
        x = tl.load(z_row[:, None] + cols[None, :] * szc, mask=ld, other=-float("inf")).to(tl.float32)
        m = tl.max(x, axis=1)
        m_use = tl.where(m == -float("inf"), 0.0, m)
        e = tl.exp(x - m_use[:, None])
        s = tl.sum(e, axis=1)
        if SMOOTH:
            z_sum = tl.sum(tl.where(ld, x, 0.0), axis=1)
        else:
            z_sum = tl.zeros((ROWS,), dtype=tl.float32)
        s = tl.where(valid, s, 1.0)  # ignored rows were not read (s = 0): no 0/0, no log 0
        _ce_store_loss(loss_ptr, t_ptr, r, st, row_ok, ignore_index, z_row, szc, s, m_use, z_sum, C, smoothing,
                       SMOOTH, INT64)
        p_scale = scale / s
        g = e * p_scale[:, None] - tl.where(cols[None, :] == tc[:, None], on_target[:, None], 0.0)
        if SMOOTH:
            g -= uniform[:, None]
        tl.store(g_row[:, None] + cols[None, :], g.to(out_ty), mask=row_ok[:, None] & c_ok[None, :])
    else:
        # sweep 1: online log-sum-exp over BLOCK-wide chunks
        m = tl.full((ROWS,), -float("inf"), tl.float32)
        s = tl.zeros((ROWS,), dtype=tl.float32)
        z_sum = tl.zeros((ROWS,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK):
            offs = c0 + cols
            ld = valid[:, None] & _below(offs, C, ALIGN)[None, :]
            x = tl.load(z_row[:, None] + offs[None, :] * szc, mask=ld, other=-float("inf")).to(tl.float32)
            m, s = _online_lse(m, s, x)
            if SMOOTH:
                z_sum += tl.sum(tl.where(ld, x, 0.0), axis=1)
        m_use = tl.where(m == -float("inf"), 0.0, m)
        s = tl.where(valid, s, 1.0)
        _ce_store_loss(loss_ptr, t_ptr, r, st, row_ok, ignore_index, z_row, szc, s, m_use, z_sum, C, smoothing,
                       SMOOTH, INT64)
        p_scale = scale / s
        # sweep 2: the gradient (the row comes back from L2)
        for c0 in range(0, C, BLOCK):
            offs = c0 + cols
            c_ok = _below(offs, C, ALIGN)
            ld = valid[:, None] & c_ok[None, :]
            x = tl.load(z_row[:, None] + offs[None, :] * szc, mask=ld, other=-float("inf")).to(tl.float32)
            g = tl.exp(x - m_use[:, None]) * p_scale[:, None]
            g -= tl.where(offs[None, :] == tc[:, None], on_target[:, None], 0.0)
            if SMOOTH:
                g -= uniform[:, None]
            tl.store(g_row[:, None] + offs[None, :], g.to(out_ty), mask=row_ok[:, None] & c_ok[None, :])


@triton.jit
def _ce_bwd_kernel(
    gl_ptr, g_ptr, dz_ptr,
    N, C, sgr, sgc, sg,
    ALIGN: tl.constexpr, INT64: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """dz[n, c] = grad_logits[n, c] * g[n * sg]  (sg = 0: one upstream value for all rows)."""
    row_ok, r = _rows(N, ROWS, INT64)
    if INT64:
        sgr, sgc, sg = tl.cast(sgr, tl.int64), tl.cast(sgc, tl.int64), tl.cast(sg, tl.int64)
    # columns masked, not clamped: a clamp hides their contiguity from the compiler (no
    # vector access); masked lanes never touch memory and no load here is pipelined
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    c_ok = _below(c, C, ALIGN)
    w = tl.load(g_ptr + r * sg, mask=row_ok, other=0.0).to(tl.float32)
    ok = row_ok[:, None] & c_ok[None, :]
    x = tl.load(gl_ptr + tl.multiple_of(r * sgr, ALIGN)[:, None] + c[None, :] * sgc, mask=ok, other=0.0)
    dz = x.to(tl.float32) * w[:, None]
    tl.store(dz_ptr + tl.multiple_of(r * C, ALIGN)[:, None] + c[None, :], dz.to(dz_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _softmax_fwd_kernel(
    x_ptr, y_ptr, R, C,
    LOG: tl.constexpr, ALIGN: tl.constexpr, INT64: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """y = softmax(x) (or log_softmax with LOG) along the rows of a contiguous (R, C)."""
    row_ok, r = _rows(R, ROWS, INT64)
    base = tl.multiple_of(r * C, ALIGN)
    x_row = x_ptr + base
    y_row = y_ptr + base
    cols = tl.arange(0, BLOCK)
    out_ty = y_ptr.dtype.element_ty
    if C <= BLOCK:
        c_ok = _below(cols, C, ALIGN)
        x = tl.load(x_row[:, None] + cols[None, :], mask=c_ok[None, :], other=-float("inf")).to(tl.float32)
        m = tl.max(x, axis=1)
        m_use = tl.where(m == -float("inf"), 0.0, m)
        e = tl.exp(x - m_use[:, None])
        s = tl.sum(e, axis=1)
        if LOG:
            y = x - (m_use + tl.log(s))[:, None]
        else:
            y = e * (1.0 / s)[:, None]
        tl.store(y_row[:, None] + cols[None, :], y.to(out_ty), mask=row_ok[:, None] & c_ok[None, :])
    else:
        m = tl.full((ROWS,), -float("inf"), tl.float32)
        s = tl.zeros((ROWS,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK):
            offs = c0 + cols
            x = tl.load(x_row[:, None] + offs[None, :], mask=_below(offs, C, ALIGN)[None, :], other=-float("inf"))
            m, s = _online_lse(m, s, x.to(tl.float32))
        m_use = tl.where(m == -float("inf"), 0.0, m)
        lse = m_use + tl.log(s)
        inv_s = 1.0 / s
        for c0 in range(0, C, BLOCK):
            offs = c0 + cols
            c_ok = _below(offs, C, ALIGN)
            x = tl.load(x_row[:, None] + offs[None, :], mask=c_ok[None, :], other=-float("inf")).to(tl.float32)
            if LOG:
                y = x - lse[:, None]
            else:
                y = tl.exp(x - m_use[:, None]) * inv_s[:, None]
            tl.store(y_row[:, None] + offs[None, :], y.to(out_ty), mask=row_ok[:, None] & c_ok[None, :])


@triton.jit
def _softmax_bwd_kernel(
    g_ptr, y_ptr, dx_ptr, R, C,
    LOG: tl.constexpr, ALIGN: tl.constexpr, INT64: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """softmax:     dx = y * (g - sum(g * y));
    log_softmax: dx = g - exp(y) * sum(g)      (rows of contiguous (R, C) arrays)."""
    row_ok, r = _rows(R, ROWS, INT64)
    base = tl.multiple_of(r * C, ALIGN)
    g_row = g_ptr + base
    y_row = y_ptr + base
    dx_row = dx_ptr + base
    cols = tl.arange(0, BLOCK)
    out_ty = dx_ptr.dtype.element_ty
    if C <= BLOCK:
        c_ok = _below(cols, C, ALIGN)
        offs = cols[None, :]
        g = tl.load(g_row[:, None] + offs, mask=c_ok[None, :], other=0.0).to(tl.float32)
        y = tl.load(y_row[:, None] + offs, mask=c_ok[None, :], other=0.0).to(tl.float32)
        if LOG:
            dx = g - tl.exp(y) * tl.sum(g, axis=1)[:, None]
        else:
            dx = y * (g - tl.sum(g * y, axis=1)[:, None])
        tl.store(dx_row[:, None] + offs, dx.to(out_ty), mask=row_ok[:, None] & c_ok[None, :])
    else:
        acc = tl.zeros((ROWS,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK):
            offs = c0 + cols
            c_ok = _below(offs, C, ALIGN)[None, :]
            g = tl.load(g_row[:, None] + offs[None, :], mask=c_ok, other=0.0).to(tl.float32)
            if LOG:
                acc += tl.sum(g, axis=1)
            else:
                y = tl.load(y_row[:, None] + offs[None, :], mask=c_ok, other=0.0).to(tl.float32)
                acc += tl.sum(g * y, axis=1)
        for c0 in range(0, C, BLOCK):
            offs = c0 + cols
            c_ok = _below(offs, C, ALIGN)
            g = tl.load(g_row[:, None] + offs[None, :], mask=c_ok[None, :], other=0.0).to(tl.float32)
            y = tl.load(y_row[:, None] + offs[None, :], mask=c_ok[None, :], other=0.0).to(tl.float32)
            if LOG:
                dx = g - tl.exp(y) * acc[:, None]
            else:
                dx = y * (g - acc[:, None])
            tl.store(dx_row[:, None] + offs[None, :], dx.to(out_ty), mask=row_ok[:, None] & c_ok[None, :])


# ----------------------------------------------------------------------------- configs

# (ROWS, BLOCK, num_warps, num_stages); BLOCK a power of two, ROWS * BLOCK / (32 * warps)
# values per thread kept <= 64. Each spill-free on sm_80 and sm_90 (aot_specs).
GPU_CONFIGS = {
    "ce_fwd": [(64, 16, 4, 1), (16, 64, 4, 1), (4, 256, 4, 1), (2, 256, 2, 1), (2, 1024, 4, 1),
               (1, 1024, 4, 1), (1, 4096, 8, 1), (1, 4096, 4, 1), (1, 8192, 16, 1), (1, 16384, 32, 1)],
    "ce_bwd": [(64, 16, 4, 1), (16, 64, 4, 1), (8, 256, 4, 1), (4, 1024, 8, 1), (2, 1024, 4, 1),
               (1, 4096, 8, 1), (2, 4096, 8, 1)],
    "softmax_fwd": [(64, 16, 4, 1), (16, 64, 4, 1), (8, 256, 4, 1), (2, 1024, 4, 1), (1, 1024, 4, 1),
                    (1, 4096, 8, 1), (1, 8192, 16, 1), (1, 16384, 16, 1)],
    "softmax_bwd": [(64, 16, 4, 1), (16, 64, 4, 1), (8, 256, 4, 1), (2, 1024, 4, 1), (1, 1024, 4, 1),
                    (1, 4096, 8, 1), (1, 8192, 16, 1), (1, 16384, 16, 1)],
}
#: Under the interpreter (programs run one after another in Python: few, big tiles): rows of
#: up to 512 classes in one chunk, wider ones take the two-sweep path.
INTERPRET_CONFIG = (64, 512, 4, 1)
WIDE_BLOCK = 4096  # rows wider than every BLOCK autotune over the configs this wide or wider
COUNT_BLOCK = 1024  # targets per program of the count kernel
COUNT_WARPS = 4
TOTAL_BLOCK = 1024  # per-row losses per loop step of the one-program total kernel


def _prune(configs, named_args, **kwargs):
    """Keep the configs whose BLOCK is the smallest >= C (the row read once, from
    registers), or, for rows wider than every BLOCK, the configs with BLOCK >= WIDE_BLOCK
    (two sweeps, the second from L2): the others only mask lanes off or add chunks."""
    c = named_args["C"]
    blocks = sorted({cfg.kwargs["BLOCK"] for cfg in configs})
    fit = [b for b in blocks if b >= c]
    keep = {fit[0]} if fit else {b for b in blocks if b >= min(WIDE_BLOCK, blocks[-1])}
    return [cfg for cfg in configs if cfg.kwargs["BLOCK"] in keep]


_BLOCKS = ("ROWS", "BLOCK")
#: The four tiled kernels; ``knobs.override(configs={KERNELS[kind]: cfg})`` pins one config (tests).
KERNELS = {  # the autotuner only times the configs _prune keeps for C
    kind: Tuned(kernel, _BLOCKS, GPU_CONFIGS[kind], key, INTERPRET_CONFIG, prune=_prune)
    for kind, kernel, key in (("ce_fwd", _ce_fwd_kernel, ["N", "C"]), ("ce_bwd", _ce_bwd_kernel, ["N", "C"]),
                              ("softmax_fwd", _softmax_fwd_kernel, ["R", "C"]),
                              ("softmax_bwd", _softmax_bwd_kernel, ["R", "C"]))
}


# ----------------------------------------------------------------------------- launchers


def _align(*row_strides) -> int:
    """Largest power of two (<= 16) dividing every argument (the row strides and C): lets
    the compiler prove row starts and the ``_below`` masks ALIGN-aligned and vectorise
    the loads and stores (C = 1000 gives 8: 16-byte float32 / bf16 accesses)."""
    return math.gcd(16, *[int(s) for s in row_strides])


def _grid_rows(rows, cols=None):
    if cols is None:
        return lambda meta: (triton.cdiv(rows, meta["ROWS"]),)
    return lambda meta: (triton.cdiv(rows, meta["ROWS"]), triton.cdiv(cols, meta["BLOCK"]))


def _axis(op, dim, ndim):
    if not isinstance(dim, (int, np.integer)) or not -max(ndim, 1) <= dim < max(ndim, 1):
        raise ValueError(f"{op}: dim must be an int in [{-max(ndim, 1)}, {max(ndim, 1)}), got {dim!r}")
    return int(dim) % max(ndim, 1)


def _rows_view(xp, a, dim):
    """``a`` with ``dim`` moved last, contiguous (copied only when it is not), as (R, C)."""
    moved = xp.ascontiguousarray(xp.moveaxis(a.reshape(1) if a.ndim == 0 else a, dim, -1))
    c = moved.shape[-1]
    return moved, moved.reshape(-1, c) if c else moved.reshape(0, 0)


def _restore(xp, out, shape, dim):
    """The (R, C) result back in the caller's axis order (a view when dim is not last)."""
    return out.reshape(shape) if len(shape) == 0 else xp.moveaxis(out, -1, dim)


def _softmax_fwd(op, x, dim, log):
    xp = get_array_module(x)
    check_float(op, x)
    dim = _axis(op, dim, x.ndim)
    moved, rows = _rows_view(xp, x, dim)
    y = xp.empty(moved.shape, dtype=x.dtype)
    if rows.size:
        r, c = rows.shape
        KERNELS["softmax_fwd"][_grid_rows(r)](
            arg(rows), arg(y), r, c, LOG=log, ALIGN=_align(c), INT64=needs_int64(rows))
    return _restore(xp, y, x.shape, dim)


def _softmax_bwd(op, grad_y, y, dim, log):
    xp = get_array_module(grad_y, y)
    check_float(op, grad_y, y)
    if grad_y.shape != y.shape:
        raise ValueError(f"{op}: grad_y has shape {grad_y.shape} but the saved output y has {y.shape}")
    dim = _axis(op, dim, y.ndim)
    _, g_rows = _rows_view(xp, grad_y, dim)
    moved, y_rows = _rows_view(xp, y, dim)
    dx = xp.empty(moved.shape, dtype=y.dtype)
    if y_rows.size:
        r, c = y_rows.shape
        KERNELS["softmax_bwd"][_grid_rows(r)](
            arg(g_rows), arg(y_rows), arg(dx), r, c, LOG=log, ALIGN=_align(c), INT64=needs_int64(y_rows))
    return _restore(xp, dx, y.shape, dim)


def softmax_forward(x, dim):
    """y = exp(x - max x) / sum exp(x - max x) along ``dim``, one read of x per row that
    fits a tile (an online max/sum and a second sweep otherwise).

    Args:
        x: float32/float16/bf16-as-uint16 array of any shape and strides (CuPy, or NumPy
            under ``interpret``); ``dim`` is moved last and made contiguous first.
        dim: the axis to normalise (negative counts from the end).

    Returns:
        y, same shape and dtype as x (a view with ``dim`` moved back into place).
    """
    return _softmax_fwd("softmax", x, dim, False)


def softmax_backward(grad_y, y, dim):
    """dx = y * (g - sum(g * y)) along ``dim``, from the saved output y.

    Args:
        grad_y: upstream gradient, the shape and dtype of y.
        y: the output of ``softmax_forward``.
        dim: the softmax axis.
    """
    return _softmax_bwd("softmax_backward", grad_y, y, dim, False)


def log_softmax_forward(x, dim):
    """y = x - max x - log sum exp(x - max x) along ``dim`` (see ``softmax_forward``)."""
    return _softmax_fwd("log_softmax", x, dim, True)


def log_softmax_backward(grad_y, y, dim):
    """dx = g - exp(y) * sum(g) along ``dim``, from the saved output y (= log p)."""
    return _softmax_bwd("log_softmax_backward", grad_y, y, dim, True)


def _check_targets(logits, target, ignore_index):
    n, c = logits.shape
    if not hasattr(target, "dtype") or target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must be an integer array of class indices, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    if target.shape != (n,):
        raise ValueError(f"cross_entropy: target must have shape ({n},) for logits of shape "
                         f"{logits.shape}, got {target.shape}")
    if backend.device_of(target) != backend.device_of(logits):
        raise RuntimeError(f"cross_entropy: logits are on {backend.device_of(logits)}, target on "
                           f"{backend.device_of(target)}")
    if target.dtype not in (np.int32, np.int64):
        target = target.astype(np.int64)
    if not isinstance(ignore_index, (int, np.integer)) or not -2**31 <= ignore_index < 2**31:
        raise ValueError(f"cross_entropy: ignore_index must be an int32 value, got {ignore_index!r}")
    return kernel_view(target)


def _bad_target(target, info, n, c, ignore_index):
    first = n - int(backend.to_numpy(info)[1])
    return ValueError(
        f"cross_entropy: target[{first}] = {int(target[first])} is not a class index in "
        f"[0, {c}) nor ignore_index={ignore_index}")


def cross_entropy_forward(logits, target, reduction, ignore_index, label_smoothing):
    """Loss and d(loss)/d(logits) of softmax cross-entropy with class-index targets, in
    one kernel (plus a tiny count kernel):

        loss_n = lse_n - (1 - eps) z[n, t_n] - eps/C sum_j z[n, j]   (0 if t_n ignored)
        grad[n, j] = (softmax(z_n)_j - q_nj) * w_n,  q = (1 - eps) onehot(t_n) + eps/C,
        w_n = [t_n != ignore_index] / count  ("mean", count = non-ignored rows; on the
        device, no host sync) or [t_n != ignore_index] ("sum", "none").

    Args:
        logits: (N, C) float32/float16/bf16-as-uint16 array, any strides (stride 0 too).
            Never written: the gradient goes to a fresh buffer.
        target: (N,) integer class indices in [0, C) or ``ignore_index``, any stride.
        reduction: "mean" (over non-ignored rows; NaN when every row is ignored, with a
            zero gradient, as PyTorch), "sum" or "none".
        ignore_index: target value whose rows add 0 loss and 0 gradient.
        label_smoothing: eps in [0, 1].

    Returns:
        (loss, grad): loss a 0-d array for "mean"/"sum", (N,) for "none", in the logits'
        dtype (computed in float32, rounded once); grad (N, C) contiguous, same dtype,
        already holding the 1/count of "mean".

    Raises:
        ValueError: a target neither in [0, C) nor ignore_index (the first one named),
            a bad shape, reduction or label_smoothing.
    """
    xp = get_array_module(logits)
    check_float("cross_entropy", logits)
    if logits.ndim != 2:
        raise ValueError(f"cross_entropy: logits must be 2-d (N, C), got shape {logits.shape}")
    n, c = logits.shape
    if c == 0:
        raise ValueError(f"cross_entropy: logits need at least one class, got shape {logits.shape}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if n >= 2**31:
        raise ValueError(f"cross_entropy: at most 2**31 - 1 rows (the count is int32), got {n}")
    target = _check_targets(logits, target, ignore_index)
    logits = kernel_view(logits)
    eps = float(label_smoothing)

    grad = xp.empty((n, c), dtype=logits.dtype)  # fresh: the logits may have other readers
    per_row = xp.empty((n,), dtype=np.float32)
    info = xp.zeros((2,), dtype=np.int32)  # [count of non-ignored rows, N - first bad row]
    mean, check = reduction == "mean", knobs.get("check_targets")
    if n:
        if mean or check:
            _ce_count_kernel[(triton.cdiv(n, COUNT_BLOCK),)](
                kernel_arg(target), kernel_arg(info), n, c, strides(target)[0], int(ignore_index),
                INT64=needs_int64(target), BLOCK=COUNT_BLOCK, num_warps=COUNT_WARPS)
        szr, szc = strides(logits)
        KERNELS["ce_fwd"][_grid_rows(n)](
            arg(logits), kernel_arg(target), kernel_arg(info), kernel_arg(per_row), arg(grad),
            n, c, szr, szc, strides(target)[0], int(ignore_index), eps,
            MEAN=mean, SMOOTH=eps != 0.0, ALIGN=_align(szr, c) if szc == 1 else 1,
            INT64=needs_int64(logits, grad, target))

    if reduction == "none":
        loss = per_row if logits.dtype == np.float32 else from_float32(xp, per_row, logits.dtype)
    else:
        loss = xp.empty((), dtype=logits.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):  # the interpreter's 0/0
            _ce_total_kernel[(1,)](kernel_arg(per_row), kernel_arg(info), arg(loss), n, MEAN=mean,
                                   BLOCK=TOTAL_BLOCK, num_warps=COUNT_WARPS)
    # after every kernel of the call is queued: the one host sync of the call. While a
    # CUDA graph records (no host reads allowed) the check runs after each replay instead.
    if check and n:
        if cuda_graph.capturing():
            cuda_graph.defer_check(lambda: int(backend.to_numpy(info)[1]) != 0
                                and _raise(_bad_target(target, info, n, c, ignore_index)))
        elif int(backend.to_numpy(info)[1]) != 0:
            raise _bad_target(target, info, n, c, ignore_index)
    return loss, grad


def _raise(exc):
    raise exc


def cross_entropy_backward(grad_loss, grad_logits, reduction):
    """dz = grad_logits * g: the forward's saved gradient scaled by the upstream one.

    Args:
        grad_loss: "mean"/"sum": a one-element array (or a Python number); "none": an
            (N,) array of any stride, a broadcast (stride 0) view included. float16,
            float32 or bf16-as-uint16 (with bf16 logits); float64 is read as float32.
        grad_logits: the (N, C) gradient returned by ``cross_entropy_forward`` (any
            strides). Not modified: a second backward (retain_graph) can reuse it.
        reduction: the forward's reduction.

    Returns:
        (N, C) contiguous array in grad_logits' dtype (float32 math, rounded once).
    """
    xp = get_array_module(grad_logits)
    check_float("cross_entropy_backward", grad_logits)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy_backward: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if grad_logits.ndim != 2:
        raise ValueError(f"cross_entropy_backward: grad_logits must be (N, C), got shape {grad_logits.shape}")
    n, c = grad_logits.shape
    g = grad_loss if hasattr(grad_loss, "dtype") and hasattr(grad_loss, "shape") else xp.asarray(grad_loss, np.float32)
    if backend.device_of(g) != backend.device_of(grad_logits):
        raise RuntimeError(f"cross_entropy_backward: grad_loss is on {backend.device_of(g)}, grad_logits on "
                           f"{backend.device_of(grad_logits)}")
    if reduction == "none":
        if g.shape != (n,):
            raise ValueError(f"cross_entropy_backward: reduction='none' needs grad_loss of shape ({n},), got {g.shape}")
    elif g.size != 1:
        raise ValueError(f"cross_entropy_backward: reduction={reduction!r} needs a one-element grad_loss, "
                         f"got shape {g.shape}")
    if g.dtype == np.uint16 and grad_logits.dtype != np.uint16:
        raise TypeError(f"cross_entropy_backward: grad_loss holds bf16 bits (uint16) but grad_logits is "
                        f"{dtype_name(grad_logits.dtype)}")
    if g.dtype not in (np.float16, np.float32, np.uint16):
        if g.dtype.kind != "f":
            raise TypeError(f"cross_entropy_backward: grad_loss must be floating point, got {g.dtype}")
        g = g.astype(np.float32)
    g = kernel_view(g if reduction == "none" else g.reshape(1))
    gl = kernel_view(grad_logits)
    out = xp.empty((n, c), dtype=grad_logits.dtype)
    if out.size:
        sgr, sgc = strides(gl)
        sg = strides(g)[0] if reduction == "none" else 0
        KERNELS["ce_bwd"][_grid_rows(n, c)](
            arg(gl), arg(g), arg(out), n, c, sgr, sgc, sg,
            ALIGN=_align(sgr, c) if sgc == 1 else 1, INT64=needs_int64(gl, out))
    return out
