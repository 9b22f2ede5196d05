"""What every op family's public function shares: argument checks that name the
argument and show what was received, and the base of the kernel-backed Functions."""

from __future__ import annotations

import numbers

from ..autograd import Function, check_same_dtype
from ..dtypes import FLOATS
from ..tensor import Tensor


class KernelFunction(Function):
    """An op whose kernels (Triton: bf16 as uint16) handle every float dtype."""

    bf16 = True


def tensor_arg(x, name, ndim=None, floating=True):
    """``x``, checked: a Tensor with ``ndim`` dimensions (an int or a tuple of them) and,
    with ``floating``, a floating-point dtype; the error names ``name`` and what came."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if floating and x.dtype not in FLOATS:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def same_dtype(op, **tensors):
    """One dtype per op, the rule ``@`` follows too (``autograd.check_same_dtype``)."""
    check_same_dtype(op, "gk.autocast casts float32 operands of conv2d / linear for you", **tensors)


def check_reduction(reduction):
    """A loss's ``reduction``: "mean", "sum" or "none"."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def check_slope(negative_slope):
    """Leaky ReLU's slope as a float >= 0."""
    if not isinstance(negative_slope, numbers.Real) or negative_slope < 0:
        # the backward reads the saved output, whose sign is the input's only for slope >= 0
        raise ValueError(f"negative_slope must be a number >= 0, got {negative_slope!r}")
    return float(negative_slope)


def check_dim(dim, ndim, name="dim"):
    """``dim`` in [-ndim, ndim) as a non-negative axis."""
    if not isinstance(dim, numbers.Integral) or not -ndim <= dim < max(ndim, 1):
        raise ValueError(f"{name} must be an int in [{-ndim}, {ndim}), got {dim!r}")
    return int(dim) % max(ndim, 1)
