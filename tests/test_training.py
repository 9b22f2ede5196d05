"""Small end-to-end trainings: the whole stack (autograd, ops, modules, optimizers) learns."""

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import functional as F
from gpukernels import nn
from models.cnn import digits_cnn

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
XOR_Y = np.array([0, 1, 1, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_layer_mlp_learns_xor_with_adam(seed):
    gk.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = gk.optim.Adam(model.parameters(), lr=0.05)
    x, y = gk.tensor(XOR_X), gk.tensor(XOR_Y)
    for _ in range(300):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    pred = model(x).argmax(1).numpy()
    assert (pred == XOR_Y).all(), f"predictions {pred}, loss {loss.item():.4f}"
    assert loss.item() < 0.05


def test_small_cnn_fits_64_digits_to_full_training_accuracy():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:64] / 16.0).astype(np.float32)[:, None]  # (64, 1, 8, 8)
    labels = digits.target[:64]
    gk.manual_seed(0)
    model = digits_cnn()
    opt = gk.optim.Adam(model.parameters(), lr=1e-2)
    x, y = gk.tensor(images), gk.tensor(labels)
    for step in range(150):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if step >= 20 and (model(x).argmax(1).numpy() == labels).all():
            break
    accuracy = (model(x).argmax(1).numpy() == labels).mean()
    assert accuracy == 1.0, f"training accuracy {accuracy:.3f} after {step + 1} steps, loss {loss.item():.4f}"


def test_cnn_training_step_matches_pytorch_for_five_steps():
    """The same model, weights and batch in PyTorch give the same losses step by step."""
    torch = pytest.importorskip("torch")
    from benchmarks.torch_twin import torch_twin

    gk.manual_seed(0)
    model = digits_cnn().to(gk.float64)
    twin = torch_twin(model, torch.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1, 8, 8))
    y = rng.integers(0, 10, 16)
    opt = gk.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    for step in range(5):
        opt.zero_grad()
        topt.zero_grad()
        loss = F.cross_entropy(model(gk.tensor(x)), gk.tensor(y))
        tloss = torch.nn.functional.cross_entropy(twin(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        tloss.backward()
        opt.step()
        topt.step()
        assert abs(loss.item() - tloss.item()) <= 1e-10 * max(1.0, abs(tloss.item())), step
