"""One full training step (forward, cross-entropy, backward, Adam update) of a model,
ours vs its PyTorch twin with the same weights, on the same batch."""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
from gpukernels import functional as F
from models.cnn import digits_cnn

from .common import Result, check_close, timeit
from .torch_twin import torch_twin

# (name, model factory, input shape without batch, classes, batch)
CASES = [("digits CNN", digits_cnn, (1, 8, 8), 10, 64)]


def run(quick: bool = False, repeat: int = 20) -> list[Result]:
    results = []
    rng = np.random.default_rng(0)
    for name, make, shape, classes, batch in CASES:
        gk.manual_seed(0)
        model = make()
        twin = torch_twin(model)
        x = rng.standard_normal((batch,) + shape, dtype=np.float32)
        y = rng.integers(0, classes, batch)
        gx, gy = gk.tensor(x), gk.tensor(y)
        tx, ty = torch.tensor(x), torch.tensor(y)
        opt = gk.optim.Adam(model.parameters(), lr=1e-3)
        topt = torch.optim.Adam(twin.parameters(), lr=1e-3)

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
        results.append(Result("train step", f"{name} batch {batch} Adam",
                              timeit(ours, repeat=repeat, warmup=3),
                              timeit(theirs, repeat=repeat, warmup=3),
                              unit="img/s", extra={"batch": batch}))
    return results
