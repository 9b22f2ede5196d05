"""Property tests (hypothesis): every optimizer, on drawn parameter sets (count, shapes)
and drawn hyper-parameters, against ``torch.optim`` in float64 over a few steps with the
same drawn gradients; on the numpy backend (tight) and, with fewer examples, on the fused
Triton update under the interpreter (float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gpukernels as gk
from tests.helpers import assert_close
from tests.property.test_ops import BACKEND_IDS, _run, _setup

param_shapes = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple), min_size=1, max_size=5)
lrs = st.sampled_from([1e-3, 1e-2, 0.1])
wds = st.sampled_from([0.0, 1e-2])

OPTIMIZERS = {
    "SGD": st.fixed_dictionaries({"lr": lrs, "momentum": st.sampled_from([0.0, 0.9]), "weight_decay": wds,
                                  "dampening": st.sampled_from([0.0, 0.1]), "maximize": st.booleans()}),
    "SGD nesterov": st.fixed_dictionaries({"lr": lrs, "momentum": st.sampled_from([0.5, 0.9]), "weight_decay": wds,
                                           "nesterov": st.just(True)}),
    "Adam": st.fixed_dictionaries({"lr": lrs, "betas": st.sampled_from([(0.9, 0.999), (0.5, 0.9)]),
                                   "eps": st.sampled_from([1e-8, 1e-3]), "weight_decay": wds,
                                   "amsgrad": st.booleans(), "maximize": st.booleans()}),
    "AdamW": st.fixed_dictionaries({"lr": lrs, "weight_decay": st.sampled_from([0.0, 1e-2, 0.1]),
                                    "amsgrad": st.booleans()}),
    "Adagrad": st.fixed_dictionaries({"lr": lrs, "lr_decay": st.sampled_from([0.0, 1e-2]), "weight_decay": wds,
                                      "initial_accumulator_value": st.sampled_from([0.0, 0.1])}),
    "RMSprop": st.fixed_dictionaries({"lr": lrs, "alpha": st.sampled_from([0.99, 0.9]), "weight_decay": wds,
                                      "momentum": st.sampled_from([0.0, 0.9]), "centered": st.booleans()}),
}


@pytest.mark.parametrize("name", BACKEND_IDS)
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_optimizer_matches_torch(name, opt_name):
    dtype, atol, rtol = _setup(name)
    cls = opt_name.split()[0]

    @given(param_shapes, OPTIMIZERS[opt_name], st.integers(1, 3), st.integers(0, 999))
    def body(shapes, kwargs, steps, seed):
        rng = np.random.default_rng(seed)
        values = [rng.standard_normal(s).astype(dtype) for s in shapes]
        ours = [gk.nn.Parameter(gk.tensor(v.copy())) for v in values]
        theirs = [torch.tensor(v.astype(np.float64), requires_grad=True) for v in values]
        opt, topt = getattr(gk.optim, cls)(ours, **kwargs), getattr(torch.optim, cls)(theirs, **kwargs)
        for step in range(steps):
            for p, t in zip(ours, theirs):
                g = rng.standard_normal(t.shape)
                p.grad = gk.tensor(g.astype(dtype))
                t.grad = torch.tensor(g)
            opt.step()
            topt.step()
        for i, (p, t) in enumerate(zip(ours, theirs)):
            assert_close(p, t.detach(), atol=atol, rtol=rtol,
                         name=f"{opt_name} {kwargs} after {steps} steps, parameter {i} of shape {tuple(t.shape)}")

    _run(name, body)
