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

from .common import Result, check_close, timeit

# (name, N, C, H, W)
CASES = [
    ("resnet 64x32x32", 32, 64, 32, 32),
    ("resnet 128x16x16", 32, 128, 16, 16),
    ("resnet 256x8x8", 32, 256, 8, 8),
]
QUICK = [("small 16x16x16", 8, 16, 16, 16)]


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    """On a GPU the Triton kernels vs PyTorch eager (run_gpu); else the NumPy backend vs
    torch CPU, float32, NCHW."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    results = []
    rng = np.random.default_rng(0)
    for name, n, c, h, w in QUICK if quick else CASES:
        x = (1 + 2 * rng.standard_normal((n, c, h, w))).astype(np.float32)
        g = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        b = (0.1 * rng.standard_normal(c)).astype(np.float32)
        size = x.nbytes

        gx, gw, gb = (gk.tensor(a, requires_grad=True) for a in (x, wt, b))
        grm, grv = gk.tensor(np.zeros(c, np.float32)), gk.tensor(np.ones(c, np.float32))
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
        trm, trv = torch.zeros(c), torch.ones(c)
        gg, tg = gk.tensor(g), torch.tensor(g)

        def ours_fwd():
            with gk.no_grad():
                return F.batch_norm(gx, grm, grv, gw, gb, training=True)

        def torch_fwd():
            with torch.no_grad():
                return torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, True, 0.1, 1e-5)

        def ours_fb():
            gx.grad = gw.grad = gb.grad = None
            F.batch_norm(gx, grm, grv, gw, gb, training=True).backward(gg)

        def torch_fb():
            tx.grad = tw.grad = tb.grad = None
            torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, True, 0.1, 1e-5).backward(tg)

        check_close(f"batch_norm {name} forward", ours_fwd().numpy(), torch_fwd().numpy(), 1e-4, 1e-4)
        check_close(f"batch_norm {name} running_var", grv.numpy(), trv.numpy(), 1e-5, 1e-5)
        ours_fb()
        torch_fb()
        for label, a, t in (("grad_input", gx, tx), ("grad_weight", gw, tw), ("grad_bias", gb, tb)):
            scale = float(np.abs(t.grad.numpy()).max())
            check_close(f"batch_norm {name} {label}", a.grad.numpy(), t.grad.numpy(), 1e-4 * scale, 1e-4)

        results.append(Result("bn train fwd", name, timeit(ours_fwd, repeat=repeat),
                              timeit(torch_fwd, repeat=repeat), bytes=2 * size))
        results.append(Result("bn fwd+bwd", name, timeit(ours_fb, repeat=repeat),
                              timeit(torch_fb, repeat=repeat), bytes=5 * size))
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
    import cupy
    import triton.testing

    from gpukernels.triton import batchnorm as bn

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=25, rep=max(repeat, 20), return_mode="median") / 1e3

    def as_cupy(t):
        return (cupy.from_dlpack(t.view(torch.int16)).view(cupy.uint16)
                if t.dtype == torch.bfloat16 else cupy.from_dlpack(t))

    def as_torch(a, dtype):
        t = torch.from_dlpack(a.view(cupy.int16) if a.dtype == cupy.uint16 else a)
        return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t

    results = []
    for name, n, c, h, w in GPU_QUICK if quick else GPU_CASES:
        for dtype in (torch.float32, torch.bfloat16):
            for layout, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
                label = f"{name} {'fp32' if dtype == torch.float32 else 'bf16'} {layout}"
                gen = torch.Generator(device="cuda").manual_seed(0)
                x = (1 + 2 * torch.randn(n, c, h, w, device="cuda", generator=gen)).to(dtype)
                gy = torch.randn(n, c, h, w, device="cuda", generator=gen).to(dtype)
                x, gy = x.contiguous(memory_format=fmt), gy.contiguous(memory_format=fmt)
                wt = 1 + 0.1 * torch.randn(c, device="cuda", generator=gen)
                b = 0.1 * torch.randn(c, device="cuda", generator=gen)
                size = x.numel() * x.element_size()
                rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
                cx, cg, cw, cb, crm, crv = (as_cupy(t) for t in (x, gy, wt, b, rm, rv))

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
                ref = t_fwd().float()
                ours_y = as_torch(ours_fwd()[0], dtype).float()
                check_close(f"batch_norm {label} forward", ours_y.cpu().numpy(), ref.cpu().numpy(),
                            tol * float(ref.abs().max()), tol)
                t_fb()
                dx, dg, db = ours_fb()
                for glabel, ours_g, t in (("grad_input", as_torch(dx, dtype), tx.grad),
                                          ("grad_weight", as_torch(dg, torch.float32), tw.grad),
                                          ("grad_bias", as_torch(db, torch.float32), tb.grad)):
                    t = t.float()
                    check_close(f"batch_norm {label} {glabel}", ours_g.float().cpu().numpy(), t.cpu().numpy(),
                                tol * float(t.abs().max()), tol)

                compiled = {}
                try:
                    fn = torch.compile(eager)
                    t_fwd(fn)  # compile outside the timing
                    t_fb(fn)
                    compiled = {"torch_compile_fwd_s": bench(lambda: t_fwd(fn)),
                                "torch_compile_fb_s": bench(lambda: t_fb(fn))}
                except Exception as exc:  # noqa: BLE001 - reported, not fatal
                    compiled = {"torch_compile": f"unavailable: {type(exc).__name__}: {str(exc)[:200]}"}
                fwd_extra = {"baseline": f"PyTorch eager {layout}", "moved_bytes": 3 * size,
                             "torch_compile_s": compiled.get("torch_compile_fwd_s", compiled.get("torch_compile"))}
                fb_extra = {"baseline": f"PyTorch eager {layout}", "moved_bytes": 8 * size,
                            "torch_compile_s": compiled.get("torch_compile_fb_s", compiled.get("torch_compile"))}
                results.append(Result("bn train fwd", label, bench(ours_fwd), bench(t_fwd), bytes=2 * size,
                                      extra=fwd_extra))
                results.append(Result("bn fwd+bwd", label, bench(ours_fb), bench(t_fb), bytes=5 * size,
                                      extra=fb_extra))
    return results
