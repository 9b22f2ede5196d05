"""Optimizers with the interface and update rules of ``torch.optim``.

Each param group's parameters, gradients and state live as views of one flat buffer
per (device, dtype) (``flat.py``); ``step()`` makes one call of the backend's update
function (``kernels.optim.for_device(device)``: ``gpukernels.cpu.optim`` on
NumPy, ``gpukernels.triton.optim`` on the Triton backends, one kernel launch) per
buffer, updating it in place. ``max_grad_norm=`` fuses global-norm gradient clipping
into the step. ``capturable=True`` (Adam, AdamW, Adagrad; accepted by SGD and RMSprop,
where it changes nothing) keeps the step counts on the device so that ``step()`` can
be recorded in a CUDA graph (``gpukernels.cuda_graph``); see ``optimizer.py``.
"""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .flat import FlatParams
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "FlatParams"]
