"""The jit kernels of batch normalisation (``gpukernels.triton.batchnorm``, whose
docstring gives the formulas, the Welford / Chan statistics, the memory traffic and the
traps avoided; its launchers call these): the statistics' partials ``_bn_stats_kernel``,
their merge ``_bn_fwd_finalize_kernel``, the forward ``_bn_fwd_apply_kernel``, and the
backward's partial sums ``_bn_bwd_reduce_kernel``, their merge ``_bn_bwd_finalize_kernel``
and ``_bn_bwd_apply_kernel``.
"""

from __future__ import annotations

import triton
import triton.language as tl

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _welford_combine(n1, m1, q1, n2, m2, q2):
    """Chan's merge of two (count, mean, M2) triples; an empty side leaves the other."""
    n = n1 + n2
    w = tl.where(n > 0, n2 / tl.maximum(n, 1.0), 0.0)
    d = m2 - m1
    return n, m1 + d * w, q1 + q2 + d * d * n1 * w


@triton.jit
def _chunk(split, S, T):
    """The tiles [t0, t1) of program ``split`` out of T tiles shared by S programs, as
    evenly as they go (sizes differ by one at most; empty only when S > T)."""
    t0 = split.to(tl.int64) * T // S  # int64: split * T may pass 2**31
    t1 = (split + 1).to(tl.int64) * T // S
    return t0, t1


@triton.jit
def _tile(t, n_ib, R_OUT, R_IN, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, INT64: tl.constexpr):
    """Row and column indices (and validity) of tile t: BLOCK_O rows x BLOCK_I columns
    of the (R_OUT, R_IN) view, flattened; one scalar division per tile."""
    ob = t // n_ib
    ib = t - ob * n_ib
    if INT64:
        ob = ob.to(tl.int64)
        ib = ib.to(tl.int64)
    else:  # every array has < 2**31 elements: int32 indices (t is int64, see _chunk)
        ob = ob.to(tl.int32)
        ib = ib.to(tl.int32)
    r = tl.arange(0, BLOCK_O * BLOCK_I)
    o = ob * BLOCK_O + r // BLOCK_I
    i = ib * BLOCK_I + r % BLOCK_I
    ok = (o < R_OUT) & (i < R_IN)
    return o, i, ok


