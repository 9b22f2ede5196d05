"""The ``numpy`` backend's optimizer updates: the reference's formulas and operation
order (``gpukernels.reference.optim``, itself ``torch.optim``'s order), fused into one
pass over L2-sized blocks of the flat buffers, on both cores (``_blocks``). Global-norm
clipping (``clip_coefficient``) is the reference's.

What each update must move, per element of n (float32: 4 bytes an array)
--------------------------------------------------------------------------
  SGD            read p, g            write p            12 B (no momentum)
  SGD momentum   read p, g, b         write p, b         20 B
  Adagrad        read p, g, sum       write p, sum       20 B
  RMSprop        read p, g, v (m, b)  write p, v (m, b)  20 B (+8 B per extra buffer)
  Adam           read p, g, m, v      write p, m, v      28 B (AMSGrad: +8 B)
The reference runs each rule as a dozen whole-array NumPy operations, each with its own
temporary: Adam moves ~150 B per element on one core (4M float32 parameters: 16 ms).
Here every operation writes into the block's own arrays or into two per-thread scratch
blocks, so memory sees the bytes above once and the rest of the operations hit L2:
Adam over 4M float32 parameters is 112 MB, 4.5 ms at the 24.8 GB/s copy ceiling; its
13 NumPy operations per block cost ~2.5 ms of L2 time per core on top.

Exactness: every operation is the reference's, on the same operands in the same order
(``p -= step_size * m / denom`` as ``(step_size * m) / denom``, lerp's two branches,
``(1 - beta2) * g * g`` left to right), so float64 and float32 results are the
reference's bit for bit; only the grouping into blocks differs, and elementwise
operations do not see it. Folding ``-g`` into the gradient scale (``g * -s`` is
``-(g * s)`` exactly: rounding is symmetric) is the one rewrite.

Arrays the fast path does not take (CuPy, mixed dtypes, non-contiguous arrays) go to
the reference's function, which also raises its errors for them.
"""

from __future__ import annotations

import numpy as np

from ..host_rules import advance_step, is_step_array
from ..reference import optim as reference_optim
from ..reference.optim import clip_coefficient
from ._blocks import flat_spans, run_blocks

__all__ = ["sgd_update", "adagrad_update", "rmsprop_update", "adam_update", "clip_coefficient"]


# ----------------------------------------------------------------------------- shared


def _fast(arrays):
    """``{name: flat 1-D view}`` when every array given is a C-contiguous NumPy array of
    one float dtype and one size (then updates work blocks of their flat views), else
    None (the reference runs)."""
    given = [a for a in arrays.values() if a is not None]
    first = given[0]
    if not all(type(a) is np.ndarray and a.flags.c_contiguous and a.dtype == first.dtype
               and a.size == first.size for a in given):
        return None
    if first.dtype.kind != "f":
        return None
    return {name: None if a is None else a.reshape(-1) for name, a in arrays.items()}


def _grad_factor(g, grad_scale, maximize):
    """The factor the reference applies to ``g`` before anything else (``g * grad_scale``,
    then ``-g`` when maximizing) as one scalar of g's dtype, or None (``g`` as it is);
    ``g * -s == -(g * s)`` bit for bit."""
    if grad_scale is None:
        return -1.0 if maximize else None
    if hasattr(grad_scale, "shape"):
        if grad_scale.size != 1:
            raise ValueError(f"grad_scale: expected one element, got shape {tuple(grad_scale.shape)}")
        # the reference multiplies by a 0-d array of g's dtype (torch's clip_grad_norm_ too)
        s = grad_scale.reshape(()).astype(g.dtype, copy=False)
    else:
        s = g.dtype.type(grad_scale)  # a Python float meets an array as g's dtype
    return -s if maximize else s


def _effective(v, tmp, factor, weight_decay):
    """The block's ``g' = ±g * scale + wd * p`` of the reference (``_scaled`` then
    ``_effective_grad``): ``g`` itself when nothing applies, else written into
    ``tmp[0]`` (``tmp[1]`` serves as scratch)."""
    g = v["g"]
    if factor is None and weight_decay == 0:
        return g
    out = tmp[0]
    if factor is not None:
        np.multiply(g, factor, out=out)
        g = out
    if weight_decay != 0:
        np.multiply(v["p"], weight_decay, out=tmp[1])
        np.add(g, tmp[1], out=out)
    return out


