"""Example models: the perceptron's limit (XOR), the XOR MLP, every factory's shapes,
the ResNets' sizes, ResNet-8 against its PyTorch twin, and a ResNet-8 that overfits."""

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import functional as F
from gpukernels import nn
from models.cnn import cifar_cnn, cnn_for, digits_cnn, mnist_cnn
from models.mlp import XOR_X, XOR_Y, Perceptron, mlp, train_xor, xor_mlp
from models.resnet import BasicBlock, resnet, resnet8, resnet20
from tests.helpers import assert_twin_matches

AND_Y = np.array([0, 0, 0, 1])
OR_Y = np.array([0, 1, 1, 1])


# ----------------------------------------------------------------------------- perceptron


def test_xor_constants():
    assert XOR_X.dtype == np.float32 and XOR_X.shape == (4, 2)
    assert XOR_Y.dtype == np.int64 and XOR_Y.shape == (4,)
    assert (XOR_Y == (XOR_X[:, 0] != XOR_X[:, 1])).all()


@pytest.mark.parametrize("name, y", [("AND", AND_Y), ("OR", OR_Y)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perceptron_learns_linearly_separable_and_or(name, y, seed):
    p = Perceptron(2, seed=seed)
    errors = p.fit(XOR_X, y, epochs=100)
    assert errors[-1] == 0 and len(errors) < 100, f"{name}: errors per epoch {errors}"
    assert p.score(XOR_X, y) == 1.0
    pred = p.predict(XOR_X)
    assert isinstance(pred, gk.Tensor) and pred.shape == (4,)
    assert set(np.unique(pred.numpy())) <= {0.0, 1.0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perceptron_cannot_learn_xor(seed):
    """XOR is not linearly separable: the rule makes a mistake in every epoch, forever."""
    p = Perceptron(2, seed=seed)
    errors = p.fit(XOR_X, XOR_Y, epochs=100)
    assert len(errors) == 100 and min(errors) > 0, errors
    assert p.score(XOR_X, XOR_Y) <= 0.75  # at best 3 of 4 points on one side of a line


def test_perceptron_rejects_bad_inputs():
    p = Perceptron(2)
    with pytest.raises(ValueError, match=r"expected inputs of shape \(N, 2\), got \(4, 3\)"):
        p.predict(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="labels in"):
        p.fit(XOR_X, np.array([0, 1, 2, 0]))


# ----------------------------------------------------------------------------- MLPs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xor_mlp_reaches_full_accuracy(seed):
    model, accuracy, losses = train_xor(seed=seed)
    assert accuracy == 1.0, f"accuracy {accuracy}, last loss {losses[-1]:.4f}"
    assert losses[-1] < losses[0]
    assert [type(m) for m in model] == [nn.Linear, nn.Tanh, nn.Linear]


def test_xor_mlp_takes_a_given_model():
    model = xor_mlp(hidden=16, seed=4)
    trained, accuracy, _ = train_xor(model, epochs=400)
    assert trained is model and model[0].out_features == 16 and accuracy == 1.0


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("make, in_shape", [
    (lambda: mlp((1, 8, 8)), (1, 8, 8)),
    (lambda: mlp((1, 28, 28), hidden=(64, 32)), (1, 28, 28)),
    (lambda: mlp((3, 32, 32), hidden=()), (3, 32, 32)),
    (lambda: mlp(5), (5,)),
    (digits_cnn, (1, 8, 8)),
    (mnist_cnn, (1, 28, 28)),
    (cifar_cnn, (3, 32, 32)),
    (lambda: cnn_for((1, 8, 8)), (1, 8, 8)),
    (lambda: cnn_for((1, 28, 28)), (1, 28, 28)),
    (lambda: cnn_for((3, 32, 32)), (3, 32, 32)),
    (lambda: resnet8(), (3, 32, 32)),
    (lambda: resnet8(in_channels=1), (1, 28, 28)),
    (lambda: resnet8(in_channels=1), (1, 8, 8)),
    (lambda: resnet20(), (3, 32, 32)),
], ids=["mlp-digits", "mlp-mnist", "mlp-cifar-linear", "mlp-vector", "digits_cnn", "mnist_cnn",
        "cifar_cnn", "cnn_for-digits", "cnn_for-mnist", "cnn_for-cifar", "resnet8-cifar",
        "resnet8-mnist", "resnet8-digits", "resnet20-cifar"])
def test_model_output_shapes(make, in_shape):
    gk.manual_seed(0)
    model = make()
    assert model(gk.randn(2, *in_shape)).shape == (2, 10)


def test_num_classes_is_respected():
    assert mlp((1, 8, 8), num_classes=3)(gk.randn(2, 1, 8, 8)).shape == (2, 3)
    assert cnn_for((1, 28, 28), num_classes=4)(gk.randn(2, 1, 28, 28)).shape == (2, 4)
    assert resnet8(num_classes=7)(gk.randn(2, 3, 32, 32)).shape == (2, 7)


def test_cnn_for_unknown_shape_names_it():
    with pytest.raises(ValueError, match=r"no CNN for input shape \(3, 28, 28\)"):
        cnn_for((3, 28, 28))


def test_cnns_fuse_relu_into_conv():
    for model in (mnist_cnn(), cifar_cnn()):
        convs = [m for m in model if isinstance(m, nn.Conv2d)]
        assert convs and all(c.activation == "relu" for c in convs)


# ----------------------------------------------------------------------------- ResNet


def _expected_resnet_params(n, widths=(16, 32, 64), in_channels=3, num_classes=10):
    """Parameters of the CIFAR ResNet with option-B shortcuts, counted by hand."""
    conv = lambda cin, cout, k=3: cin * cout * k * k  # noqa: E731 - no bias before BN
    bn = lambda c: 2 * c  # noqa: E731 - weight and bias
    total = conv(in_channels, widths[0]) + bn(widths[0])
    cin = widths[0]
    for width in widths:
        for block in range(n):
            total += conv(cin, width) + bn(width) + conv(width, width) + bn(width)
            if cin != width:  # the first block of stages 2 and 3: 1x1 projection + BN
                total += conv(cin, width, 1) + bn(width)
            cin = width
    return total + widths[-1] * num_classes + num_classes


def test_resnet_parameter_counts():
    assert _expected_resnet_params(1) == 78_042
    assert _expected_resnet_params(3) == 272_474  # He et al.: ResNet-20 has 0.27M
    assert resnet8().num_parameters() == 78_042
    assert resnet20().num_parameters() == 272_474
    assert resnet(32).num_parameters() == _expected_resnet_params(5)
    assert resnet8(in_channels=1, num_classes=5, widths=(8, 16, 32)).num_parameters() == \
        _expected_resnet_params(1, (8, 16, 32), 1, 5)


def test_resnet_structure_and_init():
    model = resnet20()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    # option B: a projection exactly where the shape changes (first block of stages 2, 3)
    projected = [b.stride for b in blocks if b[0].shortcut is not None]
    assert projected == [2, 2]
    # the block's ReLU is fused into the residual sum (F.add_relu): no separate module
    assert all(len(b) == 1 and isinstance(b[0], nn.Residual) and b[0].activation == "relu" for b in blocks)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)  # every conv is followed by a BN
    # Kaiming normal, fan_out: std = sqrt(2 / (64 * 9)) for the 64-channel 3x3 convs
    w = model.layer3[2][0].body.conv2.weight.numpy()
    assert abs(w.std() / np.sqrt(2 / (64 * 9)) - 1) < 0.05
    assert [n for n, _ in model.named_children()] == [
        "conv1", "bn1", "layer1", "layer2", "layer3", "avgpool", "flatten", "fc"]
    # BN - ReLU fused (BatchNorm2d(activation="relu")) after the stem and each block's conv1
    assert model.bn1.activation == "relu"
    assert all(b[0].body.bn1.activation == "relu" and b[0].body.bn2.activation is None for b in blocks)
    assert not [m for m in model.modules() if isinstance(m, nn.ReLU)]


def test_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 2.*got 18"):
        resnet(18)


def test_resnet8_matches_torch_twin_in_train_and_eval_mode():
    pytest.importorskip("torch")
    gk.manual_seed(1)
    model = resnet8().to(gk.float64)
    assert_twin_matches(model, (4, 3, 32, 32), 10, logits_atol=1e-12, grad_atol=1e-11)


def test_resnet8_overfits_16_images():
    """A few dozen Adam steps fit 16 random images with random labels: the blocks, the
    projections, BN and the pooled head all pass gradients that train."""
    gk.manual_seed(0)
    model = resnet8()
    rng = np.random.default_rng(0)
    x = gk.tensor(rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    labels = rng.integers(0, 10, 16)
    y = gk.tensor(labels)
    opt = gk.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.05:
            break
    with gk.no_grad():
        accuracy = (model(x).argmax(1).numpy() == labels).mean()
    assert losses[-1] < 0.1 and accuracy == 1.0, (
        f"after {step + 1} steps: loss {losses[-1]:.4f} (first {losses[0]:.4f}), "
        f"train-mode accuracy {accuracy:.3f}")
