"""max_pool2d (and avg_pool2d) forward, and forward + backward, ours vs PyTorch on the same
machine. Pooling is memory-bound: the rate column is GB/s against the copy ceiling.

Bytes one call must move (e = itemsize, P input and Q output elements):
    max forward      P*e + Q*(e + 1)          read x, write y and a 1-byte argmax
    max fwd+bwd      forward + Q*(e + 1) + P*e   read dy and argmax, write dx
    avg forward      P*e + Q*e;  avg fwd+bwd: twice that
These are our kernels' traffic; PyTorch's max pooling writes and reads an 8-byte index
per output instead of 1 byte, so at equal bandwidth it moves more.
"""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
from gpukernels import functional as F
from gpukernels.backend import cupy_from_torch

from .common import (CpuPair, Result, check_close_gpu, cuda_generator, cuda_randn, gpu_time,
                     mark_compile_unavailable, pick_cases, time_both, torch_compile)

# (name, op, N, C, H, W, kernel, stride, padding)
CASES = [
    ("2x2 s2 32x64x32x32", "max", 32, 64, 32, 32, 2, 2, 0),
    ("3x3 s2 p1 32x64x32x32", "max", 32, 64, 32, 32, 3, 2, 1),
    ("avg 2x2 s2 32x64x32x32", "avg", 32, 64, 32, 32, 2, 2, 0),
]
QUICK = [("2x2 s2 8x16x16x16", "max", 8, 16, 16, 16, 2, 2, 0),
         ("avg 3x3 s2 p1 8x16x16x16", "avg", 8, 16, 16, 16, 3, 2, 1)]
TINY = [("tiny 2x2 s2 2x4x8x8", "max", 2, 4, 8, 8, 2, 2, 0)]


