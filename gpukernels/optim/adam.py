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
        capturable: whether this instance is safe to capture in a CUDA graph
            (PyTorch's meaning; ``gpukernels.cuda_graph`` records ``step()`` once and
            replays it). ``True``: each parameter's ``state["step"]`` is a 0-d float32
            array on its device, advanced on the device by the update call, and the bias
            corrections are computed there from it (one extra one-program kernel per
            update: leave it ``False`` unless you capture). ``False``: host int counts
            and host-computed bias corrections; ``step()`` then raises ``RuntimeError``
            while a graph is being recorded, since a replay would keep step N's bias
            corrections. Hyper-parameters stay Python floats: a graph keeps the ``lr`` it
            was captured with, as in PyTorch. The flag stays this optimizer's through
            ``load_state_dict`` (checkpoints load whatever their writer's flag).
    """

    _capture_reason = "its bias corrections would stay those of step N"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False, max_grad_norm=None,
                 capturable=False):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize, "capturable": bool(capturable),
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

    def _step_dependent(self, group):
        return True  # the bias corrections

    def _device_steps(self, group):
        return bool(group.get("capturable", False))

    def _state_specs(self, group):
        specs = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if group["amsgrad"]:
            specs["max_exp_avg_sq"] = 0.0
        return specs

    def _prepare(self, param, state, group, flat, index, fresh):
        if not state:
            state["step"] = self._new_step(param, flat, index, group)
            for name in ("exp_avg", "exp_avg_sq"):
                state[name] = flat.slot(name, index, reset=not fresh[name])
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = flat.slot("max_exp_avg_sq", index, reset=not fresh["max_exp_avg_sq"])
        # the bias corrections depend on the count: one call per count (host), or per
        # cohort of equal device counts (capturable)
        return self._advance_step(param, state, group)

    def _launch(self, kernels, flat, group, step, segments, grad_scale, indices):
        beta1, beta2 = group["betas"]
        step_index = None
        if self._device_steps(group):  # the call advances these counts on the device
            step = flat.steps
            step_index = None if len(indices) == len(flat.params) else tuple(indices)
        kernels.adam_update(
            flat.data, flat.grad, flat.state["exp_avg"], flat.state["exp_avg_sq"],
            flat.state["max_exp_avg_sq"] if group["amsgrad"] else None,
            step=step, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
            weight_decay=group["weight_decay"], decoupled=group["decoupled_weight_decay"],
            amsgrad=group["amsgrad"], maximize=group["maximize"],
            grad_scale=grad_scale, segments=segments, step_index=step_index,
        )


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * wd``
    before the Adam step, instead of adding ``wd * p`` to the gradient.

    Args: as ``Adam``, with ``weight_decay`` defaulting to 1e-2; ``capturable`` as
    ``Adam``'s (device step counts and bias corrections, for CUDA graphs).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, max_grad_norm=None, capturable=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True, max_grad_norm=max_grad_norm, capturable=capturable)

    def _validate(self, group):
        super()._validate(group)
        group["decoupled_weight_decay"] = True
