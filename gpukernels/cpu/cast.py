"""The ``numpy`` backend's dtype conversion (bf16 bit patterns included): the
reference's, already the fastest NumPy form (one ``astype``, or the bf16 rounding of
``gpukernels.dtypes``). A later issue may make it faster."""

from ..reference.cast import cast

__all__ = ["cast"]
