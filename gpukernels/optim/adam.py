"""Adam and AdamW (``torch.optim.Adam`` / ``torch.optim.AdamW``)."""

from __future__ import annotations

from .optimizer import Optimizer, check_number


class Adam(Optimizer):
    """Adam, optionally AMSGrad, with L2 or decoupled (AdamW) weight decay.

    ``g = ±grad`` (+ ``weight_decay * p``; decoupled: ``p *= 1 - lr * weight_decay``);
    ``m = beta1 * m + (1 - beta1) * g``; ``v = beta2 * v + (1 - beta2) * g^2``
    (AMSGrad: ``v_max = max(v_max, v)`` is used for ``v``);
    ``p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.

    Args:
        params: Parameters or parameter-group dicts.
        lr: learning rate (default 1e-3).
        betas: decay rates ``(beta1, beta2)`` of the moment estimates (default (0.9, 0.999)).
        eps: added to the denominator for stability (default 1e-8).
        weight_decay: weight decay (default 0).
        amsgrad: use the AMSGrad variant.
        maximize: maximize the objective instead of minimizing it.
        decoupled_weight_decay: decay the weights directly (AdamW) instead of adding
            an L2 term to the gradient.
        max_grad_norm: clip the gradients to this global norm first (see ``Optimizer``).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False, max_grad_norm=None):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize,
                    "decoupled_weight_decay": decoupled_weight_decay}
        super().__init__(params, defaults, max_grad_norm=max_grad_norm)

    def _validate(self, group):
        check_number("lr", group["lr"], label="learning rate")
        check_number("eps", group["eps"], label="epsilon value")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Invalid betas: expected a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            check_number(f"betas[{i}]", beta, 0.0, 1.0, label=f"beta parameter at index {i}")
        group["betas"] = tuple(float(b) for b in betas)
        check_number("weight_decay", group["weight_decay"])

    def _state_specs(self, group):
        specs = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if group["amsgrad"]:
            specs["max_exp_avg_sq"] = 0.0
        return specs

    def _prepare(self, param, state, group, flat, index, fresh):
        if not state:
            state["step"] = 0
            for name in ("exp_avg", "exp_avg_sq"):
                state[name] = flat.slot(name, index, reset=not fresh[name])
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = flat.slot("max_exp_avg_sq", index, reset=not fresh["max_exp_avg_sq"])
        state["step"] += 1
        return state["step"]  # the bias corrections depend on it: one call per step count

    def _launch(self, kernels, flat, group, step, segments, grad_scale):
        beta1, beta2 = group["betas"]
        kernels.adam_update(
            flat.data, flat.grad, flat.state["exp_avg"], flat.state["exp_avg_sq"],
            flat.state["max_exp_avg_sq"] if group["amsgrad"] else None,
            step=step, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
            weight_decay=group["weight_decay"], decoupled=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"], maximize=group["maximize"],
            grad_scale=grad_scale, segments=segments,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * wd``
    before the Adam step, instead of adding ``wd * p`` to the gradient.

    Args: as ``Adam``, with ``weight_decay`` defaulting to 1e-2.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, max_grad_norm=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, max_grad_norm=max_grad_norm)

    def _validate(self, group):
        super()._validate(group)
        group["decoupled_weight_decay"] = True
