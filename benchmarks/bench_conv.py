"""conv2d forward, and forward + backward (input, weight and bias gradients), ours vs
PyTorch on the same machine. FLOPs: forward 2*N*OH*OW*O*C*KH*KW/groups; the backward
does two GEMMs of the same size (grad-input, grad-weight), so forward+backward = 3x."""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
from gpukernels import functional as F
from gpukernels.backend import cupy_from_torch

from .common import CpuPair, Result, check_close_gpu, cuda_generator, cuda_randn, gpu_time, pick_cases, time_both

# (name, N, C, H, W, O, K, stride, padding)
CASES = [
    ("resnet 64x32x32 k3", 64, 64, 32, 32, 64, 3, 1, 1),
    ("resnet 128x16x16 k3 s1", 64, 128, 16, 16, 128, 3, 1, 1),
    ("digits 1->16 8x8 k3", 64, 1, 8, 8, 16, 3, 1, 1),
    ("digits 16->32 4x4 k3", 64, 16, 4, 4, 32, 3, 1, 1),
]
QUICK = [("small 16x16x16 k3", 8, 16, 16, 16, 16, 3, 1, 1)]
TINY = [("tiny 4x8x8 k3", 2, 4, 8, 8, 4, 3, 1, 1)]


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    """On a GPU the Triton kernels vs cuDNN (run_gpu); else the NumPy backend vs torch CPU."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    results = []
    rng = np.random.default_rng(0)
    for name, n, c, h, w, o, k, s, p in pick_cases(CASES, QUICK, TINY, quick):
        x = rng.standard_normal((n, c, h, w), dtype=np.float32)
        wt = (rng.standard_normal((o, c, k, k), dtype=np.float32) / np.sqrt(c * k * k)).astype(np.float32)
        b = rng.standard_normal(o, dtype=np.float32)
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        g = rng.standard_normal((n, o, oh, ow), dtype=np.float32)
        flops = 2.0 * n * oh * ow * o * c * k * k
        pair = CpuPair(lambda x_, w_, b_: F.conv2d(x_, w_, b_, s, p),
                       lambda x_, w_, b_: torch.nn.functional.conv2d(x_, w_, b_, s, p), (x, wt, b), g)

        # correctness first (float32: tolerances scale with the reduction length c*k*k)
        pair.check_forward(f"conv2d {name}", 1e-3, 1e-3)
        pair.check_grads(f"conv2d {name}", ("grad_input", "grad_weight", "grad_bias"), 2e-2, 1e-3)

        results.append(time_both("conv2d fwd", name, pair.ours_fwd, pair.torch_fwd, repeat, flops=flops))
        results.append(time_both("conv2d fwd+bwd", name, pair.ours_fb, pair.torch_fb, repeat, flops=3 * flops))
    return results


# ----------------------------------------------------------------------------- GPU

# ResNet-18 on CIFAR (batch 128): every distinct conv shape, and the digits CNN's two.
# (name, N, C, H, W, O, K, stride, padding)
GPU_CASES = [
    ("r18 stem 3->64 32x32", 128, 3, 32, 32, 64, 3, 1, 1),
    ("r18 64->64 32x32", 128, 64, 32, 32, 64, 3, 1, 1),
    ("r18 64->128 s2", 128, 64, 32, 32, 128, 3, 2, 1),
    ("r18 128->128 16x16", 128, 128, 16, 16, 128, 3, 1, 1),
    ("r18 1x1 64->128 s2", 128, 64, 32, 32, 128, 1, 2, 0),
    ("r18 128->256 s2", 128, 128, 16, 16, 256, 3, 2, 1),
    ("r18 256->256 8x8", 128, 256, 8, 8, 256, 3, 1, 1),
    ("r18 256->512 s2", 128, 256, 8, 8, 512, 3, 2, 1),
    ("r18 512->512 4x4", 128, 512, 4, 4, 512, 3, 1, 1),
    ("digits 1->16 8x8", 512, 1, 8, 8, 16, 3, 1, 1),
    ("digits 16->32 4x4", 512, 16, 4, 4, 32, 3, 1, 1),
]
GPU_QUICK = [GPU_CASES[1], GPU_CASES[2], GPU_CASES[9]]


def run_gpu(quick: bool = False, repeat: int = 100) -> list[Result]:
    """conv+bias+ReLU forward and forward+backward, ours (Triton, CuPy arrays) vs PyTorch
    eager (cuDNN) in NCHW and channels-last (the faster of the two is the baseline), in
    TF32 (both sides allow it, cuDNN's default) and bf16 with float32 accumulation."""
    from gpukernels.triton import conv

    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest algorithm per shape
    results = []
    for name, n, c, h, w, o, k, s, p in GPU_QUICK if quick else GPU_CASES:
        for dtype in (torch.float32, torch.bfloat16):
            label = f"{name} {'tf32' if dtype == torch.float32 else 'bf16'}"
            gen = cuda_generator(0)
            x = cuda_randn(gen, n, c, h, w, dtype=dtype)
            wt = (cuda_randn(gen, o, c, k, k) / (c * k * k) ** 0.5).to(dtype)
            b = cuda_randn(gen, o, dtype=dtype)
            oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            gy = cuda_randn(gen, n, o, oh, ow, dtype=dtype)
            flops = 2.0 * n * oh * ow * o * c * k * k
            cx, cw, cb, cg = (cupy_from_torch(t.contiguous()) for t in (x, wt, b, gy))
            args = ((s, s), (p, p), (1, 1), 1, "relu", 0.01)

            def ours_fwd():
                return conv.conv2d_forward(cx, cw, cb, *args)

            y_saved = ours_fwd()

            def ours_fb():
                y = conv.conv2d_forward(cx, cw, cb, *args)
                return conv.conv2d_backward(cg, cx, cw, y, *args)

            layouts = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}
            theirs_fwd, theirs_fb = {}, {}
            for lname, fmt in layouts.items():
                tx = x.contiguous(memory_format=fmt).requires_grad_(True)
                tw = wt.contiguous(memory_format=fmt).requires_grad_(True)
                tb = b.clone().requires_grad_(True)
                tg = gy.contiguous(memory_format=fmt)

                def t_fwd(tx=tx, tw=tw, tb=tb):
                    with torch.no_grad():
                        return torch.relu(torch.nn.functional.conv2d(tx, tw, tb, s, p))

                def t_fb(tx=tx, tw=tw, tb=tb, tg=tg):
                    tx.grad = tw.grad = tb.grad = None
                    torch.relu(torch.nn.functional.conv2d(tx, tw, tb, s, p)).backward(tg)

                if lname == "NCHW":  # correctness first
                    tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
                    check_close_gpu(f"conv2d {label} forward", y_saved, t_fwd(), tol)
                    t_fb()  # and every gradient, before fwd+bwd is timed
                    for gname, ours_g, t in zip(("grad_input", "grad_weight", "grad_bias"), ours_fb(), (tx, tw, tb)):
                        check_close_gpu(f"conv2d {label} {gname}", ours_g, t.grad, tol)
                theirs_fwd[lname], theirs_fb[lname] = gpu_time(t_fwd, repeat), gpu_time(t_fb, repeat)
            best_f = min(theirs_fwd, key=theirs_fwd.get)
            best_b = min(theirs_fb, key=theirs_fb.get)
            results.append(Result("conv+bias+relu", label, gpu_time(ours_fwd, repeat), theirs_fwd[best_f],
                                  flops=flops, extra={"baseline": f"cuDNN {best_f}",
                                                      **{f"cudnn_{k}_s": v for k, v in theirs_fwd.items()}}))
            results.append(Result("conv fwd+bwd", label, gpu_time(ours_fb, repeat), theirs_fb[best_b],
                                  flops=3 * flops, extra={"baseline": f"cuDNN {best_b}",
                                                          **{f"cudnn_{k}_s": v for k, v in theirs_fb.items()}}))
    return results
