"""What a CUDA graph needs from a training step, checked on the interpreter.

A recorded graph replays every kernel with the arguments it had when recorded, and a
recording may not read the device from the host. So, with ``cuda_graph.capturing()`` on
(what ``GraphedStep`` sets while recording), a whole step (forward, cross-entropy,
backward, optimizer) must run without raising, defer its host-side checks, and launch
exactly the same kernels with the same scalar arguments as the next step does: then a
replay of step N computes what an eager step N+1 would. The replay itself runs in the
gpu tests (tests/gpu/test_training_gpu.py)."""

from __future__ import annotations

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend, cuda_graph
from gpukernels import functional as F
from models import train
from models.cnn import digits_cnn
from models.resnet import resnet8

pytestmark = pytest.mark.skipif(not backend.interpreting(), reason="needs TRITON_INTERPRET=1")

CASES = [  # (name, model factory, input shape, optimizer factory, precision)
    ("digits CNN / Adam capturable", digits_cnn, (1, 8, 8),
     lambda p: gk.optim.Adam(p, lr=1e-3, capturable=True), None),
    ("digits CNN / AdamW amsgrad capturable / fp16", digits_cnn, (1, 8, 8),
     lambda p: gk.optim.AdamW(p, lr=1e-3, amsgrad=True, capturable=True), gk.float16),
    ("ResNet-8 / SGD nesterov", lambda: resnet8(in_channels=1), (1, 8, 8),
     lambda p: gk.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4), None),
]


def _summary(value):
    """A kernel argument as a replay would see it: tensors by dtype (their addresses are
    fixed by the graph's memory pool on a GPU), scalars by value."""
    return ("tensor", str(value.dtype)) if hasattr(value, "data_ptr") else value


@pytest.fixture
def launches(monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction

    log = []
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        log.append((self.fn.__name__, grid if isinstance(grid, tuple) else "callable grid",
                    tuple(_summary(a) for a in args),
                    tuple(sorted((k, _summary(v)) for k, v in kwargs.items()))))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", run)
    return log


def _batches(shape, n, batch=4):
    rng = np.random.default_rng(0)
    return [(gk.tensor(rng.standard_normal((batch,) + shape).astype(np.float32)),
             gk.tensor(rng.integers(0, 10, batch))) for _ in range(n)]


def _captured_step(step, x, y, log):
    """One step with ``capturing()`` on: (its launches, the checks it deferred)."""
    log.clear()
    cuda_graph._set_capturing(True)
    try:
        step(x, y)
    finally:
        checks = cuda_graph._set_capturing(False)
    return list(log), checks


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_step_while_capturing_is_sync_free_and_launches_what_the_next_step_does(case, launches):
    gk.set_backend("interpret")
    _, make, shape, make_opt, precision = case
    model = make()
    step = train.make_train_step(model, make_opt(model.parameters()), precision)
    batches = _batches(shape, 4)
    for x, y in batches[:2]:  # warm-up: optimizer state exists from here on
        step(x, y)
    first, checks = _captured_step(step, *batches[2], launches)
    second, _ = _captured_step(step, *batches[3], launches)
    assert first, "no Triton launch recorded"
    assert len(checks) == 1, "cross-entropy's target check must be deferred, not read on the host"
    for check in checks:
        check()  # valid targets: nothing raised
    assert len(first) == len(second)
    for i, (a, b) in enumerate(zip(first, second)):
        assert a == b, f"launch {i} differs between two steps: a replay would freeze it\n{a}\n{b}"


def test_the_static_launch_check_catches_a_step_dependent_scalar(launches):
    # Adam without capturable passes its bias corrections as kernel scalars, which change
    # every step: the comparison above must see that (so it can fail)
    gk.set_backend("interpret")
    model = digits_cnn()
    opt = gk.optim.Adam(model.parameters(), lr=1e-3)
    batches = _batches((1, 8, 8), 4)
    step = train.make_train_step(model, opt)
    for x, y in batches[:2]:
        step(x, y)
    launches.clear()
    step(*batches[2])
    first = list(launches)
    launches.clear()
    step(*batches[3])
    assert first != launches


def test_recording_refuses_a_step_dependent_optimizer_and_dropout():
    gk.set_backend("interpret")
    model = digits_cnn()
    opt = gk.optim.Adam(model.parameters(), lr=1e-3)
    step = train.make_train_step(model, opt)
    x, y = _batches((1, 8, 8), 1)[0]
    step(x, y)
    cuda_graph._set_capturing(True)
    try:
        with pytest.raises(RuntimeError, match="capturable"):
            step(x, y)
        with pytest.raises(RuntimeError, match="dropout cannot be captured"):
            F.dropout(x, 0.5)
    finally:
        cuda_graph._set_capturing(False)


def test_deferred_target_check_raises_after_the_step():
    gk.set_backend("interpret")
    logits = gk.tensor(np.zeros((3, 4), np.float32), requires_grad=True)
    cuda_graph._set_capturing(True)
    try:
        F.cross_entropy(logits, gk.tensor([0, 7, 1]))  # 7 is no class index: not raised yet
    finally:
        checks = cuda_graph._set_capturing(False)
    with pytest.raises(ValueError, match=r"target\[1\] = 7 is not a class index"):
        for check in checks:
            check()


def test_defer_check_outside_a_capture_is_an_error():
    with pytest.raises(RuntimeError, match="outside a CUDA graph capture"):
        cuda_graph.defer_check(lambda: None)


def test_graphed_step_checks_its_arguments_and_needs_the_cuda_backend():
    from gpukernels.cuda_graph import GraphedStep

    with pytest.raises(TypeError, match="fn must be callable"):
        GraphedStep(3)
    with pytest.raises(ValueError, match="warmup must be an int >= 1"):
        GraphedStep(lambda: None, warmup=0)
    step = GraphedStep(lambda x: x, warmup=1)
    with pytest.raises(TypeError, match="input 0 must be a Tensor, got ndarray"):
        step(np.zeros(3))
    with pytest.raises(RuntimeError, match="input 0 is on cpu"):
        step(gk.tensor([1.0]))
    assert step.calls == 0 and not step.recorded
