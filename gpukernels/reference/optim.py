"""Reference optimizer updates with the rules of ``torch.optim``, and the global-norm
clipping coefficient of ``torch.nn.utils.clip_grad_norm_`` (NumPy or CuPy arrays).

Every update function updates the parameter array ``p`` and its state arrays IN PLACE
(views of ``p`` stay valid) and never writes the gradient ``g``. The arithmetic follows
the order of PyTorch's ``_single_tensor_*`` implementations, so float64 results agree
with ``torch.optim`` to rounding. Step-dependent scalars (bias corrections, the decayed
Adagrad rate) are computed on the host as Python floats from an int ``step``, or, when
``step`` is an array (the optimizers' ``capturable=True``), on the arrays' device from
the count it holds, which the update advances in place first (``step += 1``), as
``torch.optim``'s capturable path does: nothing is read back to the host, so a captured
update replays with the count of each replay. The ``numpy`` backend runs these
functions (``gpukernels.cpu.optim`` re-exports them); the Triton backend
(``gpukernels.triton.optim``) implements the same names and signatures, each update as
one kernel (two with a step array: the count's advance, then the update); the argument
checks both run (``check_step``, ``check_norm_args``) live in ``gpukernels.host_rules``.

Two keyword arguments serve the optimizers' flat buffers (``gpukernels.optim.flat``),
where every parameter of a group is a slice of one array:

- ``grad_scale``: ``None``, a float, or a one-element array (on the arrays' device: a
  clipping coefficient from ``clip_coefficient``, never read back to the host); the
  update sees ``g * grad_scale`` (``g`` itself is not written).
- ``segments``: ``None`` (every element) or ``(start, stop)`` pairs of element offsets
  into the flattened (C-contiguous) arrays: only those elements are read or written.
  The optimizers skip parameters without a gradient this way, as ``torch.optim`` does.
"""

from __future__ import annotations

from ..backend import get_array_module
from ..host_rules import advance_step, check_norm_args, is_step_array, norm_dtype


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


def _scaled(g, grad_scale):
    """``g * grad_scale`` as a new array (the clipped gradient), or ``g`` itself."""
    if grad_scale is None:
        return g
    if hasattr(grad_scale, "shape"):
        if grad_scale.size != 1:
            raise ValueError(f"grad_scale: expected one element, got shape {tuple(grad_scale.shape)}")
        # same dtype as g, as torch's clip_grad_norm_ multiplies g by a coefficient of g's dtype
        return g * grad_scale.reshape(()).astype(g.dtype, copy=False)
    return g * grad_scale


def _pieces(segments, **arrays):
    """The arrays themselves (``segments is None``), or, per ``(start, stop)`` pair, the
    slices ``[start:stop]`` of their flattened views (``None`` entries stay ``None``)."""
    if segments is None:
        yield arrays
        return
    flat = {}
    size = None
    for name, a in arrays.items():
        if a is None:
            flat[name] = None
            continue
        if not a.flags.c_contiguous:
            raise ValueError(f"segments: {name} must be C-contiguous to be sliced in place, "
                             f"got strides {a.strides} for shape {tuple(a.shape)}")
        flat[name] = a.reshape(-1)
        size = a.size if size is None else size
    for start, stop in segments:
        if not 0 <= start <= stop <= size:
            raise ValueError(f"segments: ({start}, {stop}) is not a range inside the {size} elements")
        yield {name: None if a is None else a[start:stop] for name, a in flat.items()}


def _as_scalar(value, dtype):
    """A device float64 0-d value as a 0-d array of ``dtype``: one rounding, the one a
    Python float gets when it meets an array of ``dtype``, so the update is the same."""
    return get_array_module(value).asarray(value).astype(dtype)




def sgd_update(p, g, momentum_buffer, *, lr, momentum=0.0, dampening=0.0,
               weight_decay=0.0, nesterov=False, maximize=False, first_step=False,
               grad_scale=None, segments=None):
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
        grad_scale, segments: see the module docstring.
    """
    for a in _pieces(segments, p=p, g=g, b=momentum_buffer):
        _sgd(a["p"], _scaled(a["g"], grad_scale), a["b"], lr, momentum, dampening,
             weight_decay, nesterov, maximize, first_step)


def _sgd(p, g, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov, maximize,
         first_step):
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
                   eps=1e-10, maximize=False, grad_scale=None, segments=None, step_index=None):
    """Adagrad.

    ``g' = ±g + wd * p``;  ``clr = lr / (1 + (step - 1) * lr_decay)``;
    ``sum += g'^2``;  ``p -= clr * g' / (sqrt(sum) + eps)``.

    Args:
        p: parameter array, updated in place.
        g: gradient array (read only).
        state_sum: accumulated squared gradients, updated in place.
        step: the step number, counting from 1 for the first update; or (capturable)
            a float32 / int32 array of step counts on ``p``'s device, BEFORE this
            update: advanced in place (``+= 1``) first, ``clr`` then computed on the
            device from the new count (see ``step_index``).
        lr, lr_decay, weight_decay, eps: as in ``torch.optim.Adagrad``.
        maximize: ascend instead of descend.
        grad_scale, segments: see the module docstring.
        step_index: with a step array, the indices of the counts to advance (default:
            every element); they must be equal, the first one's new value is used.
    """
    if is_step_array(step):
        s = advance_step("adagrad_update", step, step_index, p)
        clr = _as_scalar(lr / (1 + (s - 1) * lr_decay), p.dtype)
    else:
        clr = lr / (1 + (step - 1) * lr_decay)
    for a in _pieces(segments, p=p, g=g, s=state_sum):
        _adagrad(a["p"], _scaled(a["g"], grad_scale), a["s"], clr, weight_decay, eps, maximize)


def _adagrad(p, g, state_sum, clr, weight_decay, eps, maximize):
    xp = get_array_module(p)
    g = _effective_grad(p, g, maximize, weight_decay)
    state_sum += g * g
    std = xp.sqrt(state_sum)
    std += eps
    p -= clr * g / std


def rmsprop_update(p, g, square_avg, grad_avg, momentum_buffer, *, lr, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                   maximize=False, grad_scale=None, segments=None):
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
        grad_scale, segments: see the module docstring.
    """
    for a in _pieces(segments, p=p, g=g, v=square_avg, m=grad_avg, b=momentum_buffer):
        _rmsprop(a["p"], _scaled(a["g"], grad_scale), a["v"], a["m"], a["b"], lr, alpha, eps,
                 weight_decay, momentum, centered, maximize)


