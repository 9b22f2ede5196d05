"""What the reference tests share: PyTorch float64 as the oracle's oracle.

``torch_run(fn, *arrays)`` runs ``fn`` on float64 torch leaves holding ``arrays`` and
backpropagates one random upstream gradient (returned, so the reference's backward gets
the same one); ``ATOL``/``RTOL`` are the float64 tolerances every family meets.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

#: float64 reference vs float64 torch: rounding only (a few ulps of the larger sums).
ATOL, RTOL = 1e-10, 1e-9


def torch_run(fn, *arrays, seed=7):
    """``(y, g, grads)``: ``y = fn(*leaves)`` as numpy, the upstream gradient ``g`` drawn
    for y's shape, and each array's gradient (None for None inputs and integer arrays)."""
    leaves = [None if a is None else torch.tensor(np.asarray(a), requires_grad=np.asarray(a).dtype.kind == "f")
              for a in arrays]
    y = fn(*leaves)
    g = np.random.default_rng(seed).standard_normal(tuple(y.shape))
    wrt = [t for t in leaves if t is not None and t.requires_grad]
    grads = iter(torch.autograd.grad(y, wrt, torch.tensor(g), allow_unused=True)) if wrt else iter(())
    out = []
    for t in leaves:
        if t is None or not t.requires_grad:
            out.append(None)
        else:
            got = next(grads)
            out.append(np.zeros(tuple(t.shape)) if got is None else got.numpy())
    return y.detach().numpy(), g, out
