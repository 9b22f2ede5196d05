"""softmax, log_softmax and cross_entropy (log-sum-exp form; loss and gradient in one pass),
their autograd Functions and checks.

Kernels: ``gpukernels/{reference,cpu,triton}/cross_entropy.py``.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..amp import full_precision
from ..tensor import Tensor
from ._common import KernelFunction, check_dim, check_reduction, tensor_arg


class SoftmaxFunction(KernelFunction):
    def forward(self, x, dim):
        self.dim = dim
        y = kernels.cross_entropy.on(x).softmax_forward(x, dim)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        return kernels.cross_entropy.on(g).softmax_backward(g, self.saved[0], self.dim), None


class LogSoftmaxFunction(KernelFunction):
    def forward(self, x, dim):
        self.dim = dim
        y = kernels.cross_entropy.on(x).log_softmax_forward(x, dim)
        self.save_for_backward(y)
        return y

    def backward(self, g):
        return kernels.cross_entropy.on(g).log_softmax_backward(g, self.saved[0], self.dim), None


def softmax(x, dim=-1):
    """y_i = exp(x_i - max x) / sum_j exp(x_j - max x) along ``dim``."""
    tensor_arg(x, "softmax: input")
    (x,) = full_precision(x)
    return SoftmaxFunction.apply(x, check_dim(dim, x.ndim))


def log_softmax(x, dim=-1):
    """y_i = x_i - max x - log sum_j exp(x_j - max x) along ``dim``."""
    tensor_arg(x, "log_softmax: input")
    (x,) = full_precision(x)
    return LogSoftmaxFunction.apply(x, check_dim(dim, x.ndim))


class CrossEntropyFunction(KernelFunction):
    def forward(self, logits, target, reduction, ignore_index, label_smoothing):
        self.reduction = reduction
        loss, grad_logits = kernels.cross_entropy.on(logits).cross_entropy_forward(
            logits, target, reduction, ignore_index, label_smoothing
        )
        # saved, so backward(retain_graph=True) can run twice and the tape frees it otherwise
        self.save_for_backward(grad_logits)
        return loss

    def backward(self, g):
        (grad_logits,) = self.saved
        if self.last_backward and self.reduction != "none" and _host_one(g, grad_logits.dtype):
            # loss.backward() seeds 1: the saved gradient is the answer, and the tape
            # drops it now, so it is handed out as it is (no read + write of (N, C)).
            return grad_logits, None
        grad = kernels.cross_entropy.on(g).cross_entropy_backward(g, grad_logits, self.reduction)
        return grad, None


def _host_one(g, dtype) -> bool:
    """Whether ``g`` is a host float array equal to 1 in ``dtype`` (on a device the test
    would wait for it, and the scaling kernel costs little there; bf16, held as uint16
    bits, never takes this path)."""
    return (type(g) is np.ndarray and g.dtype == dtype and g.dtype.kind == "f" and g.size == 1
            and bool(g.reshape(()) == 1))


def cross_entropy(logits, target, reduction="mean", ignore_index=-100, label_smoothing=0.0):
    """Softmax cross-entropy with class-index targets, in log-sum-exp form.

    loss_n = -(1 - eps) log p[n, t_n] - eps/C sum_c log p[n, c],  p = softmax(logits[n])

    Args:
        logits: (N, C) unnormalised scores.
        target: (N,) integer class indices (int32/int64) in [0, C) or ``ignore_index``.
        reduction: "mean" (over non-ignored rows), "sum" or "none" (shape (N,)).
        ignore_index: target value whose rows add nothing to the loss or the gradient.
        label_smoothing: eps in [0, 1].
    """
    tensor_arg(logits, "cross_entropy: input", 2)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a Tensor of class indices, got {type(target).__name__}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.shape != (logits.shape[0],):
        raise ValueError(
            f"cross_entropy: target must have shape ({logits.shape[0]},) for input of shape "
            f"{logits.shape}, got {target.shape}"
        )
    check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if target.device != logits.device:
        raise RuntimeError(f"cross_entropy: input is on {logits.device}, target on {target.device}")
    (logits,) = full_precision(logits)
    # out-of-range class indices are checked by the kernels themselves (ValueError naming
    # the first): one pass over the targets, and on a GPU one host sync, not two
    return CrossEntropyFunction.apply(logits, target.data, reduction, int(ignore_index), float(label_smoothing))
