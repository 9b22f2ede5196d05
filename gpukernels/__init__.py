"""gpukernels: fused GPU kernels for training CNNs, with a NumPy path for every op.

    import gpukernels as gk
    x = gk.tensor(data, requires_grad=True)
    loss = gk.functional.cross_entropy(model(x), target)
    loss.backward()

``torch``, ``triton`` and ``cupy`` are imported lazily: NumPy alone is enough here.
"""

from . import backend
from .backend import cuda_available, get_backend, set_backend
from .autograd import Function, enable_grad, is_grad_enabled, no_grad
from .dtypes import bfloat16, bool_, float16, float32, float64, int32, int64
from .tensor import Tensor
from .creation import tensor
from .random import manual_seed
from .amp import autocast, get_autocast_dtype
from . import cuda_graph, data, distributed, functional, nn, optim  # noqa: E402 - they import the names above
from .creation import arange, ones, randn, zeros, ones_like, zeros_like  # noqa: E402,F811
from .serialization import load, save  # noqa: E402 - safetensors files, never pickles

__version__ = "0.1.0"

__all__ = [
    "Function", "Tensor", "tensor", "no_grad", "enable_grad", "is_grad_enabled",
    "set_backend", "get_backend", "cuda_available", "backend", "manual_seed",
    "functional", "nn", "optim", "cuda_graph", "data", "distributed", "zeros", "ones", "randn", "arange", "zeros_like",
    "ones_like", "float16", "float32", "float64", "int32", "int64", "bool_", "bfloat16",
    "autocast", "get_autocast_dtype", "save", "load",
]
