"""gpukernels.reference.optim against torch.optim in float64, function by function:
every update rule with its options over several steps (state updated in place, the
gradient never written), a step-count array (``capturable``), ``grad_scale`` and
``segments``; and ``clip_coefficient`` against ``torch.nn.utils.clip_grad_norm_``."""

from __future__ import annotations

import numpy as np
import pytest

from gpukernels.reference import optim
from tests.helpers import assert_close
from tests.reference.common import torch

STEPS = 5
SIZE = 11


def _torch_run(name, kwargs, p0, grads):
    p = torch.tensor(p0, requires_grad=True)
    opt = getattr(torch.optim, name)([p], **kwargs)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy()


def _grads(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SIZE) for _ in range(STEPS)]


def _ours(name, kwargs, p, grads, step_array=False):
    """Run our update ``STEPS`` times on ``p`` (in place) with fresh zero state."""
    z = lambda: np.zeros_like(p)  # noqa: E731
    if name == "SGD":
        buf = z() if kwargs.get("momentum", 0) else None
        for i, g in enumerate(grads):
            optim.sgd_update(p, g, buf, first_step=i == 0, **kwargs)
        return
    step = np.zeros(1, np.float32) if step_array else None
    if name == "Adagrad":
        s = z()
        for i, g in enumerate(grads):
            optim.adagrad_update(p, g, s, step=step if step_array else i + 1, **kwargs)
    elif name == "RMSprop":
        m = z() if kwargs.get("centered") else None
        b = z() if kwargs.get("momentum", 0) else None
        v = z()
        for g in grads:
            optim.rmsprop_update(p, g, v, m, b, **kwargs)
    else:  # Adam / AdamW
        kw = dict(kwargs)
        decoupled = name == "AdamW"
        if "betas" in kw:
            kw["beta1"], kw["beta2"] = kw.pop("betas")
        m, v, vmax = z(), z(), z() if kw.get("amsgrad") else None
        for i, g in enumerate(grads):
            optim.adam_update(p, g, m, v, vmax, step=step if step_array else i + 1, decoupled=decoupled, **kw)


CASES = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.2, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "maximize": True}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1, "eps": 1e-9}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.7, "centered": True, "maximize": True}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "amsgrad": True, "maximize": True}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.3}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
]


@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{n}-{'-'.join(k)}" for n, k in CASES])
def test_updates_match_torch_optim(name, kwargs):
    p0, grads = np.random.default_rng(0).standard_normal(SIZE), _grads()
    want = _torch_run(name, dict(kwargs), p0, grads)
    p = p0.copy()
    view = p[2:5]  # a view taken before the update sees it
    kept = [g.copy() for g in grads]
    _ours(name, dict(kwargs), p, grads)
    assert_close(p, want, atol=1e-12, rtol=1e-12, name=name)
    assert_close(view, want[2:5], atol=1e-12, rtol=1e-12, name="view")
    for g, g0 in zip(grads, kept):
        np.testing.assert_array_equal(g, g0)


STEPPED = [c for c in CASES if c[0] in ("Adagrad", "Adam", "AdamW")]


@pytest.mark.parametrize("name, kwargs", STEPPED, ids=[f"{n}-{'-'.join(k)}" for n, k in STEPPED])
def test_a_step_count_array_advances_in_place_like_capturable(name, kwargs):
    p0, grads = np.random.default_rng(2).standard_normal(SIZE), _grads(3)
    host, dev = p0.copy(), p0.copy()
    _ours(name, dict(kwargs), host, grads)
    _ours(name, dict(kwargs), dev, grads, step_array=True)
    assert_close(dev, host, atol=1e-12, rtol=1e-12, name=f"{name} with a step array")


def test_grad_scale_and_segments():
    p, g = np.arange(10.0), np.ones(10)
    optim.sgd_update(p, g, None, lr=0.1, grad_scale=0.5, segments=[(1, 3), (7, 8)])
    want = np.arange(10.0)
    want[[1, 2, 7]] -= 0.05
    np.testing.assert_array_equal(p, want)
    p2 = np.arange(10.0)
    optim.sgd_update(p2, g, None, lr=0.1, grad_scale=np.array([0.5]))
    np.testing.assert_array_equal(p2, np.arange(10.0) - 0.05)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_coefficient_matches_clip_grad_norm(max_norm):
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal(s) for s in ((3, 4), (5,), (2, 2, 2))]
    params = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for t, g in zip(params, grads):
        t.grad = torch.tensor(g)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    out = optim.clip_coefficient(grads, max_norm)
    assert out.dtype == np.float64 and out.shape == (2,)
    assert_close(out[0], norm, atol=1e-12, rtol=1e-12, name="norm")
    for t, g in zip(params, grads):  # torch scaled its gradients by the coefficient
        assert_close(g * out[1], t.grad, atol=1e-12, rtol=1e-12, name="clipped")
