"""``gk.nn``: Module, Parameter and layers with PyTorch's names and defaults."""

from . import init, parallel
from .layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool2d,
    MSELoss,
    ReLU,
    Residual,
    Sigmoid,
    Softmax,
    SyncBatchNorm,
    Tanh,
)
from .module import Module, Sequential
from .parameter import Parameter
from .. import functional

__all__ = [
    "Module", "Parameter", "Sequential", "Conv2d", "Linear", "ReLU", "LeakyReLU", "Sigmoid",
    "Tanh", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "Dropout", "BatchNorm1d",
    "BatchNorm2d", "Residual", "CrossEntropyLoss", "MSELoss", "Softmax", "LogSoftmax", "init",
    "functional", "parallel", "SyncBatchNorm",
]
