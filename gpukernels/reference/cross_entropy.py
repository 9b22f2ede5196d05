"""Reference softmax, log-softmax and softmax cross-entropy (NumPy or CuPy arrays).

Along ``dim``, with m = max(z) (so exp only sees arguments <= 0: logits of 1e4 do not
overflow):

  softmax      y = exp(z - m) / sum(exp(z - m))        dz = y (g - sum(g y))
  log_softmax  y = z - m - log(sum(exp(z - m)))        dz = g - exp(y) sum(g)

Cross-entropy of logits z (N, C) against class indices t (N,), label smoothing eps:

  q[n]     = (1 - eps) onehot(t[n]) + eps / C           (the target distribution)
  loss[n]  = -sum_c q[n, c] log_softmax(z[n])_c           (0 where t[n] == ignore_index)
           = -(1 - eps) log_softmax(z[n])_t - eps mean_c log_softmax(z[n])_c
  "mean"   sum(loss) / count,  count = rows not ignored (0/0 = nan when all are)
  "sum"    sum(loss);  "none": loss (N,)
  dz[n]    = (softmax(z[n]) - q[n]) * scale[n],  scale = [t != ignore_index] (/ count for
             "mean"; 0 rows stay 0 even when count is 0)

The forward returns the loss AND dz (Liger-Kernel style: the backward only multiplies
dz by the upstream gradient), so the logits need not be kept. Results have the logits'
dtype.
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

    Raises:
        ValueError: naming the first target that is neither a class index nor
            ``ignore_index`` (a negative index would silently pick another class).
    """
    xp = get_array_module(logits)
    n, c = logits.shape
    dt = logits.dtype
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= c))
    if bool(bad.any()):
        first = int(to_numpy(bad).nonzero()[0][0])
        raise ValueError(f"cross_entropy: target[{first}] = {int(target[first])} is not a class "
                         f"index in [0, {c}) nor ignore_index={ignore_index}")
    safe = xp.where(valid, target, 0)
    q = (1 - label_smoothing) * (xp.arange(c) == safe[:, None]) + label_smoothing / c
    logp = log_softmax_forward(logits, 1)
    # -sum_c q log p, written so that a masked class (logit -inf, q = 0) adds no 0 * -inf
    loss = -logp[xp.arange(n), safe]
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * logp.mean(axis=1)
    loss = xp.where(valid, loss, 0).astype(dt)
    count = int(valid.sum())
    scale = valid / max(count, 1) if reduction == "mean" else valid * 1.0
    grad = ((xp.exp(logp) - q) * scale[:, None]).astype(dt)
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return loss.sum(), grad
    total = loss.sum()
    return (total / count if count else total * float("nan")).astype(dt), grad


def cross_entropy_backward(grad_loss, grad_logits, reduction):
    """Scale the gradient saved by the forward by the upstream gradient (per row for
    "none")."""
    if reduction == "none":
        return grad_logits * grad_loss[:, None]
    return grad_logits * grad_loss