def _out(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def _bytes(op, n, c, h, w, k, s, p, itemsize):
    """(forward, forward+backward) bytes our kernels must move."""
    big, small = n * c * h * w, n * c * _out(h, k, s, p) * _out(w, k, s, p)
    if op == "max":
        fwd = big * itemsize + small * (itemsize + 1)
        return fwd, fwd + small * (itemsize + 1) + big * itemsize
    fwd = (big + small) * itemsize
    return fwd, 2 * fwd


def _torch_op(op, k, s, p):
    if op == "max":
        return lambda t: torch.nn.functional.max_pool2d(t, k, s, p)
    return lambda t: torch.nn.functional.avg_pool2d(t, k, s, p)


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    """On a GPU our Triton kernels vs PyTorch CUDA (run_gpu); else the NumPy backend vs torch CPU."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    results = []
    rng = np.random.default_rng(0)
    for name, op, n, c, h, w, k, s, p in pick_cases(CASES, QUICK, TINY, quick):
        x = rng.standard_normal((n, c, h, w), dtype=np.float32)
        oh, ow = _out(h, k, s, p), _out(w, k, s, p)
        g = rng.standard_normal((n, c, oh, ow), dtype=np.float32)
        fwd_bytes, fb_bytes = _bytes(op, n, c, h, w, k, s, p, 4)
        ours_op = (lambda t: F.max_pool2d(t, k, s, p)) if op == "max" else (lambda t: F.avg_pool2d(t, k, s, p))
        pair = CpuPair(ours_op, _torch_op(op, k, s, p), (x,), g)
        pair.check_forward(f"{op}_pool2d {name}", 1e-6, 1e-5)
        pair.check_grads(f"{op}_pool2d {name}", ("grad_input",), 1e-6, 1e-5)
        entry = "maxpool" if op == "max" else "avgpool"
        results.append(time_both(f"{entry} fwd", name, pair.ours_fwd, pair.torch_fwd, repeat, bytes=fwd_bytes))
        results.append(time_both(f"{entry} fwd+bwd", name, pair.ours_fb, pair.torch_fb, repeat, bytes=fb_bytes))
    return results


# ----------------------------------------------------------------------------- GPU

# The shapes: ResNet-CIFAR / ImageNet-stem activations, both max pools.
GPU_CASES = [
    ("2x2 s2 128x64x32x32", "max", 128, 64, 32, 32, 2, 2, 0),
    ("3x3 s2 p1 128x64x32x32", "max", 128, 64, 32, 32, 3, 2, 1),
    ("2x2 s2 256x64x56x56", "max", 256, 64, 56, 56, 2, 2, 0),
    ("3x3 s2 p1 256x64x56x56", "max", 256, 64, 56, 56, 3, 2, 1),
    ("avg 2x2 s2 128x64x32x32", "avg", 128, 64, 32, 32, 2, 2, 0),
]
GPU_QUICK = [GPU_CASES[0], GPU_CASES[3]]


def run_gpu(quick: bool = False, repeat: int = 100) -> list[Result]:
    """Forward and forward+backward, ours (Triton on CuPy arrays) vs PyTorch eager on the
    same GPU, in float32 and bf16; torch.compile as a second baseline where it runs.
    Every result is checked against PyTorch before anything is timed."""
    from gpukernels.triton import pool

    results = []
    for name, op, n, c, h, w, k, s, p in GPU_QUICK if quick else GPU_CASES:
        for dtype in (torch.float32, torch.bfloat16):
            label = f"{name} {'fp32' if dtype == torch.float32 else 'bf16'}"
            gen = cuda_generator(0)
            x = cuda_randn(gen, n, c, h, w, dtype=dtype)
            oh, ow = _out(h, k, s, p), _out(w, k, s, p)
            gy = cuda_randn(gen, n, c, oh, ow, dtype=dtype)
            cx, cg = cupy_from_torch(x), cupy_from_torch(gy)
            fwd_bytes, fb_bytes = _bytes(op, n, c, h, w, k, s, p, x.element_size())
            args = ((k, k), (s, s), (p, p))

            if op == "max":
                def ours_fwd():
                    return pool.max_pool2d_forward(cx, *args, (1, 1))

                def ours_fb():
                    y, am = pool.max_pool2d_forward(cx, *args, (1, 1))
                    return pool.max_pool2d_backward(cg, am, (n, c, h, w), *args, (1, 1))
            else:
                def ours_fwd():
                    return pool.avg_pool2d_forward(cx, *args)

                def ours_fb():
                    pool.avg_pool2d_forward(cx, *args)
                    return pool.avg_pool2d_backward(cg, (n, c, h, w), *args)

            theirs_op = _torch_op(op, k, s, p)
            tx = x.detach().clone().requires_grad_(True)

            def t_fwd(f=theirs_op):
                with torch.no_grad():
                    return f(x)

            def t_fb(f=theirs_op):
                tx.grad = None
                f(tx).backward(gy)
                return tx.grad

            # correctness first: forward exactly (max) / to rounding (avg), then dx
            y_ours = ours_fwd()
            tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
            tol_y = 0.0 if op == "max" else tol
            check_close_gpu(f"{op}_pool2d {label} forward", y_ours[0] if op == "max" else y_ours, t_fwd(),
                            tol_y, atol=tol_y)
            check_close_gpu(f"{op}_pool2d {label} grad_input", ours_fb(), t_fb(), tol, atol=tol)

            entry = "maxpool" if op == "max" else "avgpool"
            ours_f, ours_b = gpu_time(ours_fwd, repeat), gpu_time(ours_fb, repeat)
            results.append(Result(f"{entry} fwd", label, ours_f, gpu_time(t_fwd, repeat), bytes=fwd_bytes,
                                  extra={"baseline": "torch eager"}))
            results.append(Result(f"{entry} fwd+bwd", label, ours_b, gpu_time(t_fb, repeat), bytes=fb_bytes,
                                  extra={"baseline": "torch eager"}))
            try:  # torch.compile as a second baseline, where inductor runs
                c_fwd = torch_compile(lambda t, f=theirs_op: f(t))
                c_fb_op = torch_compile(lambda t, g, f=theirs_op: torch.autograd.grad(f(t), t, g)[0])

                def tc_fwd():
                    with torch.no_grad():
                        return c_fwd(x)

                def tc_fb():
                    return c_fb_op(tx, gy)

                check_close_gpu(f"{op}_pool2d {label} torch.compile forward", tc_fwd(), t_fwd(), tol, atol=tol)
                results.append(Result(f"{entry} fwd", f"{label} vs compile", ours_f, gpu_time(tc_fwd, repeat),
                                      bytes=fwd_bytes, extra={"baseline": "torch.compile"}))
                results.append(Result(f"{entry} fwd+bwd", f"{label} vs compile", ours_b, gpu_time(tc_fb, repeat),
                                      bytes=fb_bytes, extra={"baseline": "torch.compile"}))
            except Exception as exc:  # noqa: BLE001 - no compiler toolchain, an inductor bug: say so
                mark_compile_unavailable("bench_pool", label, exc, results[-2:])
    return results
