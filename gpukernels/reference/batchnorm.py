"""NumPy reference: batch normalisation over every axis but the channel axis 1.

Training: mean and biased variance of the batch normalise x; the running statistics
move by ``momentum`` towards the batch mean and the UNBIASED variance (PyTorch's rule).
Eval: the running statistics normalise x. Backward (training) in two passes:
  dbeta = sum(g), dgamma = sum(g * xhat),
  dx = gamma / sqrt(var + eps) * (g - dbeta / M - xhat * dgamma / M),  M = N*H*W.
In eval the statistics are constants: dx = gamma / sqrt(var + eps) * g.
"""

from __future__ import annotations


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bshape(x):
    return (1, -1) + (1,) * (x.ndim - 2)


def batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """Returns (y, xhat, inv_std). Updates running_mean/var IN PLACE when training."""
    axes, shape = _axes(x), _bshape(x)
    if training:
        count = x.size // x.shape[1]
        mean = x.mean(axis=axes)
        centered = x - mean.reshape(shape)
        var = (centered * centered).mean(axis=axes)
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean.astype(running_mean.dtype)
            unbiased = var * (count / max(count - 1, 1))
            running_var *= 1 - momentum
            running_var += momentum * unbiased.astype(running_var.dtype)
    else:
        mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
        centered = x - mean.reshape(shape)
    inv_std = (1.0 / (var + eps) ** 0.5).astype(x.dtype)
    xhat = centered * inv_std.reshape(shape)
    y = xhat if weight is None else xhat * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y, xhat, inv_std


def batch_norm_backward(grad_y, xhat, inv_std, weight, training, needs=(True, True, True)):
    """Returns (dx, dgamma, dbeta); entries are None where ``needs`` says so."""
    axes, shape = _axes(grad_y), _bshape(grad_y)
    dbeta = grad_y.sum(axis=axes)
    dgamma = (grad_y * xhat).sum(axis=axes)
    dx = None
    if needs[0]:
        scale = inv_std if weight is None else inv_std * weight
        if training:
            m = grad_y.size // grad_y.shape[1]
            dx = grad_y - (dbeta / m).reshape(shape) - xhat * (dgamma / m).reshape(shape)
            dx *= scale.reshape(shape)
        else:
            dx = grad_y * scale.reshape(shape)
    return dx, (dgamma if needs[1] else None), (dbeta if needs[2] else None)