def _rmsprop(p, g, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay,
             momentum, centered, maximize):
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
                maximize=False, grad_scale=None, segments=None, step_index=None):
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
        step: the step number, counting from 1 for the first update; or (capturable)
            a float32 / int32 array of step counts on ``p``'s device, BEFORE this
            update: advanced in place (``+= 1``) first, the bias corrections then
            computed on the device from the new count (see ``step_index``), as
            ``torch.optim.Adam(capturable=True)``.
        lr, beta1, beta2, eps, weight_decay, amsgrad: as in ``torch.optim.Adam``.
        decoupled: AdamW's decoupled weight decay instead of the L2 term.
        maximize: ascend instead of descend.
        grad_scale, segments: see the module docstring.
        step_index: with a step array, the indices of the counts to advance (default:
            every element); they must be equal, the first one's new value is used.
    """
    if is_step_array(step):
        s = advance_step("adam_update", step, step_index, p)
        # float64 on the device, the host path's arithmetic (NumPy's pow: within about
        # an ulp of Python's ``**``), then rounded once to p's dtype as the host path's
        # Python floats are: float32 updates come out the same, float64 ones to ~1e-16
        step_size = _as_scalar(lr / (1 - beta1**s), p.dtype)
        bias_correction2_sqrt = _as_scalar((1 - beta2**s) ** 0.5, p.dtype)
    else:
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        step_size = lr / bias_correction1
    for a in _pieces(segments, p=p, g=g, m=exp_avg, v=exp_avg_sq,
                     vmax=max_exp_avg_sq if amsgrad else None):
        _adam(a["p"], _scaled(a["g"], grad_scale), a["m"], a["v"], a["vmax"], lr, beta1, beta2,
              eps, weight_decay, decoupled, amsgrad, maximize, step_size, bias_correction2_sqrt)


def _adam(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
          decoupled, amsgrad, maximize, step_size, bias_correction2_sqrt):
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
    if amsgrad:
        xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = xp.sqrt(second)
    denom /= bias_correction2_sqrt
    denom += eps
    p -= step_size * exp_avg / denom


def clip_coefficient(grads, max_norm, *, segments=None):
    """The global gradient norm and the clipping coefficient of
    ``torch.nn.utils.clip_grad_norm_(params, max_norm)``, without touching the gradients.

    ``norm = sqrt(sum_i sum_j g_i[j]^2)`` over every array of ``grads`` (only the given
    segments of each); ``coef = min(1, max_norm / (norm + 1e-6))`` (NaN when the norm
    is NaN, as ``torch.clamp``). Pass ``result[1:]`` as ``grad_scale`` to an update: the
    update then sees the clipped gradient while the coefficient stays on the device.

    Args:
        grads: a non-empty list of gradient arrays on one device.
        max_norm: the largest norm the clipped gradients may have (a float > 0).
        segments: ``None``, or one entry per array: ``None`` or ``(start, stop)``
            element ranges of that (C-contiguous) array.

    Returns:
        A two-element array ``[norm, coef]`` on the gradients' device, float32
        (float64 when a gradient is float64).
    """
    grads, segments = check_norm_args(grads, max_norm, segments)
    xp = get_array_module(grads[0])
    dtype = norm_dtype(grads)
    total = xp.zeros((), dtype=dtype)
    for g, seg in zip(grads, segments):
        for a in _pieces(seg, g=g):
            x = a["g"].astype(dtype, copy=False)
            total += (x * x).sum(dtype=dtype)
    norm = xp.sqrt(total)
    coef = dtype.type(max_norm) / (norm + dtype.type(1e-6))
    coef = xp.where(coef > 1, dtype.type(1.0), coef)  # NaN stays NaN, as torch.clamp(max=1)
    return xp.stack([norm, coef]).astype(dtype)
