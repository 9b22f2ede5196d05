"""RMSprop (``torch.optim.RMSprop``)."""

from __future__ import annotations

from .. import backend
from .optimizer import Optimizer, check_number


class RMSprop(Optimizer):
    """RMSprop: divide the gradient by a running root mean square of recent gradients.

    ``g = ±grad + weight_decay * p``; ``v = alpha * v + (1 - alpha) * g^2``; centered:
    ``m = alpha * m + (1 - alpha) * g`` and ``avg = sqrt(v - m^2) + eps``, else
    ``avg = sqrt(v) + eps``; with momentum ``b = momentum * b + g / avg``,
    ``p -= lr * b``, else ``p -= lr * g / avg``.

    Args:
        params: Parameters or parameter-group dicts.
        lr: learning rate (default 1e-2).
        alpha: smoothing constant (default 0.99).
        eps: added to the denominator for stability (default 1e-8).
        weight_decay: L2 penalty (default 0).
        momentum: momentum factor (default 0).
        centered: normalize by an estimate of the gradient's variance.
        maximize: maximize the objective instead of minimizing it.
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, *, maximize=False):
        defaults = {"lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps,
                    "centered": centered, "weight_decay": weight_decay, "maximize": maximize}
        super().__init__(params, defaults)

    def _validate(self, group):
        check_number("lr", group["lr"], label="learning rate")
        check_number("eps", group["eps"], label="epsilon value")
        check_number("momentum", group["momentum"])
        check_number("weight_decay", group["weight_decay"])
        check_number("alpha", group["alpha"])

    def _update(self, param, grad, group, state):
        xp = backend.get_array_module(param.data)
        if not state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(param.data)
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = xp.zeros_like(param.data)
        if group["centered"] and "grad_avg" not in state:
            state["grad_avg"] = xp.zeros_like(param.data)
        state["step"] += 1
        self._kernels(param).rmsprop_update(
            param.data, grad, state["square_avg"],
            state["grad_avg"] if group["centered"] else None,
            state["momentum_buffer"] if group["momentum"] > 0 else None,
            lr=group["lr"], alpha=group["alpha"], eps=group["eps"],
            weight_decay=group["weight_decay"], momentum=group["momentum"],
            centered=group["centered"], maximize=group["maximize"],
        )
