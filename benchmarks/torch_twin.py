"""Build the PyTorch twin of a gpukernels model, with the same weights, so a benchmark
or a test can compare the two on the same input."""

from __future__ import annotations

from collections import OrderedDict

import torch

import gpukernels as gk
from gpukernels import nn


def torch_twin(module: nn.Module, dtype=torch.float32) -> torch.nn.Module:
    """A ``torch.nn`` module computing what ``module`` computes, weights copied."""

    def copy(dst, src):
        values = src.float() if src.dtype == gk.bfloat16 else src  # bf16: values, not uint16 bits
        with torch.no_grad():
            dst.copy_(torch.from_numpy(values.numpy()).to(dtype))

    if isinstance(module, nn.Sequential):  # subclasses too (models.resnet.BasicBlock)
        # keep the children's names, so named (OrderedDict) models keep their parameter keys
        return torch.nn.Sequential(OrderedDict(
            (name, torch_twin(m, dtype)) for name, m in module.named_children()))
    if isinstance(module, nn.Conv2d):
        conv = torch.nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                               module.stride, module.padding, module.dilation, module.groups,
                               bias=module.bias is not None, dtype=dtype)
        copy(conv.weight, module.weight)
        if module.bias is not None:
            copy(conv.bias, module.bias)
        if module.activation == "relu":
            return torch.nn.Sequential(conv, torch.nn.ReLU())
        if module.activation == "leaky_relu":
            return torch.nn.Sequential(conv, torch.nn.LeakyReLU(module.negative_slope))
        return conv
    if isinstance(module, nn.Linear):
        lin = torch.nn.Linear(module.in_features, module.out_features,
                              bias=module.bias is not None, dtype=dtype)
        copy(lin.weight, module.weight)
        if module.bias is not None:
            copy(lin.bias, module.bias)
        return lin
    if isinstance(module, nn.BatchNorm2d):
        cls = _TorchBatchNormReLU if module.activation == "relu" else torch.nn.BatchNorm2d
        bn = cls(module.num_features, module.eps, module.momentum, dtype=dtype)
        copy(bn.weight, module.weight)
        copy(bn.bias, module.bias)
        copy(bn.running_mean, module.running_mean)
        copy(bn.running_var, module.running_var)
        return bn
    if isinstance(module, nn.Residual):
        return _TorchResidual(torch_twin(module.body, dtype),
                              None if module.shortcut is None else torch_twin(module.shortcut, dtype),
                              module.activation)
    simple = {
        nn.ReLU: lambda m: torch.nn.ReLU(),
        nn.LeakyReLU: lambda m: torch.nn.LeakyReLU(m.negative_slope),
        nn.Sigmoid: lambda m: torch.nn.Sigmoid(),
        nn.Tanh: lambda m: torch.nn.Tanh(),
        nn.MaxPool2d: lambda m: torch.nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation),
        nn.AvgPool2d: lambda m: torch.nn.AvgPool2d(m.kernel_size, m.stride, m.padding,
                                                   count_include_pad=m.count_include_pad),
        nn.AdaptiveAvgPool2d: lambda m: torch.nn.AdaptiveAvgPool2d(m.output_size),
        nn.Flatten: lambda m: torch.nn.Flatten(m.start_dim, m.end_dim),
        nn.Dropout: lambda m: torch.nn.Dropout(m.p),
    }
    for kind, make in simple.items():
        if type(module) is kind:
            return make(module)
    raise TypeError(f"torch_twin: no PyTorch twin for {type(module).__name__}")


class _TorchBatchNormReLU(torch.nn.BatchNorm2d):
    """``nn.BatchNorm2d(..., activation="relu")`` in PyTorch: relu(batch_norm(x)), with
    BatchNorm2d's parameter and buffer names (a Sequential would prefix them)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


class _TorchResidual(torch.nn.Module):
    """``nn.Residual`` in PyTorch: body(x) + shortcut(x), then relu with activation="relu"."""

    def __init__(self, body, shortcut, activation=None):
        super().__init__()
        self.body, self.shortcut, self.activation = body, shortcut, activation

    def forward(self, x):
        y = self.body(x) + (x if self.shortcut is None else self.shortcut(x))
        return torch.relu(y) if self.activation == "relu" else y
