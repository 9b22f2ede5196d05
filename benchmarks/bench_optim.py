"""One Adam step over many parameter tensors (ResNet-50's 161 shapes, scaled to 1M,
10M and 100M float32 parameters), ours vs ``torch.optim.Adam``.

Bytes moved per float32 parameter (the minimum): read p, g, m, v (16) and write p, m, v
(12) = 28. The GPU rate is reported against the copy bandwidth measured in the same run
(``benchmarks.common.measure_gpu_ceilings``): an update at the copy bandwidth moves
28 bytes per parameter in the time a copy moves 28.

- ``run()`` (CPU): the NumPy backend (one reference call over the flat buffer) vs
  ``torch.optim.Adam(foreach=True)`` on torch CPU tensors; smaller sizes.
- ``run_gpu()``: ``gk.optim.Adam`` on CuPy parameters (one Triton launch per step, plus
  the optimizer's Python bookkeeping) vs ``torch.optim.Adam(foreach=True)`` and
  ``(fused=True)`` on the same GPU; the faster of the two is the baseline. ``extra``
  also holds the bare kernel's time and the time of every config of
  ``gpukernels.triton.optim.GPU_CONFIGS`` (the update kernels are not autotuned: this
  is where ``DEFAULT_CONFIG`` gets chosen), and a row with fused gradient clipping
  (``max_grad_norm``: one norm reduction + the update) vs
  ``torch.nn.utils.clip_grad_norm_(foreach=True)`` + fused Adam.

Correctness is checked before any timing: one step of ours against one step of torch
from the same parameters and gradients.
"""

from __future__ import annotations

import numpy as np
import torch

import gpukernels as gk
import gpukernels.optim as gko
from gpukernels import knobs
from gpukernels.backend import cupy_from_torch
from gpukernels.nn.parameter import Parameter
from gpukernels.tensor import Tensor

from .common import Result, check_close, cuda_generator, cuda_randn, gpu_time, pick_cases, time_both

BYTES_PER_PARAM = 28  # Adam, float32: read p, g, m, v; write p, m, v


def resnet50_sizes() -> list[int]:
    """Element counts of ResNet-50's 161 parameter tensors (25,557,032 in all): the stem
    conv and BN, 16 bottlenecks (1x1, 3x3, 1x1 convs with their BNs; a projection on the
    first of each stage) and the classifier."""
    sizes = [64 * 3 * 7 * 7, 64, 64]
    inplanes = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            sizes += [planes * inplanes, planes, planes, planes * planes * 9, planes, planes,
                      planes * 4 * planes, planes * 4, planes * 4]
            if b == 0:
                sizes += [planes * 4 * inplanes, planes * 4, planes * 4]
            inplanes = planes * 4
    return sizes + [1000 * 2048, 1000]


def scaled_sizes(total: int) -> list[int]:
    """ResNet-50's tensor sizes scaled so they add up to about ``total`` (161 tensors)."""
    base = resnet50_sizes()
    factor = total / sum(base)
    return [max(1, round(s * factor)) for s in base]


def _case(sizes) -> str:
    return f"{sum(sizes) / 1e6:.0f}M params, {len(sizes)} tensors"


