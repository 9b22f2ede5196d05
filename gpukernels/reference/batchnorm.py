"""Reference batch normalisation over every axis but the channel axis 1 (NumPy or CuPy).

Per channel c, over the n = N * H * W values of x[:, c] (x is (N, C), (N, C, L) or
(N, C, H, W)):

  training  mean = sum(x) / n,  var = sum((x - mean)^2) / n    (biased: normalises x)
            running_mean <- (1 - momentum) running_mean + momentum mean
            running_var  <- (1 - momentum) running_var  + momentum var n / (n - 1)
                                           (unbiased, PyTorch's rule; updated IN PLACE)
  eval      mean = running_mean,  var = running_var
  forward   inv_std = 1 / sqrt(var + eps),  xhat = (x - mean) inv_std,
            y = gamma xhat + beta              (gamma = 1, beta = 0 when None)
  backward  dbeta = sum(g),  dgamma = sum(g xhat)
            training  dx = gamma inv_std (g - dbeta / n - xhat dgamma / n)
            eval      dx = gamma inv_std g     (the statistics do not depend on x)

Everything is computed in float64 and rounded once to x's dtype (y, the saved mean and
inv_std, the gradients): float32 sums over N*H*W values would lose digits, and the
``numpy`` backend forms its statistics in float64 too.
"""

from __future__ import annotations

from ..backend import get_array_module


def _per_channel(v, ndim, xp):
    """(C,) values as float64 broadcastable against x: shape (1, C, 1, ...)."""
    return xp.asarray(v, dtype=xp.float64).reshape((1, -1) + (1,) * (ndim - 2))


def _axes(x):
    """Every axis but the channel axis 1."""
    return (0,) + tuple(range(2, x.ndim))


def batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps, activation=None):
    """Returns (y, mean, inv_std), each of x's dtype; mean and inv_std (C,) are what
    normalised x, saved for the backward. Updates running_mean / running_var IN PLACE
    when training (skipped when they are None). ``activation="relu"``: y = max(y, 0)
    (its gradient is ``activation.relu_backward``'s, applied to grad_y before
    ``batch_norm_backward``)."""
    if activation not in (None, "relu"):
        raise ValueError(f"batch_norm: activation must be None or 'relu', got {activation!r}")
    xp = get_array_module(x)
    x64, axes = x.astype(xp.float64), _axes(x)
    if training:
        n = x.size // x.shape[1]
        mean = x64.mean(axis=axes)
        var = ((x64 - _per_channel(mean, x.ndim, xp)) ** 2).mean(axis=axes)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * (n / max(n - 1, 1))
    else:
        mean, var = running_mean.astype(xp.float64), running_var.astype(xp.float64)
    inv_std = 1.0 / xp.sqrt(var + eps)
    y = (x64 - _per_channel(mean, x.ndim, xp)) * _per_channel(inv_std, x.ndim, xp)
    if weight is not None:
        y = y * _per_channel(weight, x.ndim, xp)
    if bias is not None:
        y = y + _per_channel(bias, x.ndim, xp)
    if activation == "relu":
        y = xp.maximum(y, 0)
    return y.astype(x.dtype), mean.astype(x.dtype), inv_std.astype(x.dtype)


def batch_norm_backward(grad_y, x, mean, inv_std, weight, training, needs=(True, True, True), y=None):
    """Returns (dx, dgamma, dbeta) of grad_y's dtype; an entry is None where ``needs``
    says it is not wanted. ``y``: the forward's output when it applied
    ``activation="relu"``; grad_y is then the gradient of that ReLU's output, and is
    masked by ``y > 0`` first."""
    xp = get_array_module(grad_y)
    g, axes = grad_y.astype(xp.float64), _axes(x)
    if y is not None:
        g = g * (y > 0)
    n = x.size // x.shape[1]
    inv = _per_channel(inv_std, x.ndim, xp)
    xhat = (x.astype(xp.float64) - _per_channel(mean, x.ndim, xp)) * inv
    dbeta = g.sum(axis=axes)
    dgamma = (g * xhat).sum(axis=axes)
    dx = None
    if needs[0]:
        scale = inv if weight is None else inv * _per_channel(weight, x.ndim, xp)
        if training:
            dx = scale * (g - _per_channel(dbeta, x.ndim, xp) / n - xhat * _per_channel(dgamma, x.ndim, xp) / n)
        else:
            dx = scale * g
        dx = dx.astype(grad_y.dtype)
    return (dx,
            dgamma.astype(grad_y.dtype) if needs[1] else None,
            dbeta.astype(grad_y.dtype) if needs[2] else None)
