"""Adagrad (``torch.optim.Adagrad``)."""

from __future__ import annotations

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
        max_grad_norm: clip the gradients to this global norm first (see ``Optimizer``).
    """

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, *, maximize=False, max_grad_norm=None):
        defaults = {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value,
                    "maximize": maximize}
        super().__init__(params, defaults, max_grad_norm=max_grad_norm)
        for index, group in enumerate(self.param_groups):  # eager state, as torch's Adagrad
            for flat in self._group_flats(index):
                fresh = {"sum": flat.ensure_state("sum", group["initial_accumulator_value"])}
                for i, p in enumerate(flat.params):
                    self._init_state(self.state[p], flat, i, fresh)

    def _validate(self, group):
        check_number("lr", group["lr"], label="learning rate")
        check_number("lr_decay", group["lr_decay"])
        check_number("weight_decay", group["weight_decay"])
        check_number("initial_accumulator_value", group["initial_accumulator_value"])
        check_number("eps", group["eps"], label="epsilon value")

    @staticmethod
    def _init_state(state, flat, index, fresh):
        if not state:
            state["step"] = 0
            state["sum"] = flat.slot("sum", index, reset=not fresh["sum"])

    def _state_specs(self, group):
        return {"sum": group["initial_accumulator_value"]}

    def _prepare(self, param, state, group, flat, index, fresh):
        self._init_state(state, flat, index, fresh)
        state["step"] += 1
        return state["step"]

    def _launch(self, kernels, flat, group, step, segments, grad_scale):
        kernels.adagrad_update(
            flat.data, flat.grad, flat.state["sum"], step=step, lr=group["lr"],
            lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=group["maximize"], grad_scale=grad_scale, segments=segments,
        )
