"""The fast CIFAR-10 net (models.fast_cifar): its layout and shapes, its size and FLOPs
against the formulas of its docstring, argument checks, forward and backward against
its PyTorch twin, and a short SGD run on a learnable synthetic set."""

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import functional as F
from gpukernels import nn
from gpukernels.data import load_synthetic
from models.fast_cifar import FastCifar, fast_cifar, fast_cifar_flops, fast_cifar_num_parameters
from tests.helpers import assert_close, assert_twin_matches

SMALL = (8, 16, 16)  # widths that keep the CPU tests fast


def _params_by_hand(num_classes=10, c=3, widths=(64, 256, 256)):
    """Counted layer by layer: 3x3 convs without bias, BN weight + bias, fc without bias."""
    w1, w2, w3 = widths
    h = w1 // 2
    conv = lambda cin, cout: cin * cout * 9  # noqa: E731
    bn = lambda ch: 2 * ch  # noqa: E731
    return (conv(c, h) + bn(h)
            + conv(h, w1) + bn(w1) + conv(w1, w1) + bn(w1)
            + conv(w1, w2) + bn(w2) + conv(w2, w2) + bn(w2)
            + conv(w2, w3) + bn(w3) + conv(w3, w3) + bn(w3)
            + w3 * num_classes)


# ----------------------------------------------------------------------------- layout


def test_layout_and_names():
    model = fast_cifar()
    assert isinstance(model, FastCifar) and isinstance(model, nn.Sequential)
    assert [n for n, _ in model.named_children()] == [
        "stem", "block1", "block2", "block3", "pool", "flatten", "fc"]
    assert [type(m) for m in model.block2] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU,
                                              nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (3, 32), (32, 64), (64, 64), (64, 256), (256, 256), (256, 256), (256, 256)]
    assert model.fc.bias is None and model.fc.in_features == 256 and model.pool.kernel_size == 4
    keys = [n for n, _ in model.named_parameters()]
    assert keys[:3] == ["stem.conv.weight", "stem.bn.weight", "stem.bn.bias"]
    assert "block2.conv1.weight" in keys and keys[-1] == "fc.weight"


@pytest.mark.parametrize("kwargs, n, c, out", [
    ({}, 2, 3, 10),
    ({"num_classes": 7, "in_channels": 1, "widths": SMALL}, 3, 1, 7),
    ({"widths": (2, 3, 5)}, 1, 3, 10),
])
def test_output_shapes(kwargs, n, c, out):
    model = fast_cifar(**kwargs)
    assert model(gk.randn(n, c, 32, 32)).shape == (n, out)


def test_intermediate_resolutions():
    model = fast_cifar(widths=SMALL)
    x = gk.randn(2, 3, 32, 32)
    sizes = []
    for name, child in model.named_children():
        x = child(x)
        sizes.append((name, x.shape))
    assert sizes == [("stem", (2, 4, 32, 32)), ("block1", (2, 8, 16, 16)), ("block2", (2, 16, 8, 8)),
                     ("block3", (2, 16, 4, 4)), ("pool", (2, 16, 1, 1)), ("flatten", (2, 16)),
                     ("fc", (2, 10))]


# ----------------------------------------------------------------------------- size and FLOPs


@pytest.mark.parametrize("kwargs", [
    {}, {"widths": SMALL}, {"num_classes": 100, "in_channels": 1, "widths": (96, 192, 384)},
    {"widths": (3, 5, 7)},
])
def test_parameter_count_matches_formula(kwargs):
    expected = _params_by_hand(kwargs.get("num_classes", 10), kwargs.get("in_channels", 3),
                               kwargs.get("widths", (64, 256, 256)))
    assert fast_cifar(**kwargs).num_parameters() == expected == fast_cifar_num_parameters(**kwargs)


def test_default_size_and_flops_are_the_documented_numbers():
    import models.fast_cifar as mod

    assert fast_cifar().num_parameters() == 1_978_016
    assert fast_cifar_flops() == 303_764_480
    assert "1,978,016" in mod.__doc__ and "303,764,480" in mod.__doc__


