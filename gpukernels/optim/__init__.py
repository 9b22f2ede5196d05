"""Optimizers with the interface and update rules of ``torch.optim``.

``step()`` hands every parameter to the backend's update functions
(``backend.kernels("optim", device)``: ``gpukernels.reference.optim`` today), which
update ``param.data`` in place.
"""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW"]
