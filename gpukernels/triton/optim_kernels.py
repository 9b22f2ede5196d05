"""The jit kernels of the fused optimizer updates (``gpukernels.triton.optim``, whose
docstring gives the formulas, the memory traffic and the traps avoided; its launchers
call these): ``_sgd_kernel``, ``_adagrad_kernel``, ``_rmsprop_kernel``, ``_adam_kernel``
(one program per BLOCK of a flat buffer, or per chunk of a segment table), the step
advance of capturable updates ``_step_kernel`` and the clipping norm ``_sumsq_kernel``.
"""

from __future__ import annotations

import triton
import triton.language as tl


# ----------------------------------------------------------------------------- helpers
# Few helpers on purpose: under the interpreter every call of a jit function re-patches
# triton.language (about 2 ms), so loads, stores and casts are written inline.


@triton.jit
def _sqrt(x, CDT: tl.constexpr):
    if CDT == tl.float64:
        return tl.sqrt(x)  # sqrt.rn.f64: IEEE already
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _div(a, b, CDT: tl.constexpr):
    if CDT == tl.float64:
        return a / b  # div.rn.f64: IEEE already
    else:
        return tl.div_rn(a, b)


@triton.jit
def _lerp(a, b, w):
    """torch.lerp: ``a + w (b - a)`` for ``w < 0.5``, else ``b - (b - a)(1 - w)``."""
    if w < 0.5:
        out = a + w * (b - a)
    else:
        out = b - (b - a) * (1.0 - w)
    return out


@triton.jit
def _prologue(table_ptr, n, g_ptr, scale_ptr, gscale, SCALE: tl.constexpr, MAXIMIZE: tl.constexpr,
              HAS_TABLE: tl.constexpr, INT64: tl.constexpr, CDT: tl.constexpr, BLOCK: tl.constexpr):
    """This program's offsets and mask (the BLOCK after ``pid * BLOCK`` of an
    ``n``-element buffer, or chunk ``pid`` of the (start, stop) table: HAS_TABLE 1; 2
    when every bound is a multiple of 16, as the flat buffers' are, so that the masked
    accesses vectorise), and the gradient the update sees: times the clipping
    coefficient (a host value, SCALE 1, or a device scalar, SCALE 2), negated when
    maximizing, in the compute dtype CDT."""
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    if HAS_TABLE:
        start = tl.load(table_ptr + 2 * pid)
        stop = tl.load(table_ptr + 2 * pid + 1)
        if HAS_TABLE == 2:
            start = tl.multiple_of(start, 16)
            stop = tl.multiple_of(stop, 16)
    else:
        start = pid * BLOCK
        stop = n
    offs = start + tl.arange(0, BLOCK)
    mask = offs < stop
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(CDT)
    if SCALE == 1:
        # float64 argument (a Python float under the interpreter): one rounding to CDT
        g = g * (gscale * tl.full((), 1.0, tl.float64)).to(CDT)
    elif SCALE == 2:
        g = g * tl.load(scale_ptr).to(CDT)
    if MAXIMIZE:
        g = -g
    return offs, mask, g


# ----------------------------------------------------------------------------- kernels
# Hyper-parameters arrive as float64 arguments; ``x * one`` (one = float64 1.0) makes each
# a float64 tensor in both modes (the interpreter hands Python floats through
# unconverted), then ``.to(CDT)`` rounds it once, as torch rounds a Python scalar.