@pytest.mark.parametrize("kwargs", [{}, {"widths": SMALL, "in_channels": 1, "num_classes": 5}])
def test_flops_match_torch_flop_counter(kwargs):
    torch = pytest.importorskip("torch")
    flop_counter = pytest.importorskip("torch.utils.flop_counter")
    from benchmarks.torch_twin import torch_twin

    twin = torch_twin(fast_cifar(**kwargs))
    with flop_counter.FlopCounterMode(display=False) as counter, torch.no_grad():
        twin(torch.randn(1, kwargs.get("in_channels", 3), 32, 32))
    assert counter.get_total_flops() == fast_cifar_flops(**kwargs)


# ----------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize("kwargs, match", [
    ({"widths": (64, 256)}, "widths must be 3 positive ints"),
    ({"widths": (64, 256, 256, 512)}, "widths must be 3 positive ints"),
    ({"widths": (64, 0, 256)}, "widths must be 3 positive ints"),
    ({"widths": (64, 256.0, 256)}, "widths must be 3 positive ints"),
    ({"widths": (True, 256, 256)}, "widths must be 3 positive ints"),
    ({"widths": 64}, "widths must be 3 positive ints"),
    ({"widths": (1, 4, 4)}, r"widths\[0\] must be >= 2"),
    ({"num_classes": 0}, "num_classes must be a positive int"),
    ({"in_channels": "3"}, "in_channels must be a positive int"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fast_cifar(**kwargs)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 3, 64, 64), (2, 3, 32, 16), (2, 1, 32, 32), (3, 32, 32)])
def test_forward_rejects_other_input_shapes(shape):
    model = fast_cifar(widths=SMALL)
    with pytest.raises(ValueError, match=r"fast_cifar: expected an input of shape \(N, 3, 32, 32\), got"):
        model(gk.randn(*shape))


# ----------------------------------------------------------------------------- vs PyTorch


@pytest.mark.parametrize("widths", [SMALL, (64, 256, 256)], ids=["small", "default"])
def test_matches_torch_twin_forward_and_backward(widths):
    pytest.importorskip("torch")
    gk.manual_seed(1)
    model = fast_cifar(widths=widths).to(gk.float64)
    assert_twin_matches(model, (3, 3, 32, 32), 10, logits_atol=1e-11, grad_atol=1e-10)


def test_float32_loss_and_gradients_match_torch_twin():
    """float32, as the benchmarks run it: cross-entropy and every gradient."""
    torch = pytest.importorskip("torch")
    from benchmarks.torch_twin import torch_twin

    model = fast_cifar(widths=SMALL)
    twin = torch_twin(model)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 4)
    loss = F.cross_entropy(model(gk.tensor(x)), gk.tensor(y))
    tloss = torch.nn.functional.cross_entropy(twin(torch.tensor(x)), torch.tensor(y))
    assert_close(loss, tloss, atol=1e-5, rtol=1e-5, name="loss")
    loss.backward()
    tloss.backward()
    tparams = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        ref = tparams[name].grad
        assert_close(p.grad, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-3, name=f"{name}.grad")


# ----------------------------------------------------------------------------- training


def test_sgd_momentum_reduces_the_loss_on_synthetic_images():
    """30 full-batch SGD (Nesterov momentum) steps on 32 synthetic class-template images:
    the loss falls well below its start and the training images are mostly classified."""
    (x, y), _ = load_synthetic(num_train=32, num_test=1, shape=(3, 32, 32), num_classes=10, seed=0)
    gk.manual_seed(0)
    model = fast_cifar(widths=SMALL)
    opt = gk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gx, gy = gk.tensor(x), gk.tensor(y)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(model(gx), gy)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * losses[0], f"losses {np.round(losses, 3).tolist()}"
    with gk.no_grad():
        accuracy = (model(gx).argmax(1).numpy() == y).mean()
    assert accuracy >= 0.8, f"train-mode accuracy {accuracy:.3f}; losses {np.round(losses, 3).tolist()}"
