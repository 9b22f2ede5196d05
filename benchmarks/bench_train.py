"""Training throughput: one full step (forward, cross-entropy, backward, optimizer
update) of a model, ours vs its PyTorch twin with the same weights, on the same batch,
reported as images per second.

Cases: the digits CNN (8x8, Adam) that ``make train`` trains, and ResNet-8 on 32x32
synthetic CIFAR-shaped data (SGD with momentum, batch norm in training mode)."""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
from gpukernels import functional as F
from models.cnn import digits_cnn
from models.resnet import resnet8

from .common import Result, check_close, timeit
from .torch_twin import torch_twin

# (name, model factory, input shape without batch, classes, batch, quick batch, optimizer)
CASES = [
    ("digits CNN", digits_cnn, (1, 8, 8), 10, 64, 64, "adam"),
    ("ResNet-8 32x32", resnet8, (3, 32, 32), 10, 128, 16, "momentum"),
]


def _optimizers(params, twin_params, kind):
    if kind == "adam":
        return gk.optim.Adam(params, lr=1e-3), torch.optim.Adam(twin_params, lr=1e-3)
    return (gk.optim.SGD(params, lr=0.05, momentum=0.9),
            torch.optim.SGD(twin_params, lr=0.05, momentum=0.9))


def run(quick: bool = False, repeat: int = 20) -> list[Result]:
    results = []
    rng = np.random.default_rng(0)
    for name, make, shape, classes, full_batch, quick_batch, kind in CASES:
        batch = quick_batch if quick else full_batch
        gk.manual_seed(0)
        model = make()
        twin = torch_twin(model)
        x = rng.standard_normal((batch,) + shape, dtype=np.float32)
        y = rng.integers(0, classes, batch)
        gx, gy = gk.tensor(x), gk.tensor(y)
        tx, ty = torch.tensor(x), torch.tensor(y)
        opt, topt = _optimizers(model.parameters(), twin.parameters(), kind)

        def ours():
            opt.zero_grad()
            loss = F.cross_entropy(model(gx), gy)
            loss.backward()
            opt.step()
            return loss

        def theirs():
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(twin(tx), ty)
            loss.backward()
            topt.step()
            return loss

        for step in range(3):  # the same losses, step after step
            check_close(f"{name} step {step} loss", ours().numpy(), theirs().detach().numpy(), 1e-5, 1e-4)
        results.append(Result("train step", f"{name} batch {batch} {kind}",
                              timeit(ours, repeat=repeat, warmup=3),
                              timeit(theirs, repeat=repeat, warmup=3),
                              unit="img/s", extra={"batch": batch}))
    return results
