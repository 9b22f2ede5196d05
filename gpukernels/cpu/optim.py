"""The ``numpy`` backend's optimizer updates and global-norm clipping: the reference's,
already the fastest NumPy form (whole-array in-place ufuncs in ``torch.optim``'s order).
A later issue may make it faster (fewer temporaries)."""

from ..reference.optim import adagrad_update, adam_update, clip_coefficient, rmsprop_update, sgd_update

__all__ = ["sgd_update", "adagrad_update", "rmsprop_update", "adam_update", "clip_coefficient"]
