"""Batch norm in training mode: forward, and forward + backward (input, weight and bias
gradients), ours vs PyTorch on the same machine.

Bytes (Result.bytes) are the traffic no implementation can avoid, S = bytes of x:
forward reads x and writes y (2 S); forward + backward adds reading g and x and
writing dx (5 S in all). So GB/s against the copy ceiling says how close a call comes
to a copy of the same size. Our Triton kernels move 3 S (x is read twice: statistics,
then y) and 8 S (the backward reads g and x twice), recorded in ``extra["moved_bytes"]``:
at best they reach 2/3 and 5/8 of that ceiling (less where L2 holds x between the
two reads, as for bf16 at ResNet-CIFAR sizes on an H100)."""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
from gpukernels import functional as F
from gpukernels.backend import cupy_from_torch

from .common import (CpuPair, Result, check_close, check_close_gpu, cuda_generator, cuda_randn, gpu_time,
                     pick_cases, time_both, torch_compile)

# (name, N, C, H, W)
CASES = [
    ("resnet 64x32x32", 32, 64, 32, 32),
    ("resnet 128x16x16", 32, 128, 16, 16),
    ("resnet 256x8x8", 32, 256, 8, 8),
]
QUICK = [("small 16x16x16", 8, 16, 16, 16)]
TINY = [("tiny 4x4x4", 2, 4, 4, 4)]


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    """On a GPU the Triton kernels vs PyTorch eager (run_gpu); else the NumPy backend vs
    torch CPU, float32, NCHW."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    results = []
    rng = np.random.default_rng(0)
    for name, n, c, h, w in pick_cases(CASES, QUICK, TINY, quick):
        x = (1 + 2 * rng.standard_normal((n, c, h, w))).astype(np.float32)
        g = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        b = (0.1 * rng.standard_normal(c)).astype(np.float32)
        size = x.nbytes
        grm, grv = gk.tensor(np.zeros(c, np.float32)), gk.tensor(np.ones(c, np.float32))
        trm, trv = torch.zeros(c), torch.ones(c)
        pair = CpuPair(lambda x_, w_, b_: F.batch_norm(x_, grm, grv, w_, b_, training=True),
                       lambda x_, w_, b_: torch.nn.functional.batch_norm(x_, trm, trv, w_, b_, True, 0.1, 1e-5),
                       (x, wt, b), g)

        pair.check_forward(f"batch_norm {name}", 1e-4, 1e-4)
        check_close(f"batch_norm {name} running_var", grv.numpy(), trv.numpy(), 1e-5, 1e-5)
        pair.check_grads(f"batch_norm {name}", ("grad_input", "grad_weight", "grad_bias"), 1e-4, 1e-4, scaled=True)

        results.append(time_both("bn train fwd", name, pair.ours_fwd, pair.torch_fwd, repeat, bytes=2 * size))
        results.append(time_both("bn fwd+bwd", name, pair.ours_fb, pair.torch_fb, repeat, bytes=5 * size))
    return results


# ----------------------------------------------------------------------------- GPU

# ResNet on CIFAR, batch 128: the three stages' activation shapes.
GPU_CASES = [
    ("resnet 128x64x32x32", 128, 64, 32, 32),
    ("resnet 128x128x16x16", 128, 128, 16, 16),
    ("resnet 128x256x8x8", 128, 256, 8, 8),
]
GPU_QUICK = [GPU_CASES[0]]


def run_gpu(quick: bool = False, repeat: int = 100) -> list[Result]:
    """Training forward and forward + backward, ours (Triton, CuPy arrays) vs
    ``torch.nn.functional.batch_norm`` eager (cuDNN) on the same GPU, in float32 and bf16
    (float32 weights and running statistics, as nn.BatchNorm2d under autocast), NCHW and
    channels-last; ``torch.compile`` of the same call is timed too where it works
    (``extra["torch_compile_s"]``, or the reason it is unavailable)."""
    from gpukernels.triton import batchnorm as bn

    results = []
    for name, n, c, h, w in GPU_QUICK if quick else GPU_CASES:
        for dtype in (torch.float32, torch.bfloat16):
            for layout, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
                label = f"{name} {'fp32' if dtype == torch.float32 else 'bf16'} {layout}"
                gen = cuda_generator(0)
                x = cuda_randn(gen, n, c, h, w, dtype=dtype, scale=2, shift=1)
                gy = cuda_randn(gen, n, c, h, w, dtype=dtype)
                x, gy = x.contiguous(memory_format=fmt), gy.contiguous(memory_format=fmt)
                wt = cuda_randn(gen, c, scale=0.1, shift=1)
                b = cuda_randn(gen, c, scale=0.1)
                size = x.numel() * x.element_size()
                rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
                cx, cg, cw, cb, crm, crv = (cupy_from_torch(t) for t in (x, gy, wt, b, rm, rv))

                def ours_fwd():
                    return bn.batch_norm_forward(cx, crm, crv, cw, cb, True, 0.1, 1e-5)

                def ours_fb():
                    y, mean, inv = bn.batch_norm_forward(cx, crm, crv, cw, cb, True, 0.1, 1e-5)
                    return bn.batch_norm_backward(cg, cx, mean, inv, cw, True)

                tx = x.detach().clone().requires_grad_(True)
                tw, tb = wt.clone().requires_grad_(True), b.clone().requires_grad_(True)
                trm, trv = rm.clone(), rv.clone()

                def eager(xx, ww, bb):
                    return torch.nn.functional.batch_norm(xx, trm, trv, ww, bb, True, 0.1, 1e-5)

                def t_fwd(fn=eager):
                    with torch.no_grad():
                        return fn(tx, tw, tb)

                def t_fb(fn=eager):
                    tx.grad = tw.grad = tb.grad = None
                    fn(tx, tw, tb).backward(gy)

                # correctness first: y and the three gradients against eager PyTorch
                tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
                ref = t_fwd()
                check_close_gpu(f"batch_norm {label} forward", ours_fwd()[0], ref, tol)
                t_fb()
                dx, dg, db = ours_fb()
                for glabel, ours_g, t in (("grad_input", dx, tx.grad), ("grad_weight", dg, tw.grad),
                                          ("grad_bias", db, tb.grad)):
                    check_close_gpu(f"batch_norm {label} {glabel}", ours_g, t, tol)

                compiled = {}
                try:
                    fn = torch_compile(eager)
                    t_fwd(fn)  # compile outside the timing
                    t_fb(fn)
                    compiled = {"torch_compile_fwd_s": gpu_time(lambda: t_fwd(fn), repeat),
                                "torch_compile_fb_s": gpu_time(lambda: t_fb(fn), repeat)}
                except Exception as exc:  # noqa: BLE001 - reported, not fatal
                    compiled = {"torch_compile": f"unavailable: {type(exc).__name__}: {str(exc)[:200]}"}
                fwd_extra = {"baseline": f"PyTorch eager {layout}", "moved_bytes": 3 * size,
                             "torch_compile_s": compiled.get("torch_compile_fwd_s", compiled.get("torch_compile"))}
                fb_extra = {"baseline": f"PyTorch eager {layout}", "moved_bytes": 8 * size,
                            "torch_compile_s": compiled.get("torch_compile_fb_s", compiled.get("torch_compile"))}
                results.append(Result("bn train fwd", label, gpu_time(ours_fwd, repeat), gpu_time(t_fwd, repeat),
                                      bytes=2 * size, extra=fwd_extra))
                results.append(Result("bn fwd+bwd", label, gpu_time(ours_fb, repeat), gpu_time(t_fb, repeat),
                                      bytes=5 * size, extra=fb_extra))
    return results
