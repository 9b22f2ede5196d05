"""The ``numpy`` backend's linear layer: the reference's, already the fastest NumPy form
(one BLAS GEMM per product). A later issue may make it faster."""

from ..reference.linear import linear_backward, linear_forward

__all__ = ["linear_forward", "linear_backward"]
