"""sync_batch_norm: batch norm with the batch statistics of every rank (``nn.SyncBatchNorm``).

The same function as ``batch_norm`` on the global batch (every rank's examples), in
two collectives per layer and step:

- forward: one all-reduce of ``(sum(x - K), sum((x - K)**2), count)`` per channel
  (``2C + 1`` float64 numbers), where the shift ``K`` is the running mean (equal on
  every rank; it keeps ``sumsq/n - mean**2`` from cancelling), giving the global mean
  and biased variance; the normalisation itself is the batch-norm kernel's eval path
  with those statistics (``kernels.batchnorm``);
- backward: one all-reduce of ``(sum(g), sum(g * xhat))`` per channel (``2C``), then
  ``dx = weight * inv_std * (g - sum(g)/N - xhat * sum(g * xhat)/N)`` with ``N`` the
  global count. ``dweight = sum(g * xhat)`` and ``dbias = sum(g)`` are this rank's own
  (DistributedDataParallel averages them like every parameter's gradient), as PyTorch's.

The per-channel sums run as array reductions (NumPy or CuPy, float64 accumulation):
a few passes over ``x`` and ``g`` more than the fused single-process kernel.
"""

from __future__ import annotations

import numpy as np

from .. import backend, distributed, kernels
from ..tensor_ops import ReLUFunction
from ._common import KernelFunction
from .batchnorm import BatchNormFunction, batch_norm, check_batch_norm_args


def _c(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


class SyncBatchNormFunction(KernelFunction):
    """bf16 / fp16 inputs: the sums, and the backward, run on a float32 copy; the
    normalisation runs on the input's dtype in the kernel (float32 statistics)."""

    def forward(self, x, weight, bias, running_mean, running_var, momentum, eps):
        xp = backend.get_array_module(x)
        c, axes = x.shape[1], _axes(x)
        wide = x if x.dtype.itemsize >= 4 else kernels.cast_array(x, np.float32)
        stat_dtype = np.float64 if x.dtype == np.float64 else np.float32
        shift = running_mean.astype(wide.dtype) if running_mean is not None else xp.zeros(c, wide.dtype)
        d = wide - _c(shift, x.ndim)
        stats = xp.concatenate([d.sum(axis=axes, dtype=xp.float64), (d * d).sum(axis=axes, dtype=xp.float64),
                                xp.full(1, x.size // c, dtype=xp.float64)])
        distributed.all_reduce(stats)  # one collective: (sum, sum of squares, count)
        n = float(stats[2 * c])
        m1 = stats[:c] / n
        mean = shift.astype(xp.float64) + m1
        var = xp.maximum(stats[c:2 * c] / n - m1 * m1, 0.0)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * (n / max(n - 1, 1))
        mean, var = mean.astype(stat_dtype), var.astype(stat_dtype)
        y, _, _ = kernels.batchnorm.on(x).batch_norm_forward(x, mean, var, weight, bias, False, momentum, eps)
        inv_std = (1.0 / xp.sqrt(var.astype(xp.float64) + eps)).astype(stat_dtype)
        self.n = n
        self.save_for_backward(x, mean, inv_std, weight)
        return y

    def backward(self, g):
        x, mean, inv_std, weight = self.saved
        xp = backend.get_array_module(g)
        c, axes = x.shape[1], _axes(x)
        if x.dtype.itemsize < 4:
            x, g = kernels.cast_array(x, np.float32), kernels.cast_array(g, np.float32)
        xhat = (x - _c(mean, x.ndim)) * _c(inv_std, x.ndim)
        sums = xp.concatenate([g.sum(axis=axes, dtype=xp.float64), (g * xhat).sum(axis=axes, dtype=xp.float64)])
        local = sums.copy() if any(self.needs_input_grad[1:3]) else None
        distributed.all_reduce(sums)  # one collective: (sum g, sum g * xhat)
        scale = inv_std if weight is None else inv_std * weight.astype(inv_std.dtype)
        dx = None
        if self.needs_input_grad[0]:
            mg = (sums[:c] / self.n).astype(x.dtype)
            mgx = (sums[c:] / self.n).astype(x.dtype)
            dx = _c(scale.astype(x.dtype), x.ndim) * (g - _c(mg, x.ndim) - xhat * _c(mgx, x.ndim))
            dx = kernels.cast_array(dx, self.saved[0].dtype)
        wdtype = weight.dtype if weight is not None else x.dtype
        dw = local[c:].astype(wdtype) if self.needs_input_grad[1] else None
        db = local[:c].astype(wdtype) if self.needs_input_grad[2] else None
        return dx, dw, db, None, None, None, None


def sync_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-5, activation=None):
    """``batch_norm`` whose batch statistics are those of every rank's batch together.

    y = (x - mean) / sqrt(var + eps) * weight + bias per channel (axis 1), mean and var
    over the union of the ranks' batches when training (one all-reduce forward, one
    backward); outside training, or with one process, it is ``batch_norm``.

    Args: as ``batch_norm``; needs ``gk.distributed.init_process_group()`` to sync.
    ``activation="relu"`` is ``batch_norm``'s fused ReLU without a sync, a ReLU op after
    the synced batch norm with one.
    """
    sync = (training and distributed.is_initialized() and distributed.get_world_size() > 1)
    if not sync:
        return batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, activation)
    if activation not in (None, "relu"):
        raise ValueError(f"sync_batch_norm: activation must be None or 'relu', got {activation!r}")
    check_batch_norm_args("sync_batch_norm", x, running_mean, running_var, weight, bias, True, eps)
    rm = running_mean.data if running_mean is not None else None
    rv = running_var.data if running_var is not None else None
    y = SyncBatchNormFunction.apply(x, weight, bias, rm, rv, float(momentum), float(eps))
    return ReLUFunction.apply(y) if activation else y


__all__ = ["sync_batch_norm", "SyncBatchNormFunction", "BatchNormFunction"]
