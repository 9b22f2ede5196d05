"""Softmax cross-entropy forward + backward, ours (loss and gradient in one forward)
vs PyTorch. Bytes: read the logits once and write the gradient once: 2*B*C*itemsize."""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
from gpukernels import functional as F

from .common import Result, check_close, timeit

CASES = [(8192, 1000), (512, 32768), (64, 10)]
QUICK = [(256, 1000)]


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    results = []
    rng = np.random.default_rng(0)
    for b, c in QUICK if quick else CASES:
        logits = (3 * rng.standard_normal((b, c))).astype(np.float32)
        target = rng.integers(0, c, b)
        gl, gt = gk.tensor(logits, requires_grad=True), gk.tensor(target)
        tl, tt = torch.tensor(logits, requires_grad=True), torch.tensor(target)

        def ours():
            gl.grad = None
            loss = F.cross_entropy(gl, gt)
            loss.backward()
            return loss

        def theirs():
            tl.grad = None
            loss = torch.nn.functional.cross_entropy(tl, tt)
            loss.backward()
            return loss

        check_close(f"cross_entropy {b}x{c} loss", ours().numpy(), theirs().detach().numpy(), 1e-5, 1e-5)
        check_close(f"cross_entropy {b}x{c} grad", gl.grad.numpy(), tl.grad.numpy(), 1e-6, 1e-4)
        results.append(Result("cross_entropy", f"B={b} C={c} fwd+bwd", timeit(ours, repeat=repeat),
                              timeit(theirs, repeat=repeat), bytes=2.0 * b * c * 4))
    return results
