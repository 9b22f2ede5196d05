"""conv2d forward, and forward + backward (input, weight and bias gradients), ours vs
PyTorch on the same machine. FLOPs: forward 2*N*OH*OW*O*C*KH*KW/groups; the backward
does two GEMMs of the same size (grad-input, grad-weight), so forward+backward = 3x."""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
from gpukernels import functional as F

from .common import Result, check_close, timeit

# (name, N, C, H, W, O, K, stride, padding)
CASES = [
    ("resnet 64x32x32 k3", 64, 64, 32, 32, 64, 3, 1, 1),
    ("resnet 128x16x16 k3 s1", 64, 128, 16, 16, 128, 3, 1, 1),
    ("digits 1->16 8x8 k3", 64, 1, 8, 8, 16, 3, 1, 1),
    ("digits 16->32 4x4 k3", 64, 16, 4, 4, 32, 3, 1, 1),
]
QUICK = [("small 16x16x16 k3", 8, 16, 16, 16, 16, 3, 1, 1)]


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    results = []
    rng = np.random.default_rng(0)
    for name, n, c, h, w, o, k, s, p in QUICK if quick else CASES:
        x = rng.standard_normal((n, c, h, w), dtype=np.float32)
        wt = (rng.standard_normal((o, c, k, k), dtype=np.float32) / np.sqrt(c * k * k)).astype(np.float32)
        b = rng.standard_normal(o, dtype=np.float32)
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        g = rng.standard_normal((n, o, oh, ow), dtype=np.float32)
        flops = 2.0 * n * oh * ow * o * c * k * k

        gx, gw, gb = (gk.tensor(a, requires_grad=True) for a in (x, wt, b))
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
        gg, tg = gk.tensor(g), torch.tensor(g)

        def ours_fwd():
            with gk.no_grad():
                return F.conv2d(gx, gw, gb, s, p)

        def torch_fwd():
            with torch.no_grad():
                return torch.nn.functional.conv2d(tx, tw, tb, s, p)

        def ours_fb():
            gx.grad = gw.grad = gb.grad = None
            F.conv2d(gx, gw, gb, s, p).backward(gg)

        def torch_fb():
            tx.grad = tw.grad = tb.grad = None
            torch.nn.functional.conv2d(tx, tw, tb, s, p).backward(tg)

        # correctness first (float32: tolerances scale with the reduction length c*k*k)
        check_close(f"conv2d {name} forward", ours_fwd().numpy(), torch_fwd().numpy(), 1e-3, 1e-3)
        ours_fb()
        torch_fb()
        for label, a, t in (("grad_input", gx, tx), ("grad_weight", gw, tw), ("grad_bias", gb, tb)):
            check_close(f"conv2d {name} {label}", a.grad.numpy(), t.grad.numpy(), 2e-2, 1e-3)

        results.append(Result("conv2d fwd", name, timeit(ours_fwd, repeat=repeat),
                              timeit(torch_fwd, repeat=repeat), flops=flops))
        results.append(Result("conv2d fwd+bwd", name, timeit(ours_fb, repeat=repeat),
                              timeit(torch_fb, repeat=repeat), flops=3 * flops))
    return results
