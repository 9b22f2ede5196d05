"""Parameter: a leaf Tensor that a Module registers and an optimizer updates."""

from __future__ import annotations

from ..tensor import Tensor


class Parameter(Tensor):
    """A tensor that is a module's learnable state; ``requires_grad`` defaults to True.

    Optimizers update ``param.data`` in place, so views of it (a flat buffer, a
    state_dict entry) stay valid.
    """

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad)  # a Tensor's data (and version counter) is shared

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()
