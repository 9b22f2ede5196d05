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
        capturable: whether this instance is safe to capture in a CUDA graph (the
            meaning of PyTorch's ``capturable``, which ``torch.optim.Adagrad`` lacks;
            ``gpukernels.cuda_graph`` records ``step()`` once and replays it).
            ``True``: each parameter's ``state["step"]`` is a 0-d float32 array on its
            device, advanced on the device by the update call, which computes ``clr``
            there from it (one extra one-program kernel per update). ``False``: host int
            counts; with ``lr_decay != 0`` ``step()`` then raises ``RuntimeError`` while a
            graph is being recorded (a replay would keep step N's ``clr``); with
            ``lr_decay == 0`` the update does not depend on the step and may be captured,
            but replays do not advance the host ``state["step"]``. A graph keeps the
            ``lr`` it was captured with, as in PyTorch.
    """

    _capture_reason = "its decayed learning rate (lr_decay) would stay that of step N"

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, *, maximize=False, max_grad_norm=None,
                 capturable=False):
        defaults = {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value,
                    "maximize": maximize, "capturable": bool(capturable)}
        super().__init__(params, defaults, max_grad_norm=max_grad_norm)
        for index, group in enumerate(self.param_groups):  # eager state, as torch's Adagrad
            for flat in self._group_flats(index):
                fresh = {"sum": flat.ensure_state("sum", group["initial_accumulator_value"])}
                for i, p in enumerate(flat.params):
                    self._init_state(p, self.state[p], group, flat, i, fresh)

    def _validate(self, group):
        check_number("lr", group["lr"], label="learning rate")
        check_number("lr_decay", group["lr_decay"])
        check_number("weight_decay", group["weight_decay"])
        check_number("initial_accumulator_value", group["initial_accumulator_value"])
        check_number("eps", group["eps"], label="epsilon value")

    def _step_dependent(self, group):
        return group["lr_decay"] != 0

    def _device_steps(self, group):
        return bool(group.get("capturable", False))

    def _init_state(self, param, state, group, flat, index, fresh):
        if not state:
            state["step"] = self._new_step(param, flat, index, group)
            state["sum"] = flat.slot("sum", index, reset=not fresh["sum"])

    def _state_specs(self, group):
        return {"sum": group["initial_accumulator_value"]}

    def _prepare(self, param, state, group, flat, index, fresh):
        self._init_state(param, state, group, flat, index, fresh)
        return self._advance_step(param, state, group)

    def _launch(self, kernels, flat, group, step, segments, grad_scale, indices):
        step_index = None
        if self._device_steps(group):  # the call advances these counts on the device
            step = flat.steps
            step_index = None if len(indices) == len(flat.params) else tuple(indices)
        kernels.adagrad_update(
            flat.data, flat.grad, flat.state["sum"], step=step, lr=group["lr"],
            lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=group["maximize"], grad_scale=grad_scale, segments=segments, step_index=step_index,
        )