def _host(value, dtype):
    """A float64 0-d count-derived value rounded once to ``dtype`` (the reference's
    ``_as_scalar``)."""
    return np.asarray(value).astype(dtype)


# ----------------------------------------------------------------------------- SGD


def sgd_update(p, g, momentum_buffer, *, lr, momentum=0.0, dampening=0.0,
               weight_decay=0.0, nesterov=False, maximize=False, first_step=False,
               grad_scale=None, segments=None):
    """Stochastic gradient descent with optional (Nesterov) momentum: the arguments,
    formulas and results of ``gpukernels.reference.optim.sgd_update``. Per block:
    g' (0-3 operations), the buffer (1-2), Nesterov's direction (2), ``p -= lr * d`` (2)."""
    arrays = _fast({"p": p, "g": g, "b": momentum_buffer if momentum != 0 else None})
    if arrays is None:
        return reference_optim.sgd_update(
            p, g, momentum_buffer, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, first_step=first_step, grad_scale=grad_scale,
            segments=segments)
    spans = flat_spans(p.size, segments)
    factor = _grad_factor(g, grad_scale, maximize)
    keep = 1 - dampening

    def kernel(v, tmp):
        d = _effective(v, tmp, factor, weight_decay)
        if momentum != 0:
            b = v["b"]
            if first_step:
                b[...] = d
            else:
                b *= momentum
                if keep == 1:  # 1.0 * d is d: one operation fewer, the same bits
                    b += d
                else:
                    np.multiply(d, keep, out=tmp[1])
                    b += tmp[1]
            if nesterov:  # d + momentum * b (addition commutes bit for bit)
                np.multiply(b, momentum, out=tmp[1])
                np.add(d, tmp[1], out=tmp[1])
                d = tmp[1]
            else:
                d = b
        np.multiply(d, lr, out=tmp[1])
        v["p"] -= tmp[1]

    run_blocks(arrays, spans, kernel, 2, 6)


# ----------------------------------------------------------------------------- Adagrad


def adagrad_update(p, g, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                   eps=1e-10, maximize=False, grad_scale=None, segments=None, step_index=None):
    """Adagrad: the arguments, formulas and results of
    ``gpukernels.reference.optim.adagrad_update``. Per block: g' (0-3 operations),
    ``sum += g'^2`` (2), ``std = sqrt(sum) + eps`` (2), ``p -= clr * g' / std`` (3)."""
    arrays = _fast({"p": p, "g": g, "s": state_sum})
    if arrays is None:
        return reference_optim.adagrad_update(
            p, g, state_sum, step=step, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
            maximize=maximize, grad_scale=grad_scale, segments=segments, step_index=step_index)
    if is_step_array(step):
        s = advance_step("adagrad_update", step, step_index, p)
        clr = _host(lr / (1 + (s - 1) * lr_decay), p.dtype)
    else:
        clr = lr / (1 + (step - 1) * lr_decay)
    spans = flat_spans(p.size, segments)
    factor = _grad_factor(g, grad_scale, maximize)

    def kernel(v, tmp):
        d = _effective(v, tmp, factor, weight_decay)
        t = tmp[1]
        np.multiply(d, d, out=t)
        v["s"] += t
        np.sqrt(v["s"], out=t)
        t += eps
        std = t
        u = tmp[2]
        np.multiply(d, clr, out=u)  # (clr * g') / std, the reference's order
        u /= std
        v["p"] -= u

    run_blocks(arrays, spans, kernel, 3, 8)


# ----------------------------------------------------------------------------- RMSprop


