"""NumPy/CuPy reference: per-parameter optimizer updates, the rules of ``torch.optim``.

Every function updates the parameter array ``p`` and its state arrays IN PLACE (views
of ``p`` stay valid) and never writes the gradient ``g``. The arithmetic follows the
order of PyTorch's ``_single_tensor_*`` implementations, so float64 results agree with
``torch.optim`` to rounding. Step-dependent scalars (bias corrections, the decayed
Adagrad rate) are computed on the host as Python floats. The same names and signatures
are what a Triton backend (``gpukernels.triton.optim``) implements.
"""

from __future__ import annotations

from ..backend import get_array_module


def _lerp_(a, b, weight):
    """``a <- a + weight * (b - a)`` in place, in PyTorch's two-branch form."""
    if abs(weight) < 0.5:
        a += weight * (b - a)
    else:
        a[...] = b - (b - a) * (1 - weight)


def _effective_grad(p, g, maximize, weight_decay):
    """``-g`` when maximizing, plus the L2 term ``weight_decay * p``; a new array when
    either applies, so the caller's gradient is never modified."""
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


def sgd_update(p, g, momentum_buffer, *, lr, momentum=0.0, dampening=0.0,
               weight_decay=0.0, nesterov=False, maximize=False, first_step=False):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    ``g' = ±g + wd * p``;  with momentum: ``b = g'`` on the first step, else
    ``b = momentum * b + (1 - dampening) * g'``; the direction is ``g' + momentum * b``
    (Nesterov) or ``b``;  ``p -= lr * direction``.

    Args:
        p: parameter array, updated in place.
        g: gradient array (read only).
        momentum_buffer: array like ``p`` (its content is ignored on the first step),
            or ``None`` when ``momentum == 0``.
        lr, momentum, dampening, weight_decay: hyper-parameters as in ``torch.optim.SGD``.
        nesterov: use Nesterov momentum.
        maximize: ascend instead of descend.
        first_step: the buffer is initialised with the gradient instead of decayed.
    """
    g = _effective_grad(p, g, maximize, weight_decay)
    if momentum != 0:
        if first_step:
            momentum_buffer[...] = g
        else:
            momentum_buffer *= momentum
            momentum_buffer += (1 - dampening) * g
        g = g + momentum * momentum_buffer if nesterov else momentum_buffer
    p -= lr * g


def adagrad_update(p, g, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                   eps=1e-10, maximize=False):
    """Adagrad.

    ``g' = ±g + wd * p``;  ``clr = lr / (1 + (step - 1) * lr_decay)``;
    ``sum += g'^2``;  ``p -= clr * g' / (sqrt(sum) + eps)``.

    Args:
        p: parameter array, updated in place.
        g: gradient array (read only).
        state_sum: accumulated squared gradients, updated in place.
        step: the step number, counting from 1 for the first update.
        lr, lr_decay, weight_decay, eps: as in ``torch.optim.Adagrad``.
        maximize: ascend instead of descend.
    """
    xp = get_array_module(p)
    g = _effective_grad(p, g, maximize, weight_decay)
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum += g * g
    std = xp.sqrt(state_sum)
    std += eps
    p -= clr * g / std


def rmsprop_update(p, g, square_avg, grad_avg, momentum_buffer, *, lr, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                   maximize=False):
    """RMSprop (Hinton), optionally centered and with momentum.

    ``g' = ±g + wd * p``;  ``v = alpha * v + (1 - alpha) * g'^2``;  centered:
    ``m = lerp(m, g', 1 - alpha)``, ``avg = sqrt(v - m^2) + eps``, else
    ``avg = sqrt(v) + eps``;  momentum: ``b = momentum * b + g' / avg``, ``p -= lr * b``;
    otherwise ``p -= lr * g' / avg``.

    Args:
        p: parameter array, updated in place.
        g: gradient array (read only).
        square_avg: running average of squared gradients ``v``, updated in place.
        grad_avg: running average of gradients ``m`` (``centered``), else ``None``.
        momentum_buffer: ``b`` (zeros at start) when ``momentum > 0``, else ``None``.
        lr, alpha, eps, weight_decay, momentum, centered: as in ``torch.optim.RMSprop``.
        maximize: ascend instead of descend.
    """
    xp = get_array_module(p)
    g = _effective_grad(p, g, maximize, weight_decay)
    square_avg *= alpha
    square_avg += (1 - alpha) * g * g
    if centered:
        _lerp_(grad_avg, g, 1 - alpha)
        avg = xp.sqrt(square_avg - grad_avg * grad_avg)
    else:
        avg = xp.sqrt(square_avg)
    avg += eps
    if momentum > 0:
        momentum_buffer *= momentum
        momentum_buffer += g / avg
        p -= lr * momentum_buffer
    else:
        p -= lr * g / avg


def adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, *, step, lr, beta1=0.9,
                beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False,
                maximize=False):
    """Adam / AdamW, optionally AMSGrad.

    ``g' = ±g`` (+ ``wd * p`` unless ``decoupled``; decoupled: ``p *= 1 - lr * wd``);
    ``m = lerp(m, g', 1 - beta1)``;  ``v = beta2 * v + (1 - beta2) * g'^2``;
    AMSGrad: ``v_max = max(v_max, v)`` replaces ``v`` below;
    ``p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)``.

    Args:
        p: parameter array, updated in place.
        g: gradient array (read only).
        exp_avg, exp_avg_sq: first and second moment estimates, updated in place.
        max_exp_avg_sq: running maximum of ``exp_avg_sq`` (``amsgrad``), else ``None``.
        step: the step number, counting from 1 for the first update.
        lr, beta1, beta2, eps, weight_decay, amsgrad: as in ``torch.optim.Adam``.
        decoupled: AdamW's decoupled weight decay instead of the L2 term.
        maximize: ascend instead of descend.
    """
    xp = get_array_module(p)
    if decoupled:
        g = _effective_grad(p, g, maximize, 0.0)
        if weight_decay != 0:
            p *= 1 - lr * weight_decay
    else:
        g = _effective_grad(p, g, maximize, weight_decay)
    _lerp_(exp_avg, g, 1 - beta1)
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    step_size = lr / bias_correction1
    if amsgrad:
        xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = xp.sqrt(second)
    denom /= bias_correction2_sqrt
    denom += eps
    p -= step_size * exp_avg / denom
