"""SGD with optional momentum, Nesterov momentum, weight decay (``torch.optim.SGD``)."""

from __future__ import annotations

from .. import backend
from .optimizer import Optimizer, check_number


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    ``g = ±grad + weight_decay * p``; with momentum, ``b = g`` on the first step, then
    ``b = momentum * b + (1 - dampening) * g`` and ``g = g + momentum * b`` (Nesterov)
    or ``g = b``; finally ``p -= lr * g``.

    Args:
        params: Parameters or parameter-group dicts.
        lr: learning rate (default 1e-3, as in PyTorch 2.x).
        momentum: momentum factor (default 0).
        dampening: dampening of the momentum (default 0).
        weight_decay: L2 penalty (default 0).
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
        maximize: maximize the objective instead of minimizing it.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False):
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize}
        super().__init__(params, defaults)

    def _validate(self, group):
        check_number("lr", group["lr"], label="learning rate")
        check_number("momentum", group["momentum"])
        check_number("dampening", group["dampening"], low=float("-inf"))
        check_number("weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum and zero dampening, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _update(self, param, grad, group, state):
        buffer, first = None, False
        if group["momentum"] != 0:
            first = "momentum_buffer" not in state or state["momentum_buffer"] is None
            if first:
                xp = backend.get_array_module(param.data)
                state["momentum_buffer"] = xp.empty_like(param.data)  # set to the gradient
            buffer = state["momentum_buffer"]
        self._kernels(param).sgd_update(
            param.data, grad, buffer, lr=group["lr"], momentum=group["momentum"],
            dampening=group["dampening"], weight_decay=group["weight_decay"],
            nesterov=group["nesterov"], maximize=group["maximize"], first_step=first,
        )
