"""Linear layer y = x W^T + b forward, and forward + backward (dx, dW, db), ours vs PyTorch
on the same machine. FLOPs: forward 2*M*I*O (M batch rows, I in, O out features); the
backward does two GEMMs of the same size (dx, dW; db is O*M adds, not counted), so
forward+backward = 3x. The big square GEMM is compute-bound (GFLOP/s against the
GEMM ceiling); the classifier heads are launch-bound (their row shows how far from it)."""

from __future__ import annotations

import sys

import numpy as np
import torch

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F

from .common import Result, check_close, timeit

# (name, batch, in_features, out_features)
CASES = [
    ("1024x1024->1024", 1024, 1024, 1024),
    ("digits head 512x128->10", 512, 128, 10),
    ("resnet head 128x64->10", 128, 64, 10),
]
QUICK = [("256x128->64", 256, 128, 64), ("digits head 64x128->10", 64, 128, 10)]


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    """On a GPU our Triton GEMMs vs cuBLAS (run_gpu); else the NumPy backend vs torch CPU."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    results = []
    rng = np.random.default_rng(0)
    for name, m, i, o in QUICK if quick else CASES:
        x = rng.standard_normal((m, i), dtype=np.float32)
        w = (rng.standard_normal((o, i), dtype=np.float32) / np.sqrt(i)).astype(np.float32)
        b = rng.standard_normal(o, dtype=np.float32)
        g = rng.standard_normal((m, o), dtype=np.float32)
        flops = 2.0 * m * i * o
        gx, gw, gb = (gk.tensor(a, requires_grad=True) for a in (x, w, b))
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        gg, tg = gk.tensor(g), torch.tensor(g)

        def ours_fwd():
            with gk.no_grad():
                return F.linear(gx, gw, gb)

        def torch_fwd():
            with torch.no_grad():
                return torch.nn.functional.linear(tx, tw, tb)

        def ours_fb():
            gx.grad = gw.grad = gb.grad = None
            F.linear(gx, gw, gb).backward(gg)

        def torch_fb():
            tx.grad = tw.grad = tb.grad = None
            torch.nn.functional.linear(tx, tw, tb).backward(tg)

        check_close(f"linear {name} forward", ours_fwd().numpy(), torch_fwd().numpy(), 1e-4, 1e-4)
        ours_fb()
        torch_fb()
        for label, a, t in (("grad_input", gx, tx), ("grad_weight", gw, tw), ("grad_bias", gb, tb)):
            check_close(f"linear {name} {label}", a.grad.numpy(), t.grad.numpy(), 1e-3, 1e-4)
        results.append(Result("linear fwd", name, timeit(ours_fwd, repeat=repeat),
                              timeit(torch_fwd, repeat=repeat), flops=flops))
        results.append(Result("linear fwd+bwd", name, timeit(ours_fb, repeat=repeat),
                              timeit(torch_fb, repeat=repeat), flops=3 * flops))
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
    import cupy
    import triton.testing

    from gpukernels.triton import linear

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=25, rep=max(repeat, 20), return_mode="median") / 1e3

    def as_cupy(t):
        return (cupy.from_dlpack(t.view(torch.int16)).view(cupy.uint16)
                if t.dtype == torch.bfloat16 else cupy.from_dlpack(t))

    def as_torch(a, dtype):
        t = torch.from_dlpack(a.view(cupy.int16) if a.dtype == cupy.uint16 else a)
        return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t

    torch.backends.cuda.matmul.allow_tf32 = True  # as ours: TF32 for float32 unless turned off
    backend.set_allow_tf32(True)
    results = []
    for name, m, i, o in GPU_QUICK if quick else GPU_CASES:
        for dtype in (torch.float32, torch.bfloat16):
            label = f"{name} {'tf32' if dtype == torch.float32 else 'bf16'}"
            gen = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(m, i, device="cuda", generator=gen).to(dtype)
            w = (torch.randn(o, i, device="cuda", generator=gen) / i ** 0.5).to(dtype)
            b = torch.randn(o, device="cuda", generator=gen).to(dtype)
            gy = torch.randn(m, o, device="cuda", generator=gen).to(dtype)
            cx, cw, cb, cg = (as_cupy(t) for t in (x, w, b, gy))
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
                ref = t.float().cpu().numpy()
                check_close(f"linear {label} {what}", as_torch(a, dtype).float().cpu().numpy(), ref,
                            tol * float(np.abs(ref).max()), tol)

            ours_f, ours_b = bench(ours_fwd), bench(ours_fb)
            results.append(Result("linear fwd", label, ours_f, bench(t_fwd), flops=flops,
                                  extra={"baseline": "torch eager (cuBLAS)"}))
            results.append(Result("linear fwd+bwd", label, ours_b, bench(t_fb), flops=3 * flops,
                                  extra={"baseline": "torch eager (cuBLAS)"}))
            try:  # torch.compile as a second baseline, where inductor runs
                c_fwd = torch.compile(torch.nn.functional.linear)

                def c_step(x_, w_, b_, g_):
                    y_ = torch.nn.functional.linear(x_, w_, b_)
                    return torch.autograd.grad(y_, (x_, w_, b_), g_)

                c_fb = torch.compile(c_step)

                def tc_fwd():
                    with torch.no_grad():
                        return c_fwd(x, w, b)

                def tc_fb():
                    return c_fb(tx, tw, tb, gy)

                ref = t_fwd().float().cpu().numpy()
                check_close(f"linear {label} torch.compile forward", tc_fwd().float().cpu().numpy(), ref,
                            tol * float(np.abs(ref).max()), tol)
                results.append(Result("linear fwd", f"{label} vs compile", ours_f, bench(tc_fwd), flops=flops,
                                      extra={"baseline": "torch.compile"}))
                results.append(Result("linear fwd+bwd", f"{label} vs compile", ours_b, bench(tc_fb),
                                      flops=3 * flops, extra={"baseline": "torch.compile"}))
            except Exception as exc:  # noqa: BLE001 - no compiler toolchain, an inductor bug: say so
                print(f"bench_linear: torch.compile unavailable for {label}: {type(exc).__name__}: "
                      f"{str(exc)[:200]}", file=sys.stderr)
                results[-1].extra["torch_compile"] = "unavailable"
                results[-2].extra["torch_compile"] = "unavailable"
    return results