def _host_data(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return ([rng.standard_normal(n, dtype=np.float32) for n in sizes],
            [rng.standard_normal(n, dtype=np.float32) for n in sizes])


def _ours(params, grads, **kwargs):
    """gk Adam over ``params`` whose gradients are the flat buffer's slices (what a
    backward leaves), filled with ``grads``."""
    opt = gko.Adam(params, lr=1e-3, **kwargs)
    (flat,) = opt.flat_buffers()
    for p, view, g in zip(flat.params, flat.grad_views, grads):
        view[...] = g
        p.grad = Tensor(view)
    return opt, flat


def run(quick: bool = False, repeat: int = 10) -> list[Result]:
    """On a GPU our Triton Adam vs torch's (run_gpu); else the NumPy backend vs torch CPU
    Adam(foreach=True)."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    results = []
    for total in pick_cases((1_000_000, 4_000_000), (100_000,), (10_000,), quick):
        sizes = scaled_sizes(total)
        values, grads = _host_data(sizes)
        params = [Parameter(v.copy()) for v in values]
        opt, flat = _ours(params, grads)
        tparams = [torch.tensor(v, requires_grad=True) for v in values]
        for t, g in zip(tparams, grads):
            t.grad = torch.tensor(g)
        topt = torch.optim.Adam(tparams, lr=1e-3, foreach=True)
        opt.step()
        topt.step()
        check_close(f"adam {_case(sizes)}", np.concatenate([p.data.ravel() for p in params]),
                    torch.cat([t.detach().ravel() for t in tparams]).numpy(), 1e-6, 1e-5)
        n = sum(sizes)
        results.append(time_both("optim adam", _case(sizes), opt.step, topt.step, repeat, bytes=BYTES_PER_PARAM * n,
                                 extra={"baseline": "torch CPU Adam(foreach=True)", "tensors": len(sizes)}))
    return results


# ----------------------------------------------------------------------------- GPU


def run_gpu(quick: bool = False, repeat: int = 100) -> list[Result]:
    """Ours (CuPy parameters, one Triton launch per step) vs torch.optim.Adam foreach and
    fused on the GPU, at 1M, 10M and 100M float32 parameters in 161 tensors."""
    import cupy

    from gpukernels.triton import optim as tri

    results = []
    for total in ((1_000_000, 10_000_000) if quick else (1_000_000, 10_000_000, 100_000_000)):
        sizes = scaled_sizes(total)
        n = sum(sizes)
        gen = cuda_generator(0)
        tvalues = [cuda_randn(gen, s) for s in sizes]
        tgrads = [cuda_randn(gen, s) for s in sizes]
        params = [Parameter(cupy_from_torch(v.clone())) for v in tvalues]
        opt, flat = _ours(params, [cupy_from_torch(g) for g in tgrads])

        theirs = {}
        for label, flags in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
            tp = [v.clone().requires_grad_(True) for v in tvalues]
            for t, g in zip(tp, tgrads):
                t.grad = g
            theirs[label] = (tp, torch.optim.Adam(tp, lr=1e-3, **flags))

        # correctness first: one step of each from the same values and gradients
        opt.step()
        for label, (tp, topt) in theirs.items():
            topt.step()
            for i in (0, len(sizes) // 2, -1):  # first, middle and last tensors
                check_close(f"adam {_case(sizes)} tensor {i} vs torch {label}", cupy.asnumpy(params[i].data),
                            tp[i].detach().cpu().numpy(), 1e-6, 1e-5)

        times = {label: gpu_time(topt.step, repeat) for label, (_, topt) in theirs.items()}
        best = min(times, key=times.get)
        beta1, beta2 = 0.9, 0.999
        state = {name: flat.state[name] for name in ("exp_avg", "exp_avg_sq")}

        def kernel_only():
            tri.adam_update(flat.data, flat.grad, state["exp_avg"], state["exp_avg_sq"], None, step=10,
                            lr=1e-3, beta1=beta1, beta2=beta2)

        configs = {}
        for cfg in tri.GPU_CONFIGS:
            with knobs.override(configs={tri._KERNELS["adam"]: cfg}):
                configs[f"config_{cfg[0]}x{cfg[1]}w_s"] = gpu_time(kernel_only, repeat)
        results.append(Result(
            "optim adam", _case(sizes), gpu_time(opt.step, repeat), times[best], bytes=BYTES_PER_PARAM * n,
            extra={"baseline": f"torch Adam({best}=True)", **{f"torch_{k}_s": v for k, v in times.items()},
                   "kernel_only_s": gpu_time(kernel_only, repeat), **configs, "tensors": len(sizes)}))

        # fused clipping: one norm reduction + the update vs clip_grad_norm_ + fused Adam
        clip_opt, _ = _ours(params, [cupy_from_torch(g) for g in tgrads], max_grad_norm=1.0)
        tp, topt = theirs["fused"]

        def torch_clip_step():
            torch.nn.utils.clip_grad_norm_(tp, 1.0, foreach=True)
            topt.step()

        results.append(Result(
            "optim adam+clip", _case(sizes), gpu_time(clip_opt.step, repeat), gpu_time(torch_clip_step, repeat),
            bytes=(BYTES_PER_PARAM + 4) * n,
            extra={"baseline": "clip_grad_norm_(foreach=True) + Adam(fused=True)", "tensors": len(sizes)}))
        del opt, clip_opt, theirs, params, flat
        cupy.get_default_memory_pool().free_all_blocks()
    return results
