"""NumPy reference: batch normalisation over every axis but the channel axis 1.

Training: the batch mean and biased variance normalise x; the running statistics move
by ``momentum`` towards the batch mean and the UNBIASED variance (PyTorch's rule).
Eval: the running statistics normalise x.

Both directions are a per-channel affine map of whole arrays, so each costs a few
passes and no saved normalised copy:
  forward   y = a x + c,  a = gamma * inv_std,  c = beta - a * mean
  backward  dbeta = sum(g),  dgamma = inv_std * (sum(g x) - mean * dbeta)
            dx = a g + k x + k0   (training: k = -a inv_std dgamma / M,
                                   k0 = -a dbeta / M - k mean;  eval: k = k0 = 0)
with M = N*H*W values per channel. Forward traffic: 2 reads of x (mean, variance of the
centred values) + the in-place map; backward: 2 reads of g and x (two dot products) +
one write of dx.
"""

from __future__ import annotations

from ..backend import get_array_module


def _view(x):
    """x as (N, C, M) with M the flattened spatial size (1 for (N, C) inputs)."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def _channel_sum(x3, xp):
    return xp.einsum("ncm->c", x3)


def _channel_dot(a3, b3, xp):
    return xp.einsum("ncm,ncm->c", a3, b3)


def batch_norm_forward(x, running_mean, running_var, weight, bias, training, momentum, eps):
    """Returns (y, mean, inv_std); mean/inv_std are what normalised x (saved for backward).
    Updates running_mean/var IN PLACE when training."""
    xp = get_array_module(x)
    x3 = _view(x)
    dt = x.dtype
    if training:
        count = x3.shape[0] * x3.shape[2]
        mean = _channel_sum(x3, xp) / dt.type(count)
        y3 = x3 - mean[None, :, None]  # centred: the variance in a second, stable pass
        var = _channel_dot(y3, y3, xp) / dt.type(count)
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean.astype(running_mean.dtype)
            running_var *= 1 - momentum
            running_var += momentum * (var * (count / max(count - 1, 1))).astype(running_var.dtype)
        inv_std = (1.0 / xp.sqrt(var + eps)).astype(dt)
        a = inv_std if weight is None else inv_std * weight
        y3 *= a[None, :, None]
        if bias is not None:
            y3 += bias[None, :, None]
    else:
        mean = running_mean.astype(dt)
        inv_std = (1.0 / xp.sqrt(running_var.astype(dt) + eps)).astype(dt)
        a = inv_std if weight is None else inv_std * weight
        c = -a * mean if bias is None else bias - a * mean
        y3 = x3 * a[None, :, None]
        y3 += c[None, :, None]
    return y3.reshape(x.shape), mean, inv_std


def batch_norm_backward(grad_y, x, mean, inv_std, weight, training, needs=(True, True, True)):
    """Returns (dx, dgamma, dbeta); entries are None where ``needs`` says so."""
    xp = get_array_module(grad_y)
    g3, x3 = _view(grad_y), _view(x)
    dbeta = _channel_sum(g3, xp)
    dgamma = inv_std * (_channel_dot(g3, x3, xp) - mean * dbeta)
    dx = None
    if needs[0]:
        a = inv_std if weight is None else inv_std * weight
        dx = g3 * a[None, :, None]
        if training:
            m = grad_y.dtype.type(g3.shape[0] * g3.shape[2])
            k = -a * inv_std * dgamma / m
            k0 = -a * dbeta / m - k * mean
            dx += x3 * k[None, :, None]
            dx += k0[None, :, None]
        dx = dx.reshape(grad_y.shape)
    return dx, (dgamma if needs[1] else None), (dbeta if needs[2] else None)
