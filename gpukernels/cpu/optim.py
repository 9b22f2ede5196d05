"""The ``numpy`` backend's optimizer updates and global-norm clipping: the reference's,
already the fastest NumPy form (whole-array in-place ufuncs in ``torch.optim``'s order).
A later issue may make it faster (fewer temporaries)."""

from ..reference.optim import (
    STEP_DTYPES,
    adagrad_update,
    adam_update,
    check_norm_args,
    check_step,
    clip_coefficient,
    is_step_array,
    norm_dtype,
    rmsprop_update,
    sgd_update,
)

# gpukernels.triton.optim imports these two under their old private names from here;
# they go when it imports the public ones of gpukernels.reference.optim.
_check_norm_args, _norm_dtype = check_norm_args, norm_dtype

__all__ = ["STEP_DTYPES", "adagrad_update", "adam_update", "check_norm_args", "check_step",
           "clip_coefficient", "is_step_array", "norm_dtype", "rmsprop_update", "sgd_update"]
