"""benchmarks.profile: the per-family breakdown of a training step counts every kernel call
once, under its family and phase, and leaves the dispatch table as it found it."""

from __future__ import annotations

import numpy as np

import gpukernels as gk
from gpukernels import kernels
from models.cnn import digits_cnn
from models.train import make_train_step


def test_profile_counts_each_family_and_restores_the_table():
    from benchmarks import profile

    before = {name: f.cpu for name, f in kernels.FAMILIES.items()}
    model = digits_cnn()
    opt = gk.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = make_train_step(model, opt)
    x = gk.tensor(np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32))
    y = gk.tensor(np.array([0, 1, 2, 3]))
    result = profile.profile(step, (x, y), steps=2, warmup=1)
    assert {name: f.cpu for name, f in kernels.FAMILIES.items()} == before
    rows = {(f, ph): (s, n) for f, ph, s, n in result["rows"]}
    assert rows[("conv", "forward")][1] == rows[("conv", "backward")][1] == 2  # two convs per step
    assert rows[("optim", "update")][1] == 1 and rows[("cross_entropy", "forward")][1] == 1
    kernel_s = sum(s for s, _ in rows.values())
    assert 0 < kernel_s <= result["step_s"] and result["autograd_python_s"] >= 0
    text = profile.format_profile(result, "digits")
    assert "conv" in text and "autograd + Python" in text
