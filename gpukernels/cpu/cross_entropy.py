"""The ``numpy`` backend's softmax, log-softmax and softmax cross-entropy (formulas:
``gpukernels.reference.cross_entropy``, log-sum-exp form).

Cross-entropy computes the loss AND its gradient in the forward (Liger-Kernel style):
the gradient w.r.t. the logits is (softmax - q) / count, q = (1 - eps) onehot + eps / C,
ready the moment the loss is known. Here in five passes over (N, C), in place in the
gradient's buffer, where the reference forms log-softmax, q and the gradient as whole
arrays. Softmax, log-softmax and the backward are the reference's, already the fastest
NumPy form.
"""

from __future__ import annotations

from ..backend import get_array_module, to_numpy
from ..reference.cross_entropy import (  # noqa: F401 - already the fastest NumPy form
    cross_entropy_backward,
    log_softmax_backward,
    log_softmax_forward,
    softmax_backward,
    softmax_forward,
)

__all__ = ["softmax_forward", "softmax_backward", "log_softmax_forward", "log_softmax_backward",
           "cross_entropy_forward", "cross_entropy_backward"]


def cross_entropy_forward(logits, target, reduction, ignore_index, label_smoothing):
    """Loss and d(loss)/d(logits) for class-index targets: the arguments, results and
    errors of ``gpukernels.reference.cross_entropy.cross_entropy_forward``."""
    xp = get_array_module(logits)
    n, c = logits.shape
    dt = logits.dtype.type
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= c))
    if bool(bad.any()):  # a negative index would silently pick another class
        first = int(to_numpy(bad).nonzero()[0][0])
        raise ValueError(f"cross_entropy: target[{first}] = {int(target[first])} is not a class "
                         f"index in [0, {c}) nor ignore_index={ignore_index}")
    safe_target = xp.where(valid, target, 0)
    rows = xp.arange(n)
    # Five passes over (N, C): max, shift, exp, sum, scale. The exp'ed buffer becomes
    # the gradient in place; log p is only needed at the target (and its row mean).
    grad = logits - logits.max(axis=1, keepdims=True)  # z - m <= 0: exp cannot overflow
    shifted_target = grad[rows, safe_target]
    shifted_mean = grad.mean(axis=1) if label_smoothing else None
    xp.exp(grad, out=grad)
    total = grad.sum(axis=1)
    lse = xp.log(total)  # log sum exp(z - m)
    per_row = lse - shifted_target  # -log p[target]
    if label_smoothing:
        per_row = (1 - label_smoothing) * per_row + label_smoothing * (lse - shifted_mean)
    per_row = xp.where(valid, per_row, 0).astype(logits.dtype)

    # d loss_n / d z = (softmax - q) * scale_n, scale_n = [valid] (/ count for "mean")
    scale = valid.astype(logits.dtype)
    count = valid.sum()
    if reduction == "mean":
        # every row ignored: the loss is 0/0 = nan but the gradient stays 0, as in PyTorch
        scale /= xp.maximum(count, 1).astype(logits.dtype)
    grad *= (scale / total)[:, None]
    grad[rows, safe_target] -= dt(1 - label_smoothing) * scale
    if label_smoothing:
        grad -= (dt(label_smoothing / c) * scale)[:, None]
    if reduction == "none":
        return per_row, grad
    if reduction == "sum":
        return per_row.sum(), grad
    with _quiet(xp):
        return (per_row.sum() / count).astype(logits.dtype), grad


class _quiet:
    def __init__(self, xp):
        self.xp = xp

    def __enter__(self):
        if hasattr(self.xp, "errstate"):
            self._ctx = self.xp.errstate(divide="ignore", invalid="ignore")
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if hasattr(self, "_ctx"):
            self._ctx.__exit__(*exc)