@triton.jit
def _channels(BLOCK_C: tl.constexpr, C, INT64: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = offs < C
    if INT64:
        offs = offs.to(tl.int64)
    return offs, ok


@triton.jit
def _first_split(c, c_ok, split):
    """c_ok where split == 0, built as a vector: the interpreter mis-types a bool vector
    ANDed with a bool scalar."""
    return c_ok & ((c * 0 + split) == 0)


@triton.jit
def _merge_moments(part_ptr, c, c_ok, C, S, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Merge the S partial (count, mean, M2) of channels c (part is (3, S, C)): each block
    of BLOCK_S partials with Chan's k-way formula (n = sum n_j, mean = sum n_j mean_j / n,
    M2 = sum M2_j + sum n_j (mean_j - mean)^2, means taken relative to split 0's so the
    products stay small), the blocks with ``_welford_combine``."""
    ref = tl.load(part_ptr + S * C + c, mask=c_ok, other=0.0)  # split 0 is never empty
    n = tl.zeros((BLOCK_C,), tl.float32)
    mean = tl.zeros((BLOCK_C,), tl.float32)
    m2 = tl.zeros((BLOCK_C,), tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ok = (s < S)[:, None] & c_ok[None, :]
        idx = s[:, None] * C + c[None, :]
        pn = tl.load(part_ptr + idx, mask=ok, other=0.0)
        d = tl.load(part_ptr + S * C + idx, mask=ok, other=0.0) - ref[None, :]
        pq = tl.load(part_ptr + 2 * S * C + idx, mask=ok, other=0.0)
        bn = tl.sum(pn, 0)
        bm = tl.sum(pn * d, 0) / tl.maximum(bn, 1.0)
        e = d - bm[None, :]
        bq = tl.sum(pq, 0) + tl.sum(pn * e * e, 0)  # masked and empty partials: pn = 0
        n, mean, m2 = _welford_combine(n, mean, m2, bn, bm, bq)
    return n, ref + mean, m2


@triton.jit
def _finish_stats(part_ptr, stats_ptr, rm_ptr, rv_ptr, c, c_ok, w_ok, C, S, momentum, eps,
                  HAS_RUNNING: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Batch mean and inv_std of channels c from the partials; where ``w_ok``, store them
    (stats is (2, C): mean, inv_std) and move the running statistics, computed from the
    snapshot the stats kernel left after the partials (so a second run changes nothing)."""
    n, mean, m2 = _merge_moments(part_ptr, c, c_ok, C, S, BLOCK_S, BLOCK_C)
    var = tl.div_rn(m2, tl.maximum(n, 1.0))
    inv = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    tl.store(stats_ptr + c, mean, mask=w_ok)
    tl.store(stats_ptr + C + c, inv, mask=w_ok)
    if HAS_RUNNING:
        old = part_ptr + 3 * S * C
        rm = tl.load(old + c, mask=w_ok, other=0.0)
        rv = tl.load(old + C + c, mask=w_ok, other=0.0)
        unbiased = tl.div_rn(m2, tl.maximum(n - 1.0, 1.0))
        tl.store(rm_ptr + c, (rm * (1.0 - momentum) + momentum * mean).to(rm_ptr.dtype.element_ty), mask=w_ok)
        tl.store(rv_ptr + c, (rv * (1.0 - momentum) + momentum * unbiased).to(rv_ptr.dtype.element_ty),
                 mask=w_ok)
    return mean, inv


@triton.jit
def _bn_stats_kernel(
    x_ptr, part_ptr, rm_ptr, rv_ptr,
    C, R_OUT, R_IN, S,
    sxc, sxo, sxi,
    HAS_RUNNING: tl.constexpr, INT64: tl.constexpr,
    BLOCK_C: tl.constexpr, INNER: tl.constexpr, TILE: tl.constexpr,
):
    """Partial (count, mean, M2) of x over the tiles of program (channel block, split):
    part[0|1|2, split, c]; programs of split 0 also copy the running statistics to
    part[3 * S * C:] (as float32), the snapshot the running update starts from."""
    BLOCK_R: tl.constexpr = TILE // BLOCK_C
    BLOCK_I: tl.constexpr = INNER if INNER < BLOCK_R else BLOCK_R
    BLOCK_O: tl.constexpr = BLOCK_R // BLOCK_I
    split = tl.program_id(1)
    c, c_ok = _channels(BLOCK_C, C, INT64)
    x_c = c * sxc
    n_ib = tl.cdiv(R_IN, BLOCK_I)
    t0, t1 = _chunk(split, S, tl.cdiv(R_OUT, BLOCK_O) * n_ib)
    # shift: the chunk's first value of each channel (an empty chunk reads value 0,
    # and stores count 0)
    t_first = tl.where(t0 < t1, t0, 0)
    o0 = (t_first // n_ib) * BLOCK_O  # int64 scalars: one load
    i0 = (t_first % n_ib) * BLOCK_I
    shift = tl.load(x_ptr + x_c + o0 * sxo + i0 * sxi, mask=c_ok, other=0.0).to(tl.float32)

    n = tl.zeros((BLOCK_R,), tl.float32)  # values seen per lane (the same for every channel)
    mean = tl.zeros((BLOCK_C, BLOCK_R), tl.float32)
    m2 = tl.zeros((BLOCK_C, BLOCK_R), tl.float32)
    for t in range(t0, t1):
        o, i, ok = _tile(t, n_ib, R_OUT, R_IN, BLOCK_O, BLOCK_I, INT64)
        v = tl.load(x_ptr + x_c[:, None] + (o * sxo + i * sxi)[None, :], mask=c_ok[:, None] & ok[None, :],
                    other=0.0, eviction_policy="evict_last").to(tl.float32) - shift[:, None]
        n += ok.to(tl.float32)
        w = tl.where(ok, 1.0 / tl.maximum(n, 1.0), 0.0)
        d = v - mean
        mean += d * w[None, :]
        m2 += tl.where(ok[None, :], d * (v - mean), 0.0)
    # Chan's k-way merge of the lanes (plain sums: means of x - shift are small)
    n_c = tl.sum(n, 0)
    mean_c = tl.sum(mean * n[None, :], 1) / tl.maximum(n_c, 1.0)
    e = mean - mean_c[:, None]
    m2_c = tl.sum(m2, 1) + tl.sum(e * e * n[None, :], 1)
    n_c = tl.zeros((BLOCK_C,), tl.float32) + n_c
    out = split * C + c
    tl.store(part_ptr + out, n_c, mask=c_ok)
    tl.store(part_ptr + S * C + out, shift + mean_c, mask=c_ok)
    tl.store(part_ptr + 2 * S * C + out, m2_c, mask=c_ok)
    if HAS_RUNNING:
        first = _first_split(c, c_ok, split)
        old = part_ptr + 3 * S * C
        tl.store(old + c, tl.load(rm_ptr + c, mask=first, other=0.0).to(tl.float32), mask=first)
        tl.store(old + C + c, tl.load(rv_ptr + c, mask=first, other=0.0).to(tl.float32), mask=first)


@triton.jit
def _bn_fwd_finalize_kernel(
    part_ptr, stats_ptr, rm_ptr, rv_ptr,
    C, S, momentum, eps,
    HAS_RUNNING: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """mean, inv_std (and the running update) of BLOCK_C channels from many partials."""
    c, c_ok = _channels(BLOCK_C, C, False)
    _finish_stats(part_ptr, stats_ptr, rm_ptr, rv_ptr, c, c_ok, c_ok, C, S, momentum, eps,
                  HAS_RUNNING, BLOCK_S, BLOCK_C)


@triton.jit
def _bn_fwd_apply_kernel(
    x_ptr, y_ptr, part_ptr, stats_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr,
    C, R_OUT, R_IN, S, momentum, eps,
    sxc, sxo, sxi, syc, syo, syi,
    STATS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RUNNING: tl.constexpr,
    INT64: tl.constexpr, BLOCK_C: tl.constexpr, INNER: tl.constexpr, BLOCK_S: tl.constexpr,
    TILE: tl.constexpr,
):
    """y = gamma inv_std (x - mean) + beta over the same tiles as the stats kernel.

    STATS 0: mean, inv_std from ``stats`` (the finalize kernel's); 1: merged here from
    the partials (programs of split 0 store them and move the running statistics);
    2 (eval): from the running statistics (programs of split 0 store them)."""
    BLOCK_R: tl.constexpr = TILE // BLOCK_C
    BLOCK_I: tl.constexpr = INNER if INNER < BLOCK_R else BLOCK_R
    BLOCK_O: tl.constexpr = BLOCK_R // BLOCK_I
    split = tl.program_id(1)
    c, c_ok = _channels(BLOCK_C, C, INT64)
    if STATS == 0:
        mean = tl.load(stats_ptr + c, mask=c_ok, other=0.0)
        inv = tl.load(stats_ptr + C + c, mask=c_ok, other=0.0)
    elif STATS == 1:
        mean, inv = _finish_stats(part_ptr, stats_ptr, rm_ptr, rv_ptr, c, c_ok, _first_split(c, c_ok, split), C, S,
                                  momentum, eps, HAS_RUNNING, BLOCK_S, BLOCK_C)
    else:
        mean = tl.load(rm_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
        var = tl.load(rv_ptr + c, mask=c_ok, other=1.0).to(tl.float32)
        inv = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
        first = _first_split(c, c_ok, split)
        tl.store(stats_ptr + c, mean, mask=first)
        tl.store(stats_ptr + C + c, inv, mask=first)
    a = inv
    if HAS_WEIGHT:
        a = inv * tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    else:
        b = tl.zeros((BLOCK_C,), tl.float32)

    x_c = c * sxc
    y_c = c * syc
    n_ib = tl.cdiv(R_IN, BLOCK_I)
    t0, t1 = _chunk(split, S, tl.cdiv(R_OUT, BLOCK_O) * n_ib)
    for t in range(t0, t1):
        o, i, ok = _tile(t, n_ib, R_OUT, R_IN, BLOCK_O, BLOCK_I, INT64)
        mask = c_ok[:, None] & ok[None, :]
        v = tl.load(x_ptr + x_c[:, None] + (o * sxo + i * sxi)[None, :], mask=mask, other=0.0,
                    eviction_policy="evict_first").to(tl.float32)
        y = (v - mean[:, None]) * a[:, None] + b[:, None]
        tl.store(y_ptr + y_c[:, None] + (o * syo + i * syi)[None, :], y.to(y_ptr.dtype.element_ty), mask=mask,
                 eviction_policy="evict_first")


@triton.jit
def _bn_bwd_reduce_kernel(
    g_ptr, x_ptr, mean_ptr, part_ptr,
    C, R_OUT, R_IN, S,
    sgc, sgo, sgi, sxc, sxo, sxi,
    INT64: tl.constexpr, BLOCK_C: tl.constexpr, INNER: tl.constexpr, TILE: tl.constexpr,
):
    """Partial sum(g) and sum(g (x - mean)) of program (channel block, split): part (2, S, C)."""
    BLOCK_R: tl.constexpr = TILE // BLOCK_C
    BLOCK_I: tl.constexpr = INNER if INNER < BLOCK_R else BLOCK_R
    BLOCK_O: tl.constexpr = BLOCK_R // BLOCK_I
    split = tl.program_id(1)
    c, c_ok = _channels(BLOCK_C, C, INT64)
    mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
    g_c = c * sgc
    x_c = c * sxc
    n_ib = tl.cdiv(R_IN, BLOCK_I)
    t0, t1 = _chunk(split, S, tl.cdiv(R_OUT, BLOCK_O) * n_ib)
    acc_g = tl.zeros((BLOCK_C, BLOCK_R), tl.float32)
    acc_gx = tl.zeros((BLOCK_C, BLOCK_R), tl.float32)
    for t in range(t0, t1):
        o, i, ok = _tile(t, n_ib, R_OUT, R_IN, BLOCK_O, BLOCK_I, INT64)
        mask = c_ok[:, None] & ok[None, :]
        g = tl.load(g_ptr + g_c[:, None] + (o * sgo + i * sgi)[None, :], mask=mask, other=0.0,
                    eviction_policy="evict_last").to(tl.float32)
        x = tl.load(x_ptr + x_c[:, None] + (o * sxo + i * sxi)[None, :], mask=mask, other=0.0,
                    eviction_policy="evict_last").to(tl.float32)
        acc_g += g
        acc_gx += g * (x - mean[:, None])  # masked lanes: g = 0
    out = split * C + c
    tl.store(part_ptr + out, tl.sum(acc_g, 1), mask=c_ok)
    tl.store(part_ptr + S * C + out, tl.sum(acc_gx, 1), mask=c_ok)


@triton.jit
def _sum_partials(part_ptr, c, c_ok, C, S, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    sg = tl.zeros((BLOCK_C,), tl.float32)
    sgx = tl.zeros((BLOCK_C,), tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ok = (s < S)[:, None] & c_ok[None, :]
        idx = s[:, None] * C + c[None, :]
        sg += tl.sum(tl.load(part_ptr + idx, mask=ok, other=0.0), 0)
        sgx += tl.sum(tl.load(part_ptr + S * C + idx, mask=ok, other=0.0), 0)
    return sg, sgx


@triton.jit
def _store_param_grads(dgamma_ptr, dbeta_ptr, inv, sg, sgx, c, w_ok,
                       WRITE_DGAMMA: tl.constexpr, WRITE_DBETA: tl.constexpr):
    if WRITE_DGAMMA:
        tl.store(dgamma_ptr + c, (inv * sgx).to(dgamma_ptr.dtype.element_ty), mask=w_ok)
    if WRITE_DBETA:
        tl.store(dbeta_ptr + c, sg.to(dbeta_ptr.dtype.element_ty), mask=w_ok)


@triton.jit
def _bn_bwd_finalize_kernel(
    part_ptr, invstd_ptr, sums_ptr, dgamma_ptr, dbeta_ptr,
    C, S,
    WRITE_DGAMMA: tl.constexpr, WRITE_DBETA: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dgamma, dbeta and the float32 sums (2, C) the apply kernel reads, from many partials."""
    c, c_ok = _channels(BLOCK_C, C, False)
    sg, sgx = _sum_partials(part_ptr, c, c_ok, C, S, BLOCK_S, BLOCK_C)
    tl.store(sums_ptr + c, sg, mask=c_ok)
    tl.store(sums_ptr + C + c, sgx, mask=c_ok)
    inv = tl.load(invstd_ptr + c, mask=c_ok, other=0.0)
    _store_param_grads(dgamma_ptr, dbeta_ptr, inv, sg, sgx, c, c_ok, WRITE_DGAMMA, WRITE_DBETA)


@triton.jit
def _bn_bwd_apply_kernel(
    g_ptr, x_ptr, dx_ptr, part_ptr, sums_ptr, mean_ptr, invstd_ptr, w_ptr, dgamma_ptr, dbeta_ptr,
    C, R_OUT, R_IN, S, count,
    sgc, sgo, sgi, sxc, sxo, sxi, sdc, sdo, sdi,
    TRAINING: tl.constexpr, COMBINE: tl.constexpr, WRITE_DGAMMA: tl.constexpr, WRITE_DBETA: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, INT64: tl.constexpr,
    BLOCK_C: tl.constexpr, INNER: tl.constexpr, BLOCK_S: tl.constexpr, TILE: tl.constexpr,
):
    """dx = a g + k (x - mean) + k0 (training) or a g (eval), a = gamma inv_std.

    COMBINE: the sums come from the partials, merged here (programs of split 0 store
    dgamma / dbeta); else, when training, from ``sums`` (the finalize kernel's)."""
    BLOCK_R: tl.constexpr = TILE // BLOCK_C
    BLOCK_I: tl.constexpr = INNER if INNER < BLOCK_R else BLOCK_R
    BLOCK_O: tl.constexpr = BLOCK_R // BLOCK_I
    split = tl.program_id(1)
    c, c_ok = _channels(BLOCK_C, C, INT64)
    inv = tl.load(invstd_ptr + c, mask=c_ok, other=0.0)
    a = inv
    if HAS_WEIGHT:
        a = inv * tl.load(w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    if COMBINE:
        sg, sgx = _sum_partials(part_ptr, c, c_ok, C, S, BLOCK_S, BLOCK_C)
        _store_param_grads(dgamma_ptr, dbeta_ptr, inv, sg, sgx, c, _first_split(c, c_ok, split),
                           WRITE_DGAMMA, WRITE_DBETA)
    elif TRAINING:
        sg = tl.load(sums_ptr + c, mask=c_ok, other=0.0)
        sgx = tl.load(sums_ptr + C + c, mask=c_ok, other=0.0)

    g_c = c * sgc
    x_c = c * sxc
    d_c = c * sdc
    n_ib = tl.cdiv(R_IN, BLOCK_I)
    t0, t1 = _chunk(split, S, tl.cdiv(R_OUT, BLOCK_O) * n_ib)
    if TRAINING:
        mean = tl.load(mean_ptr + c, mask=c_ok, other=0.0)
        k = -a * inv * inv * sgx / count
        k0 = -a * sg / count
    for t in range(t0, t1):
        o, i, ok = _tile(t, n_ib, R_OUT, R_IN, BLOCK_O, BLOCK_I, INT64)
        mask = c_ok[:, None] & ok[None, :]
        g = tl.load(g_ptr + g_c[:, None] + (o * sgo + i * sgi)[None, :], mask=mask, other=0.0,
                    eviction_policy="evict_first").to(tl.float32)
        dx = g * a[:, None]
        if TRAINING:
            x = tl.load(x_ptr + x_c[:, None] + (o * sxo + i * sxi)[None, :], mask=mask, other=0.0,
                        eviction_policy="evict_first").to(tl.float32)
            dx += k[:, None] * (x - mean[:, None]) + k0[:, None]
        tl.store(dx_ptr + d_c[:, None] + (o * sdo + i * sdi)[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask,
                 eviction_policy="evict_first")
