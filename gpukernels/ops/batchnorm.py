"""batch_norm: per-channel normalisation with running statistics, its autograd Function and checks.

Kernels: ``gpukernels/{reference,cpu,triton}/batchnorm.py``.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ._common import KernelFunction, tensor_arg


class BatchNormFunction(KernelFunction):
    """Batch norm, optionally followed by a ReLU in the same forward pass (the kernels'
    ``activation``); the backward hands the saved output to the kernel (``y``), which
    masks g by ``y > 0`` before batch norm's backward of it (the numpy backend's compiled
    kernels in the same passes; the others with relu's own backward kernel first)."""

    def forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps, activation):
        y, mean, inv_std = kernels.batchnorm.on(x).batch_norm_forward(
            x, running_mean, running_var, weight, bias, training, momentum, eps, activation=activation
        )
        self.training, self.activation = training, activation
        self.save_for_backward(x, mean, inv_std, weight, y if activation else None)
        return y

    def backward(self, g):
        x, mean, inv_std, weight, y = self.saved
        return kernels.batchnorm.on(g).batch_norm_backward(
            g, x, mean, inv_std, weight, self.training, needs=self.needs_input_grad[:3], y=y
        )


def check_batch_norm_args(op, x, running_mean, running_var, weight, bias, training, eps) -> bool:
    """The checks of ``batch_norm`` and ``sync_batch_norm``; returns whether the batch's
    statistics are used (also without running statistics, as PyTorch)."""
    tensor_arg(x, f"{op}: input", (2, 3, 4))
    c = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None and tensor_arg(t, f"{op}: {name}", 1).shape != (c,):
            raise ValueError(f"{op}: {name} must have shape ({c},), got {t.shape}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        training = True  # no running statistics: normalise with the batch's, as PyTorch
    if training and x.shape[0] * int(np.prod(x.shape[2:])) < 2:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got input of shape {x.shape}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    return bool(training)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, activation=None):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, per channel (axis 1); with
    ``activation="relu"``, max(y, 0).

    Training uses the batch statistics and moves ``running_mean`` / ``running_var`` (updated
    in place) by ``momentum`` towards them (unbiased variance); eval uses the running ones.

    Args:
        x: (N, C) or (N, C, H, W).
        running_mean, running_var: (C,) tensors or None (then batch statistics always).
        weight, bias: (C,) affine parameters or None.
        activation: None, or "relu": the ReLU of ``batch_norm -> relu`` in the same pass
            over y (numpy backend: one more operation on each block while in cache,
            instead of a ReLU pass reading y and writing a new tensor); the same values
            as ``relu(batch_norm(...))``.
    """
    training = check_batch_norm_args("batch_norm", x, running_mean, running_var, weight, bias, training, eps)
    if activation not in (None, "relu"):
        raise ValueError(f"batch_norm: activation must be None or 'relu', got {activation!r}")
    rm = running_mean.data if running_mean is not None else None
    rv = running_var.data if running_var is not None else None
    return BatchNormFunction.apply(x, weight, bias, rm, rv, bool(training), float(momentum), float(eps),
                                   activation)
