"""RMSprop (``torch.optim.RMSprop``)."""

from __future__ import annotations

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
        max_grad_norm: clip the gradients to this global norm first (see ``Optimizer``).
        capturable: accepted for PyTorch's interface (its meaning: safe to capture in a
            CUDA graph); it changes nothing, because RMSprop's update does not depend on
            the step count: every step after the first (which creates the state: capture
            then raises ``RuntimeError``, run at least one eager step first) may be
            captured either way. ``state["step"]`` stays a host int that only eager
            steps advance (graph replays do not): it is informational, the update never
            reads it. A graph keeps the ``lr`` it was captured with.
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, *, maximize=False, max_grad_norm=None, capturable=False):
        defaults = {"lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps,
                    "centered": centered, "weight_decay": weight_decay, "maximize": maximize,
                    "capturable": bool(capturable)}
        super().__init__(params, defaults, max_grad_norm=max_grad_norm)

    def _validate(self, group):
        check_number("lr", group["lr"], label="learning rate")
        check_number("eps", group["eps"], label="epsilon value")
        check_number("momentum", group["momentum"])
        check_number("weight_decay", group["weight_decay"])
        check_number("alpha", group["alpha"])

    def _state_specs(self, group):
        specs = {"square_avg": 0.0}
        if group["momentum"] > 0:
            specs["momentum_buffer"] = 0.0
        if group["centered"]:
            specs["grad_avg"] = 0.0
        return specs

    def _prepare(self, param, state, group, flat, index, fresh):
        if not state:
            state["step"] = 0
            state["square_avg"] = flat.slot("square_avg", index, reset=not fresh["square_avg"])
        for name, wanted in (("momentum_buffer", group["momentum"] > 0), ("grad_avg", group["centered"])):
            if wanted and name not in state:
                state[name] = flat.slot(name, index, reset=not fresh[name])
        state["step"] += 1
        return None  # the update does not depend on the step: one call for all

    def _launch(self, kernels, flat, group, key, segments, grad_scale, indices):
        kernels.rmsprop_update(
            flat.data, flat.grad, flat.state["square_avg"],
            flat.state["grad_avg"] if group["centered"] else None,
            flat.state["momentum_buffer"] if group["momentum"] > 0 else None,
            lr=group["lr"], alpha=group["alpha"], eps=group["eps"],
            weight_decay=group["weight_decay"], momentum=group["momentum"],
            centered=group["centered"], maximize=group["maximize"],
            grad_scale=grad_scale, segments=segments,
        )
