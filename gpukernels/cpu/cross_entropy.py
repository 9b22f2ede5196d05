"""NumPy reference: softmax, log-softmax and softmax cross-entropy (log-sum-exp form).

log_softmax(z) = z - m - log(sum(exp(z - m))) with m = max(z): exp never sees a
positive argument, so logits of 1e4 do not overflow.

Cross-entropy computes the loss AND its gradient in the forward (Liger-Kernel style):
the gradient w.r.t. the logits is (softmax - target distribution) / count, ready the
moment the loss is known; the backward only scales it by the upstream gradient, so the
logits need not be kept. Label smoothing eps mixes the one-hot target with the uniform
distribution: q = (1 - eps) onehot + eps / C.
"""

from __future__ import annotations

from ..backend import get_array_module, to_numpy


def softmax_forward(x, dim):
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=dim, keepdims=True))
    e /= e.sum(axis=dim, keepdims=True)
    return e


def softmax_backward(grad_y, y, dim):
    """dx = y * (g - sum(g * y))."""
    return y * (grad_y - (grad_y * y).sum(axis=dim, keepdims=True))


def log_softmax_forward(x, dim):
    xp = get_array_module(x)
    shifted = x - x.max(axis=dim, keepdims=True)
    shifted -= xp.log(xp.exp(shifted).sum(axis=dim, keepdims=True))
    return shifted


def log_softmax_backward(grad_y, y, dim):
    """dx = g - softmax * sum(g), with softmax = exp(y)."""
    xp = get_array_module(y)
    return grad_y - xp.exp(y) * grad_y.sum(axis=dim, keepdims=True)


def cross_entropy_forward(logits, target, reduction, ignore_index, label_smoothing):
    """Loss and d(loss)/d(logits) for class-index targets.

    Args:
        logits: (N, C) float array.
        target: (N,) integer class indices in [0, C), or ``ignore_index``.
        reduction: "mean" (over non-ignored rows), "sum" or "none".
        ignore_index: rows with this target contribute 0 loss and 0 gradient.
        label_smoothing: eps in [0, 1].

    Returns:
        (loss, grad): loss is a 0-d array, or (N,) for "none"; grad is (N, C) and
        already holds the 1/count of "mean".
    """
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


def cross_entropy_backward(grad_loss, grad_logits, reduction):
    """Scale the gradient saved by the forward by the upstream gradient."""
    if reduction == "none":
        return grad_logits * grad_loss[:, None]
    return grad_logits * grad_loss


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
