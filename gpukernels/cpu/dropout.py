"""The ``numpy`` backend's dropout: the reference's, already the fastest NumPy form (the
mask is drawn on the host from the library generator, so every backend drops the same
elements). A later issue may make it faster."""

from ..reference.dropout import dropout_backward, dropout_forward, dropout_mask

__all__ = ["dropout_mask", "dropout_forward", "dropout_backward"]
