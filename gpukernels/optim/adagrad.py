"""Adagrad (``torch.optim.Adagrad``)."""

from __future__ import annotations

from .. import backend
from .optimizer import Optimizer, check_number


class Adagrad(Optimizer):
    """Adagrad: per-element learning rates from the accumulated squared gradients.

    ``g = ±grad + weight_decay * p``; ``clr = lr / (1 + (step - 1) * lr_decay)``;
    ``sum += g^2``; ``p -= clr * g / (sqrt(sum) + eps)``. The accumulator starts at
    ``initial_accumulator_value`` and is created with the optimizer, as in PyTorch.

    Args:
        params: Parameters or parameter-group dicts.
        lr: learning rate (default 1e-2).
        lr_decay: learning-rate decay per step (default 0).
        weight_decay: L2 penalty (default 0).
        initial_accumulator_value: start value of the sum of squares (default 0).
        eps: added to the denominator for stability (default 1e-10).
        maximize: maximize the objective instead of minimizing it.
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, *, maximize=False):
        defaults = {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value,
                    "maximize": maximize}
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, group, self.state[p])

    def _validate(self, group):
        check_number("lr", group["lr"], label="learning rate")
        check_number("lr_decay", group["lr_decay"])
        check_number("weight_decay", group["weight_decay"])
        check_number("initial_accumulator_value", group["initial_accumulator_value"])
        check_number("eps", group["eps"], label="epsilon value")

    @staticmethod
    def _init_state(param, group, state):
        if not state:
            xp = backend.get_array_module(param.data)
            state["step"] = 0
            state["sum"] = xp.full_like(param.data, group["initial_accumulator_value"])

    def _update(self, param, grad, group, state):
        self._init_state(param, group, state)
        state["step"] += 1
        self._kernels(param).adagrad_update(
            param.data, grad, state["sum"], step=state["step"], lr=group["lr"],
            lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=group["maximize"],
        )
