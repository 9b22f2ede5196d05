"""Linear layer y = x W^T + b forward, and forward + backward (dx, dW, db), ours vs PyTorch
on the same machine. FLOPs: forward 2*M*I*O (M batch rows, I in, O out features); the
backward does two GEMMs of the same size (dx, dW; db is O*M adds, not counted), so
forward+backward = 3x. The big square GEMM is compute-bound (GFLOP/s against the
GEMM ceiling); the classifier heads are launch-bound (their row shows how far from it)."""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from gpukernels.backend import cupy_from_torch

from .common import (CpuPair, Result, check_close_gpu, cuda_generator, cuda_randn, gpu_time,
                     mark_compile_unavailable, pick_cases, time_both, torch_compile)

# (name, batch, in_features, out_features)
CASES = [
    ("1024x1024->1024", 1024, 1024, 1024),
    ("digits head 512x128->10", 512, 128, 10),
    ("resnet head 128x64->10", 128, 64, 10),
]
QUICK = [("256x128->64", 256, 128, 64), ("digits head 64x128->10", 64, 128, 10)]
TINY = [("tiny 8x16->4", 8, 16, 4)]


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    """On a GPU our Triton GEMMs vs cuBLAS (run_gpu); else the NumPy backend vs torch CPU."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    results = []
    rng = np.random.default_rng(0)
    for name, m, i, o in pick_cases(CASES, QUICK, TINY, quick):
        x = rng.standard_normal((m, i), dtype=np.float32)
        w = (rng.standard_normal((o, i), dtype=np.float32) / np.sqrt(i)).astype(np.float32)
        b = rng.standard_normal(o, dtype=np.float32)
        g = rng.standard_normal((m, o), dtype=np.float32)
        flops = 2.0 * m * i * o
        pair = CpuPair(F.linear, torch.nn.functional.linear, (x, w, b), g)
        pair.check_forward(f"linear {name}", 1e-4, 1e-4)
        pair.check_grads(f"linear {name}", ("grad_input", "grad_weight", "grad_bias"), 1e-3, 1e-4)
        results.append(time_both("linear fwd", name, pair.ours_fwd, pair.torch_fwd, repeat, flops=flops))
        results.append(time_both("linear fwd+bwd", name, pair.ours_fb, pair.torch_fb, repeat, flops=3 * flops))
    return results


# ----------------------------------------------------------------------------- GPU

GPU_CASES = [
    ("4096x4096->4096", 4096, 4096, 4096),
    ("digits head 512x128->10", 512, 128, 10),
    ("resnet head 128x64->10", 128, 64, 10),
]
GPU_QUICK = GPU_CASES


def run_gpu(quick: bool = False, repeat: int = 100) -> list[Result]:
    """y = x W^T + b and its three gradients, ours (Triton on CuPy arrays) vs
    torch.nn.functional.linear (cuBLAS) on the same GPU, in TF32 (both sides allow it)
    and bf16 with float32 accumulation; torch.compile as a second baseline where it
    runs. Every result is checked against PyTorch before anything is timed."""
    from gpukernels.triton import linear

    torch.backends.cuda.matmul.allow_tf32 = True  # as ours: TF32 for float32 unless turned off
    backend.set_allow_tf32(True)
    results = []
    for name, m, i, o in GPU_QUICK if quick else GPU_CASES:
        for dtype in (torch.float32, torch.bfloat16):
            label = f"{name} {'tf32' if dtype == torch.float32 else 'bf16'}"
            gen = cuda_generator(0)
            x = cuda_randn(gen, m, i, dtype=dtype)
            w = (cuda_randn(gen, o, i) / i ** 0.5).to(dtype)
            b = cuda_randn(gen, o, dtype=dtype)
            gy = cuda_randn(gen, m, o, dtype=dtype)
            cx, cw, cb, cg = (cupy_from_torch(t) for t in (x, w, b, gy))
            flops = 2.0 * m * i * o

            def ours_fwd():
                return linear.linear_forward(cx, cw, cb)

            def ours_fb():
                linear.linear_forward(cx, cw, cb)
                return linear.linear_backward(cg, cx, cw)

            tx, tw, tb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))

            def t_fwd(f=torch.nn.functional.linear):
                with torch.no_grad():
                    return f(x, w, b)

            def t_fb(f=torch.nn.functional.linear):
                tx.grad = tw.grad = tb.grad = None
                f(tx, tw, tb).backward(gy)
                return tx.grad, tw.grad, tb.grad

            # correctness first: y and every gradient, tolerance relative to each tensor's scale
            tol = 3e-2 if dtype == torch.bfloat16 else 1e-2
            ours = [ours_fwd(), *ours_fb()]
            theirs = [t_fwd(), *t_fb()]
            for what, a, t in zip(("forward", "grad_input", "grad_weight", "grad_bias"), ours, theirs):
                check_close_gpu(f"linear {label} {what}", a, t, tol)

            ours_f, ours_b = gpu_time(ours_fwd, repeat), gpu_time(ours_fb, repeat)
            results.append(Result("linear fwd", label, ours_f, gpu_time(t_fwd, repeat), flops=flops,
                                  extra={"baseline": "torch eager (cuBLAS)"}))
            results.append(Result("linear fwd+bwd", label, ours_b, gpu_time(t_fb, repeat), flops=3 * flops,
                                  extra={"baseline": "torch eager (cuBLAS)"}))
            try:  # torch.compile as a second baseline, where inductor runs
                c_fwd = torch_compile(torch.nn.functional.linear)

                def c_step(x_, w_, b_, g_):
                    y_ = torch.nn.functional.linear(x_, w_, b_)
                    return torch.autograd.grad(y_, (x_, w_, b_), g_)

                c_fb = torch_compile(c_step)

                def tc_fwd():
                    with torch.no_grad():
                        return c_fwd(x, w, b)

                def tc_fb():
                    return c_fb(tx, tw, tb, gy)

                ref = t_fwd()
                check_close_gpu(f"linear {label} torch.compile forward", tc_fwd(), ref, tol)
                results.append(Result("linear fwd", f"{label} vs compile", ours_f, gpu_time(tc_fwd, repeat),
                                      flops=flops, extra={"baseline": "torch.compile"}))
                results.append(Result("linear fwd+bwd", f"{label} vs compile", ours_b, gpu_time(tc_fb, repeat),
                                      flops=3 * flops, extra={"baseline": "torch.compile"}))
            except Exception as exc:  # noqa: BLE001 - no compiler toolchain, an inductor bug: say so
                mark_compile_unavailable("bench_linear", label, exc, results[-2:])
    return results
