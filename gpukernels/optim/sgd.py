"""SGD with optional momentum, Nesterov momentum, weight decay (``torch.optim.SGD``)."""

from __future__ import annotations

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
        max_grad_norm: clip the gradients to this global norm first (see ``Optimizer``).
        capturable: accepted for a uniform interface (PyTorch's meaning: safe to capture
            in a CUDA graph); it changes nothing, because SGD's update never depends on
            the step count after the first step: every SGD step may be captured except
            the first one with momentum, which creates the momentum buffers (``step()``
            then raises ``RuntimeError`` while a graph is being recorded: run at least
            one eager step before capture). A graph keeps the ``lr`` it was captured with.
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, max_grad_norm=None, capturable=False):
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening,
                    "weight_decay": weight_decay, "nesterov": nesterov, "maximize": maximize,
                    "capturable": bool(capturable)}
        super().__init__(params, defaults, max_grad_norm=max_grad_norm)

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

    def _state_specs(self, group):
        return {"momentum_buffer": 0.0} if group["momentum"] != 0 else {}

    def _prepare(self, param, state, group, flat, index, fresh):
        # as torch: the buffer appears in the state after the first update with momentum
        # and is the gradient then (first_step), so its slot's content does not matter
        if group["momentum"] == 0:
            return False
        first = state.get("momentum_buffer") is None
        if first:
            state["momentum_buffer"] = flat.slot("momentum_buffer", index)
        return first

    def _launch(self, kernels, flat, group, first, segments, grad_scale, indices):
        kernels.sgd_update(
            flat.data, flat.grad, flat.state["momentum_buffer"] if group["momentum"] != 0 else None,
            lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
            weight_decay=group["weight_decay"], nesterov=group["nesterov"],
            maximize=group["maximize"], first_step=first, grad_scale=grad_scale, segments=segments,
        )
