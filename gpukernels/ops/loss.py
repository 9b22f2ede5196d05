"""mse_loss, its autograd Function and checks.

Kernels: ``gpukernels/{reference,cpu,triton}/loss.py``.
"""

from __future__ import annotations

from .. import kernels
from ..amp import full_precision
from ._common import KernelFunction, check_reduction, same_dtype, tensor_arg


class MSELossFunction(KernelFunction):
    def forward(self, input, target, reduction):
        self.reduction = reduction
        loss, diff = kernels.loss.on(input).mse_loss_forward(input, target, reduction)
        self.save_for_backward(diff)
        return loss

    def backward(self, g):
        gi = kernels.loss.on(g).mse_loss_backward(g, self.saved[0], self.reduction)
        return (gi if self.needs_input_grad[0] else None), (-gi if self.needs_input_grad[1] else None)


def mse_loss(input, target, reduction="mean"):
    """loss = reduce((input - target)^2) with reduction "mean", "sum" or "none"."""
    tensor_arg(input, "mse_loss: input")
    tensor_arg(target, "mse_loss: target")
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: input shape {input.shape} differs from target shape {target.shape}")
    input, target = full_precision(input, target)
    same_dtype("mse_loss", input=input, target=target)
    check_reduction(reduction)
    return MSELossFunction.apply(input, target, reduction)