@triton.jit
def _sgd_kernel(
    p_ptr, g_ptr, buf_ptr, table_ptr, scale_ptr, n,
    lr: tl.float64, momentum: tl.float64, one_minus_dampening: tl.float64,
    weight_decay: tl.float64, gscale: tl.float64,
    MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr, MAXIMIZE: tl.constexpr, SCALE: tl.constexpr,
    HAS_TABLE: tl.constexpr, INT64: tl.constexpr, CDT: tl.constexpr, BLOCK: tl.constexpr,
):
    """p -= lr * (g' [+ momentum b] | b), b = momentum b + (1 - dampening) g'."""
    offs, mask, g = _prologue(table_ptr, n, g_ptr, scale_ptr, gscale, SCALE, MAXIMIZE, HAS_TABLE, INT64,
                              CDT, BLOCK)
    one = tl.full((), 1.0, tl.float64)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(CDT)
    if WEIGHT_DECAY:
        g = g + (weight_decay * one).to(CDT) * p
    if MOMENTUM:
        mom = (momentum * one).to(CDT)
        if FIRST:
            b = g
        else:
            b = (tl.load(buf_ptr + offs, mask=mask, other=0.0).to(CDT) * mom
                 + (one_minus_dampening * one).to(CDT) * g)
        tl.store(buf_ptr + offs, b.to(buf_ptr.dtype.element_ty), mask=mask)
        if NESTEROV:
            g = g + mom * b
        else:
            g = b
    p = p - (lr * one).to(CDT) * g
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _adagrad_kernel(
    p_ptr, g_ptr, sum_ptr, table_ptr, scale_ptr, hyper_ptr, n,
    clr: tl.float64, weight_decay: tl.float64, eps: tl.float64, gscale: tl.float64,
    WEIGHT_DECAY: tl.constexpr, MAXIMIZE: tl.constexpr, SCALE: tl.constexpr, DEVICE_STEP: tl.constexpr,
    HAS_TABLE: tl.constexpr, INT64: tl.constexpr, CDT: tl.constexpr, BLOCK: tl.constexpr,
):
    """s += g'^2; p -= clr g' / (sqrt(s) + eps); clr from hyper[0] with DEVICE_STEP."""
    offs, mask, g = _prologue(table_ptr, n, g_ptr, scale_ptr, gscale, SCALE, MAXIMIZE, HAS_TABLE, INT64,
                              CDT, BLOCK)
    one = tl.full((), 1.0, tl.float64)
    if DEVICE_STEP:
        clr = tl.load(hyper_ptr)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(CDT)
    if WEIGHT_DECAY:
        g = g + (weight_decay * one).to(CDT) * p
    s = tl.load(sum_ptr + offs, mask=mask, other=0.0).to(CDT) + g * g
    tl.store(sum_ptr + offs, s.to(sum_ptr.dtype.element_ty), mask=mask)
    std = _sqrt(s, CDT) + (eps * one).to(CDT)
    p = p - _div((clr * one).to(CDT) * g, std, CDT)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rmsprop_kernel(
    p_ptr, g_ptr, sq_ptr, avg_ptr, buf_ptr, table_ptr, scale_ptr, n,
    lr: tl.float64, alpha: tl.float64, one_minus_alpha: tl.float64, eps: tl.float64,
    weight_decay: tl.float64, momentum: tl.float64, gscale: tl.float64,
    CENTERED: tl.constexpr, MOMENTUM: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
    MAXIMIZE: tl.constexpr, SCALE: tl.constexpr,
    HAS_TABLE: tl.constexpr, INT64: tl.constexpr, CDT: tl.constexpr, BLOCK: tl.constexpr,
):
    """v = alpha v + (1 - alpha) g'^2; a = sqrt(v [- m^2]) + eps; p -= lr (b | g'/a)."""
    offs, mask, g = _prologue(table_ptr, n, g_ptr, scale_ptr, gscale, SCALE, MAXIMIZE, HAS_TABLE, INT64,
                              CDT, BLOCK)
    one = tl.full((), 1.0, tl.float64)
    w = (one_minus_alpha * one).to(CDT)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(CDT)
    if WEIGHT_DECAY:
        g = g + (weight_decay * one).to(CDT) * p
    v = tl.load(sq_ptr + offs, mask=mask, other=0.0).to(CDT) * (alpha * one).to(CDT) + w * g * g
    tl.store(sq_ptr + offs, v.to(sq_ptr.dtype.element_ty), mask=mask)
    if CENTERED:
        m = _lerp(tl.load(avg_ptr + offs, mask=mask, other=0.0).to(CDT), g, w)
        tl.store(avg_ptr + offs, m.to(avg_ptr.dtype.element_ty), mask=mask)
        a = _sqrt(v - m * m, CDT)
    else:
        a = _sqrt(v, CDT)
    a = a + (eps * one).to(CDT)
    if MOMENTUM:
        b = tl.load(buf_ptr + offs, mask=mask, other=0.0).to(CDT) * (momentum * one).to(CDT) + _div(g, a, CDT)
        tl.store(buf_ptr + offs, b.to(buf_ptr.dtype.element_ty), mask=mask)
        p = p - (lr * one).to(CDT) * b
    else:
        p = p - _div((lr * one).to(CDT) * g, a, CDT)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _adam_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, table_ptr, scale_ptr, hyper_ptr, n,
    step_size: tl.float64, one_minus_beta1: tl.float64, beta2: tl.float64,
    one_minus_beta2: tl.float64, eps: tl.float64, weight_decay: tl.float64,
    decay: tl.float64, bias_correction2_sqrt: tl.float64, gscale: tl.float64,
    AMSGRAD: tl.constexpr, DECOUPLED: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
    MAXIMIZE: tl.constexpr, SCALE: tl.constexpr, DEVICE_STEP: tl.constexpr,
    HAS_TABLE: tl.constexpr, INT64: tl.constexpr, CDT: tl.constexpr, BLOCK: tl.constexpr,
):
    """m = lerp(m, g', 1 - beta1); v = beta2 v + (1 - beta2) g'^2;
    p -= step_size m / (sqrt(v | max(v_max, v)) / sqrt(bc2) + eps); step_size and
    sqrt(bc2) from hyper[0], hyper[1] with DEVICE_STEP (written by _step_kernel)."""
    offs, mask, g = _prologue(table_ptr, n, g_ptr, scale_ptr, gscale, SCALE, MAXIMIZE, HAS_TABLE, INT64,
                              CDT, BLOCK)
    one = tl.full((), 1.0, tl.float64)
    if DEVICE_STEP:
        step_size = tl.load(hyper_ptr)
        bias_correction2_sqrt = tl.load(hyper_ptr + 1)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(CDT)
    if WEIGHT_DECAY:
        if DECOUPLED:
            p = p * (decay * one).to(CDT)
        else:
            g = g + (weight_decay * one).to(CDT) * p
    m = _lerp(tl.load(m_ptr + offs, mask=mask, other=0.0).to(CDT), g, (one_minus_beta1 * one).to(CDT))
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    v = (tl.load(v_ptr + offs, mask=mask, other=0.0).to(CDT) * (beta2 * one).to(CDT)
         + (one_minus_beta2 * one).to(CDT) * g * g)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
    if AMSGRAD:
        v = tl.maximum(tl.load(vmax_ptr + offs, mask=mask, other=0.0).to(CDT), v,
                       propagate_nan=tl.PropagateNan.ALL)
        tl.store(vmax_ptr + offs, v.to(vmax_ptr.dtype.element_ty), mask=mask)
    denom = _div(_sqrt(v, CDT), (bias_correction2_sqrt * one).to(CDT), CDT) + (eps * one).to(CDT)
    p = p - _div((step_size * one).to(CDT) * m, denom, CDT)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _step_kernel(
    step_ptr, index_ptr, count, hyper_ptr, lr: tl.float64, a: tl.float64, b: tl.float64,
    MODE: tl.constexpr, HAS_INDEX: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program: ``step[i] += 1`` for the ``count`` indices ``i`` of the index table
    (HAS_INDEX) or ``0 .. count - 1``, then from ``s``, the new count of the first
    (those advanced together are equal), the update's step-dependent scalars in float64:
    MODE 0 (Adam, a = log2 beta1, b = log2 beta2): hyper = [lr / (1 - beta1^s),
    sqrt(1 - beta2^s)]; MODE 1 (Adagrad, a = lr_decay): hyper = [lr / (1 + (s - 1) a)]."""
    one = tl.full((), 1.0, tl.float64)
    if HAS_INDEX:
        first = tl.load(index_ptr)
    else:
        first = 0
    s = tl.load(step_ptr + first).to(tl.float64) + 1.0
    tl.debug_barrier()  # every thread has read the old count before any writes it
    for start in range(0, count, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < count
        if HAS_INDEX:
            idx = tl.load(index_ptr + offs, mask=mask, other=0)
        else:
            idx = offs
        x = tl.load(step_ptr + idx, mask=mask, other=0)
        tl.store(step_ptr + idx, x + 1, mask=mask)
    if MODE == 0:
        bias_correction1 = 1.0 - tl.exp2(s * (a * one))
        bias_correction2 = 1.0 - tl.exp2(s * (b * one))
        tl.store(hyper_ptr, (lr * one) / bias_correction1)  # div.rn.f64, sqrt.rn.f64: IEEE
        tl.store(hyper_ptr + 1, tl.sqrt(bias_correction2))
    else:
        tl.store(hyper_ptr, (lr * one) / (1.0 + (s - 1.0) * (a * one)))


@triton.jit
def _sumsq_kernel(
    g_ptr, table_ptr, n, partial_ptr, counter_ptr, out_ptr, first, total, max_norm: tl.float64,
    HAS_TABLE: tl.constexpr, INT64: tl.constexpr, CDT: tl.constexpr,
    BLOCK: tl.constexpr, FINAL_BLOCK: tl.constexpr,
):
    """partial[first + pid] = sum of g^2 over this program's blocks (a grid-stride loop
    over ``n`` elements, or over ``n`` table chunks); the last program of all launches
    (``total`` programs) writes out = [norm, min(1, max_norm / (norm + 1e-6))]."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    if INT64:
        pid = pid.to(tl.int64)
    acc = tl.zeros((BLOCK,), CDT)
    if HAS_TABLE:
        for c in range(pid, n, programs):
            start = tl.load(table_ptr + 2 * c)
            stop = tl.load(table_ptr + 2 * c + 1)
            if HAS_TABLE == 2:
                start = tl.multiple_of(start, 16)
                stop = tl.multiple_of(stop, 16)
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(g_ptr + offs, mask=offs < stop, other=0.0).to(CDT)
            acc += x * x
    else:
        for start in range(pid * BLOCK, n, programs * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(g_ptr + offs, mask=offs < n, other=0.0).to(CDT)
            acc += x * x
    tl.store(partial_ptr + first + pid, tl.sum(acc, axis=0))
    # every thread's part of the store happens before the ticket (a CTA barrier), and the
    # ticket's acq_rel atomic publishes it to the program that finishes last
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1)
    if ticket == total - 1:
        s = tl.zeros((FINAL_BLOCK,), CDT)
        for i in range(0, total, FINAL_BLOCK):
            idx = i + tl.arange(0, FINAL_BLOCK)
            # .cg: read at L2, where the other programs' partials are, never a stale L1 line
            s += tl.load(partial_ptr + idx, mask=idx < total, other=0.0, cache_modifier=".cg")
        norm = _sqrt(tl.sum(s, axis=0), CDT)
        coef = _div((max_norm * tl.full((), 1.0, tl.float64)).to(CDT), norm + 1e-6, CDT)
        coef = tl.where(coef > 1.0, 1.0, coef)  # NaN fails the test and stays NaN
        tl.store(out_ptr, norm)
        tl.store(out_ptr + 1, coef)
        tl.store(counter_ptr, 0)  # ready for the next reduction (launches are stream-ordered)