def rmsprop_update(p, g, square_avg, grad_avg, momentum_buffer, *, lr, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                   maximize=False, grad_scale=None, segments=None):
    """RMSprop: the arguments, formulas and results of
    ``gpukernels.reference.optim.rmsprop_update``. Per block: g' (0-3 operations),
    ``v`` (4), centered ``m`` and ``v - m^2`` (5), ``avg`` (2), the step (3-4)."""
    arrays = _fast({"p": p, "g": g, "v": square_avg, "m": grad_avg if centered else None,
                    "b": momentum_buffer if momentum > 0 else None})
    if arrays is None:
        return reference_optim.rmsprop_update(
            p, g, square_avg, grad_avg, momentum_buffer, lr=lr, alpha=alpha, eps=eps,
            weight_decay=weight_decay, momentum=momentum, centered=centered, maximize=maximize,
            grad_scale=grad_scale, segments=segments)
    spans = flat_spans(p.size, segments)
    factor = _grad_factor(g, grad_scale, maximize)

    def kernel(v, tmp):
        d = _effective(v, tmp, factor, weight_decay)
        t, u = tmp[1], tmp[2]
        sq = v["v"]
        sq *= alpha
        np.multiply(d, 1 - alpha, out=t)  # (1 - alpha) * g * g, left to right
        t *= d
        sq += t
        if centered:
            _lerp(v["m"], d, 1 - alpha, t)
            np.multiply(v["m"], v["m"], out=t)
            np.subtract(sq, t, out=t)
            np.sqrt(t, out=t)
        else:
            np.sqrt(sq, out=t)
        t += eps
        if momentum > 0:
            b = v["b"]
            b *= momentum
            np.divide(d, t, out=u)
            b += u
            np.multiply(b, lr, out=u)
        else:
            np.multiply(d, lr, out=u)  # (lr * g') / avg
            u /= t
        v["p"] -= u

    run_blocks(arrays, spans, kernel, 3, 12)


# ----------------------------------------------------------------------------- Adam


def _lerp(a, b, weight, t):
    """``a <- a + weight * (b - a)`` in place, the reference's two branches, with ``t`` as
    scratch."""
    np.subtract(b, a, out=t)
    if abs(weight) < 0.5:
        t *= weight
        a += t
    else:
        t *= 1 - weight
        np.subtract(b, t, out=a)


def adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, lr, beta1=0.9,
                beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False,
                maximize=False, grad_scale=None, segments=None, step_index=None):
    """Adam / AdamW, optionally AMSGrad: the arguments, formulas and results of
    ``gpukernels.reference.optim.adam_update``. Per block (13 operations without weight
    decay, gradient scale or AMSGrad): ``m`` by lerp (3), ``v = beta2 v + (1 - beta2) g^2``
    (4), ``denom = sqrt(v) / sqrt(bc2) + eps`` (3), ``p -= (step_size m) / denom`` (3)."""
    arrays = _fast({"p": p, "g": g, "m": exp_avg, "v": exp_avg_sq,
                    "vmax": max_exp_avg_sq if amsgrad else None})
    if arrays is None:
        return reference_optim.adam_update(
            p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
            weight_decay=weight_decay, decoupled=decoupled, amsgrad=amsgrad, maximize=maximize,
            grad_scale=grad_scale, segments=segments, step_index=step_index)
    if is_step_array(step):
        s = advance_step("adam_update", step, step_index, p)
        step_size = _host(lr / (1 - beta1**s), p.dtype)
        bias_correction2_sqrt = _host((1 - beta2**s) ** 0.5, p.dtype)
    else:
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / (1 - beta1**step)
    spans = flat_spans(p.size, segments)
    factor = _grad_factor(g, grad_scale, maximize)
    l2 = 0.0 if decoupled else weight_decay
    shrink = 1 - lr * weight_decay

    def kernel(v, tmp):
        if decoupled and weight_decay != 0:
            v["p"] *= shrink
        d = _effective(v, tmp, factor, l2)
        t, u = tmp[1], tmp[2]
        m, sq = v["m"], v["v"]
        _lerp(m, d, 1 - beta1, t)
        sq *= beta2
        np.multiply(d, 1 - beta2, out=t)
        t *= d
        sq += t
        if amsgrad:
            np.maximum(v["vmax"], sq, out=v["vmax"])
            sq = v["vmax"]
        np.sqrt(sq, out=t)
        t /= bias_correction2_sqrt
        t += eps
        np.multiply(m, step_size, out=u)
        u /= t
        v["p"] -= u

    run_blocks(arrays, spans, kernel, 3, 13)
