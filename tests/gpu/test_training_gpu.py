"""Whole training steps on a real GPU: a recorded-and-replayed CUDA graph gives the eager
losses exactly (digits CNN with Adam, ResNet-8 with batch norm and SGD momentum, fast CIFAR
net; float32/TF32 and bf16 autocast), and bf16 training of the digits CNN reaches the
float32 accuracy band.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1): compiled kernels, not the interpreter."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import functional as F
from gpukernels.cuda_graph import GraphedStep
from models import train
from models.cnn import digits_cnn
from models.fast_cifar import fast_cifar
from models.resnet import resnet8

pytestmark = pytest.mark.gpu

CASES = [  # (name, factory, input shape, batch, optimizer factory)
    ("digits CNN / Adam", digits_cnn, (1, 8, 8), 64,
     lambda p: gk.optim.Adam(p, lr=3e-3, capturable=True)),
    ("ResNet-8 / SGD momentum", resnet8, (3, 32, 32), 32,
     lambda p: gk.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, capturable=True)),
    ("fast CIFAR / SGD momentum", fast_cifar, (3, 32, 32), 64,
     lambda p: gk.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, capturable=True)),
]


@pytest.fixture(autouse=True)
def _cuda():
    gk.set_backend("cuda")
    yield
    gk.set_backend("numpy")


def _losses(case, precision, graphed, steps=8):
    """Losses of ``steps`` training steps on fixed random batches, eager or graphed."""
    _, make, shape, batch, make_opt = case
    gk.manual_seed(0)
    model = make()
    optimizer = make_opt(model.parameters())
    step = train.make_train_step(model, optimizer, precision)
    if graphed:
        step = GraphedStep(step, warmup=3)
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(steps):
        x = gk.tensor(rng.standard_normal((batch,) + shape, dtype=np.float32), device="cuda")
        y = gk.tensor(rng.integers(0, 10, batch), device="cuda")
        loss, _ = step(x, y)
        losses.append(loss.item())
    if graphed:
        assert step.recorded
    return losses, model


@pytest.mark.parametrize("precision", [None, gk.bfloat16], ids=["tf32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cuda_graph_replays_give_the_eager_losses(case, precision):
    eager, eager_model = _losses(case, precision, graphed=False)
    graphed, graphed_model = _losses(case, precision, graphed=True)
    assert np.all(np.isfinite(eager)), eager
    assert eager == graphed, f"{case[0]}: eager {eager}\ngraphed {graphed}"
    for (name, a), (_, b) in zip(eager_model.state_dict().items(), graphed_model.state_dict().items()):
        assert np.array_equal(a.numpy(), b.numpy()), f"{case[0]}: {name} differs after training"


def test_graph_replays_new_batches_not_the_recorded_one():
    # a replay that reused the recorded batch would give one loss over and over
    losses, _ = _losses(CASES[0], None, graphed=True, steps=10)
    assert len(set(losses[4:])) == len(losses[4:])


def test_capture_refuses_an_optimizer_that_is_not_capturable():
    gk.manual_seed(0)
    model = digits_cnn()
    step = GraphedStep(train.make_train_step(model, gk.optim.Adam(model.parameters(), lr=1e-3)), warmup=1)
    x = gk.tensor(np.zeros((8, 1, 8, 8), np.float32), device="cuda")
    y = gk.tensor(np.zeros(8, np.int64), device="cuda")
    step(x, y)
    with pytest.raises(RuntimeError, match="capturable"):
        step(x, y)


def test_bad_targets_are_caught_after_a_replay():
    gk.manual_seed(0)
    model = digits_cnn()
    opt = gk.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, capturable=True)
    step = GraphedStep(train.make_train_step(model, opt), warmup=2)
    x = gk.tensor(np.zeros((8, 1, 8, 8), np.float32), device="cuda")
    good = gk.tensor(np.arange(8) % 10, device="cuda")
    for _ in range(4):
        step(x, good)
    with pytest.raises(ValueError, match="not a class index"):
        step(x, gk.tensor(np.full(8, 12), device="cuda"))


def _train(capsys, precision, graph=False):
    argv = ["--device", "cuda", "--model", "cnn", "--dataset", "digits", "--epochs", "8",
            "--batch-size", "32", "--precision", precision, "--no-progress"]
    assert train.main(argv + (["--cuda-graph"] if graph else [])) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow  # every config / > 2**31 elements: not in the smoke selection
def test_bf16_training_reaches_the_fp32_accuracy_band(capsys):
    fp32 = _train(capsys, "fp32")
    bf16 = _train(capsys, "bf16")
    graphed = _train(capsys, "bf16", graph=True)
    assert fp32["test_accuracy"] >= 0.9, fp32
    for run in (bf16, graphed):
        assert abs(run["test_accuracy"] - fp32["test_accuracy"]) <= 0.03, (fp32, run)


def test_bf16_autocast_matches_fp32_on_one_step():
    gk.manual_seed(0)
    model = resnet8()
    rng = np.random.default_rng(0)
    x = gk.tensor(rng.standard_normal((16, 3, 32, 32), dtype=np.float32), device="cuda")
    y = gk.tensor(rng.integers(0, 10, 16), device="cuda")
    ref = F.cross_entropy(model(x), y)
    ref.backward()
    ref_grads = [p.grad.numpy().copy() for p in model.parameters()]
    model.zero_grad()
    with gk.autocast(gk.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    assert logits.dtype == gk.bfloat16 and loss.dtype == gk.float32
    loss.backward()
    assert abs(loss.item() - ref.item()) <= 3e-2 * abs(ref.item())
    for p, g in zip(model.parameters(), ref_grads):
        assert p.grad.dtype == gk.float32
        err = np.abs(p.grad.numpy() - g).max()
        assert err <= 0.1 * (np.abs(g).max() + 1e-3), f"{p.shape}: max error {err}"
