"""Reference mean squared error, forward and backward (NumPy or CuPy arrays).

    d = input - target
    loss = d^2 (reduction "none"), sum(d^2) ("sum"), sum(d^2) / numel ("mean")
    d loss / d input = 2 d g (/ numel for "mean"); d loss / d target is its negative

``d`` is what the forward keeps for the backward. Every result has the inputs' dtype.
"""

from __future__ import annotations


def mse_loss_forward(input, target, reduction):
    """Returns (loss, diff) where diff = input - target is kept for the backward."""
    diff = input - target
    sq = diff * diff
    if reduction == "none":
        return sq, diff
    return (sq.mean() if reduction == "mean" else sq.sum()), diff


def mse_loss_backward(grad, diff, reduction):
    """d loss / d input = 2 (input - target) * g [/ numel for 'mean']; target gets the negative."""
    scale = 2.0 / diff.size if reduction == "mean" else 2.0
    return diff * (grad * diff.dtype.type(scale))
