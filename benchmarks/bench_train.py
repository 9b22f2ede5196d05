"""Training throughput: one full step (zero_grad, forward, cross-entropy, backward,
optimizer update) of a model, ours vs its PyTorch twin with the same weights, on the
same batch, reported as images per second.

CPU (``run``: the NumPy backend vs torch CPU): the digits CNN (8x8, Adam) that
``make train`` trains, ResNet-8 on 32x32 synthetic CIFAR-shaped data (SGD with
momentum, batch norm in training mode) and the fast CIFAR-10 net (``models.fast_cifar``,
SGD with Nesterov momentum) at batch 32 (8 with ``--quick``): one of its steps takes
about 0.3 s (0.15 s at batch 8) on a 2-core CPU. The losses of ours and the twin must
agree for 3 steps before anything is timed (``LATER_STEP_RTOL``: the fast CIFAR net's
losses after the first step within 1e-2). Ours and the twin's steps are timed in
turns (``common.timeit_pair``: medians of ``repeat`` each), as every CPU entry.

GPU (``run_gpu``, the cuda backend): the digits CNN (batch 512, Adam), ResNet-20
(32x32, batch 512, SGD momentum 0.9 Nesterov, weight decay 5e-4) and the fast CIFAR
net (batch 1024 and 512, SGD momentum 0.9 Nesterov). Ours in three variants:

- ``fp32``: float32, TF32 convolutions (the default);
- ``bf16``: ``gk.autocast(gk.bfloat16)`` around forward + loss (float32 master weights);
- ``bf16+graph``: the same step recorded once as a CUDA graph
  (``gpukernels.cuda_graph.GraphedStep``, optimizers with ``capturable=True``), replayed.

PyTorch runs the twin (``torch_twin``, same weights, ``.cuda()``) as:

- ``eager fp32``: NCHW float32 with TF32 (cuDNN and cuBLAS);
- ``eager AMP``: channels-last, ``torch.autocast("cuda", torch.bfloat16)``;
- ``compile``: ``torch.compile`` of the channels-last AMP forward + loss (backward
  through AOTAutograd; the optimizer step eager, ``foreach`` as PyTorch's default).

Each ours-variant gets two rows: against its matching baseline (fp32 - eager fp32,
bf16 - eager AMP, bf16+graph - compile, or eager AMP where compile does not run) and
against the best (fastest) PyTorch variant. Every row's ``extra`` holds all PyTorch
times, the ratios to eager AMP and to compile, TFLOP/s of both sides from the step's
FLOP count (``torch.utils.flop_counter`` on the twin: convs and matmuls of forward and
backward) and, where the issue sets one, the goal: ResNet-20 batch 512 bf16 >= 1.2x
eager AMP and >= 0.9x compile; fast CIFAR batch 1024 bf16 >= 1.0x eager AMP.

Correctness before timing: the first step's loss (same batch, same weights) of ours and
the twin agree (fp32 vs eager fp32: rtol 1e-3; bf16 vs eager AMP: rtol 3e-2; compile vs
eager AMP: rtol 3e-2), and the graphed step's losses over warm-up + 3 graphed steps equal
those of the same step run eagerly (exactly; if two eager runs already differ, i.e. the
kernels are not bit-deterministic, within rtol 3e-2 and the row says so).

GPU times (``_step_time``): the median over ``max(repeat, 5)`` samples, each a run of
back-to-back steps between two device-wide synchronisations, wall clock (host launch
overhead included; correct whatever stream a kernel or a graph replay runs on).
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

import gpukernels as gk
from gpukernels import backend
from gpukernels import functional as F
from models.cnn import digits_cnn
from models.fast_cifar import fast_cifar
from models.resnet import resnet8, resnet20
from models.train import make_train_step

from . import profile
from .common import OPTIONS, Result, check_close, mark_compile_unavailable, pick_cases, timeit_pair, torch_compile
from .torch_twin import torch_twin

# (name, model factory, input shape without batch, classes, batch, quick batch, optimizer)
CASES = [
    ("digits CNN", digits_cnn, (1, 8, 8), 10, 64, 64, "adam"),
    ("ResNet-8 32x32", resnet8, (3, 32, 32), 10, 128, 16, "momentum"),
    ("fast CIFAR 32x32", fast_cifar, (3, 32, 32), 10, 32, 8, "nesterov"),
]

#: relative tolerance of the losses after the first step (default 1e-4). The fast CIFAR
#: net max-pools four times: float32 rounding flips near-ties of a max pool's argmax, which
#: reroutes gradients, so its losses drift apart by up to ~1e-3 from the second step on
#: (its first-step loss, same weights, is still checked at 1e-4).
#: --tiny (the dry run of the GPU session: its plan, not its speed): the digits CNN alone
TINY = [("digits CNN", digits_cnn, (1, 8, 8), 10, 4, 4, "adam")]

LATER_STEP_RTOL = {"fast CIFAR 32x32": 1e-2}

# optimizer kind -> (class name, keyword arguments), the same for gk.optim and torch.optim
OPTIMIZERS = {
    "adam": ("Adam", {"lr": 1e-3}),
    "momentum": ("SGD", {"lr": 0.05, "momentum": 0.9}),
    "nesterov": ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    "nesterov_wd": ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
}


def _optimizer(lib, params, kind, **extra):
    """``lib.optim.<class>(params, **kwargs)`` for the optimizer ``kind`` (lib: gk or torch)."""
    cls, kwargs = OPTIMIZERS[kind]
    return getattr(lib.optim, cls)(params, **kwargs, **extra)


def _optimizers(params, twin_params, kind):
    return _optimizer(gk, params, kind), _optimizer(torch, twin_params, kind)


def run(quick: bool = False, repeat: int = 20) -> list[Result]:
    """On a GPU (cuda backend) ``run_gpu``; else the NumPy backend vs torch CPU."""
    if gk.get_backend() == "cuda":
        return run_gpu(quick, repeat)
    results = []
    rng = np.random.default_rng(0)
    cases = CASES[1:] if OPTIONS["headline"] else CASES  # headline: the ResNet-8 / fast CIFAR steps
    for name, make, shape, classes, full_batch, quick_batch, kind in pick_cases(cases, cases, TINY, quick):
        batch = quick_batch if quick else full_batch
        gk.manual_seed(0)
        model = make()
        twin = torch_twin(model)
        x = rng.standard_normal((batch,) + shape, dtype=np.float32)
        y = rng.integers(0, classes, batch)
        gx, gy = gk.tensor(x), gk.tensor(y)
        tx, ty = torch.tensor(x), torch.tensor(y)
        opt, topt = _optimizers(model.parameters(), twin.parameters(), kind)

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
            rtol = LATER_STEP_RTOL.get(name, 1e-4) if step else 1e-4
            check_close(f"{name} step {step} loss", ours().numpy(), theirs().detach().numpy(), 1e-5, rtol)
        extra = {"batch": batch}
        if name.startswith("ResNet-8"):  # where the time goes, so the next gap is visible
            prof = profile.profile(ours, (), steps=1 if quick or OPTIONS["tiny"] else 3)
            print(profile.format_profile(prof, f"{name} batch {batch} (NumPy backend)"), flush=True)
            extra["profile_ms"] = {f"{f} {ph}": round(s * 1e3, 2) for f, ph, s, _ in prof["rows"]}
            extra["profile_ms"]["autograd + Python"] = round(prof["autograd_python_s"] * 1e3, 2)
        results.append(Result("train step", f"{name} batch {batch} {kind}",
                              *timeit_pair(ours, theirs, repeat=repeat, warmup=1 if OPTIONS["tiny"] else 3),
                              unit="img/s", extra=extra))
    return results


def profile_case(model_name: str, steps: int = 3):
    """``benchmarks.profile``'s CLI: profile one CPU training step of ``model_name``."""
    name, make, shape, classes, batch, _, kind = {"resnet8": CASES[1], "fastcifar": CASES[2],
                                                   "cnn": CASES[0]}[model_name]
    rng = np.random.default_rng(0)
    gk.manual_seed(0)
    model = make()
    opt = _optimizer(gk, model.parameters(), kind)
    gx = gk.tensor(rng.standard_normal((batch,) + shape, dtype=np.float32))
    gy = gk.tensor(rng.integers(0, classes, batch))
    step = _ours_step_fn(model, opt, amp=False)
    return profile.profile(step, (gx, gy), steps=steps), f"{name} batch {batch} (NumPy backend)"


# ----------------------------------------------------------------------------- GPU

# (name, model factory, input shape without batch, classes, batch, optimizer)
GPU_CASES = [
    ("digits CNN", digits_cnn, (1, 8, 8), 10, 512, "adam"),
    ("ResNet-20", resnet20, (3, 32, 32), 10, 512, "nesterov_wd"),
    ("fast CIFAR", fast_cifar, (3, 32, 32), 10, 1024, "nesterov"),
    ("fast CIFAR", fast_cifar, (3, 32, 32), 10, 512, "nesterov"),
]
#: --quick: every model once, at the batch its goal is set for (fast CIFAR 512 dropped)
GPU_QUICK = GPU_CASES[:3]
#: --headline (the budgeted GPU run's first numbers): ResNet-20 b512 and fast CIFAR b1024
GPU_HEADLINE = GPU_CASES[1:3]

#: (name, batch) -> [(PyTorch variant, least ratio)] for the bf16 variants of ours
GOALS = {
    ("ResNet-20", 512): [("eager AMP", 1.2), ("compile", 0.9)],
    ("fast CIFAR", 1024): [("eager AMP", 1.0)],
}

OURS_VARIANTS = ("fp32", "bf16", "bf16+graph")
TORCH_VARIANTS = ("eager fp32", "eager AMP", "compile")
MATCHING = {"fp32": "eager fp32", "bf16": "eager AMP", "bf16+graph": "compile"}

FP32_RTOL, BF16_RTOL = 1e-3, 3e-2
GRAPH_STEPS = 3  # graphed steps compared (after the GraphedStep's warm-up steps)
GRAPH_WARMUP = 3


def _step_flops_per_image(model, shape, classes) -> float:
    """FLOPs of one training step per image (convs and matmuls of forward and backward,
    as ``torch.utils.flop_counter`` counts them on a CPU twin at batch 2); 0 if it fails."""
    try:
        from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

        twin = torch_twin(model)
        x = torch.randn(2, *shape)
        y = torch.arange(2) % classes
        with FlopCounterMode(display=False) as counter:
            torch.nn.functional.cross_entropy(twin(x), y).backward()
        return counter.get_total_flops() / 2
    except Exception as exc:  # noqa: BLE001 - the count is a report, not a check
        print(f"bench_train: no FLOP count: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0.0


def _step_time(step, repeat: int, warmup: int = 3, min_sample_s: float = 0.05) -> float:
    """Median seconds of one ``step()`` on the GPU: after ``warmup`` steps, ``max(repeat,
    5)`` samples, each a run of k back-to-back steps between two device-wide
    synchronisations (k chosen so that a sample lasts about ``min_sample_s``), divided by
    k. Wall-clock time with ``torch.cuda.synchronize`` (all streams), so it holds for our
    CuPy/Triton kernels, PyTorch's, and a CUDA graph replayed on any stream alike, and
    it includes the host's launch overhead, as a training loop sees it."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    one = max(time.perf_counter() - t0, 1e-6)
    k = int(min(max(min_sample_s / one, 1), 200))
    times = []
    for _ in range(max(repeat, 5)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(k):
            step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / k)
    return statistics.median(times)


def _ours_step_fn(model, opt, amp: bool):
    """fn(x, y) -> loss: ``models.train.make_train_step`` (zero_grad, forward + cross-entropy
    under bf16 autocast with ``amp``, backward, optimizer step), its loss only."""
    step = make_train_step(model, opt, gk.bfloat16 if amp else None)
    return lambda x, y: step(x, y)[0]


def _torch_step_fn(loss_fn, opt, x, y):
    """step(): zero_grad, ``loss_fn(x, y)``, backward, optimizer step; returns the loss."""

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        return loss

    return step


def _torch_loss_fn(model, amp: bool):
    ce = torch.nn.functional.cross_entropy
    if not amp:
        return lambda x, y: ce(model(x), y)

    def amp_loss(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return ce(model(x), y)

    return amp_loss


def _check_graph(label, make_model, kind, gx, gy) -> tuple[object, str]:
    """The GraphedStep of a fresh model, checked: its losses over ``GRAPH_WARMUP`` eager
    warm-up steps and ``GRAPH_STEPS`` graphed steps equal those of the same step function
    run eagerly on another fresh model (same weights, ``capturable=True`` optimizer).
    Returns (the GraphedStep, how it was checked)."""
    from gpukernels.cuda_graph import GraphedStep  # noqa: PLC0415 - GPU only

    def eager_losses():
        model = make_model()
        fn = _ours_step_fn(model, _optimizer(gk, model.parameters(), kind, capturable=True), amp=True)
        return [fn(gx, gy).item() for _ in range(GRAPH_WARMUP + GRAPH_STEPS)]

    ref = eager_losses()
    model = make_model()
    fn = _ours_step_fn(model, _optimizer(gk, model.parameters(), kind, capturable=True), amp=True)
    graphed = GraphedStep(fn, warmup=GRAPH_WARMUP, check=False)
    got = [graphed(gx, gy).item() for _ in range(GRAPH_WARMUP + GRAPH_STEPS)]
    if got == ref:
        return graphed, "exact"
    again = eager_losses()
    if again == ref:  # eager is bit-deterministic, so the graph must be too
        raise AssertionError(f"train step {label} bf16+graph: graphed losses {got} != eager bf16 losses {ref} "
                             f"(two eager runs agree exactly)")
    check_close(f"train step {label} bf16+graph losses (eager runs differ: {ref} vs {again})",
                got, ref, 0.0, BF16_RTOL)
    return graphed, f"rtol {BF16_RTOL} (eager not bit-deterministic)"


def _goal_notes(name, batch, variant, ours_s, theirs) -> list[str]:
    notes = []
    if variant.startswith("bf16"):
        for tvariant, least in GOALS.get((name, batch), []):
            if tvariant in theirs:
                ratio = theirs[tvariant] / ours_s
                notes.append(f"{ratio:.2f}x {tvariant} (goal >= {least}: {'met' if ratio >= least else 'NOT met'})")
    return notes


def run_gpu(quick: bool = False, repeat: int = 10) -> list[Result]:
    """One training step, ours (cuda backend: fp32/TF32, bf16 autocast, bf16 autocast +
    CUDA graph) vs the PyTorch twin (eager NCHW fp32/TF32, eager channels-last AMP bf16,
    torch.compile of the channels-last AMP step) on the same GPU, same weights, same
    batch; correctness checked first (see the module docstring). Images per second."""
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest algorithm per shape
    backend.set_allow_tf32(True)  # ours: TF32 for float32 convs / linears (the default)
    results = []
    cases = GPU_HEADLINE if OPTIONS["headline"] else GPU_QUICK if quick else GPU_CASES
    for name, make, shape, classes, batch, kind in cases:
        label = f"{name} b{batch}"
        gk.manual_seed(0)
        template = make()  # never stepped: every copy below starts from these weights
        state = {k: v.numpy().copy() for k, v in template.state_dict().items()}
        flops_per_img = _step_flops_per_image(template, shape, classes)

        def make_model(make=make, state=state):
            model = make()
            model.load_state_dict(state)
            return model

        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch,) + shape, dtype=np.float32)
        y = rng.integers(0, classes, batch)
        gx, gy = gk.tensor(x, device="cuda"), gk.tensor(y, device="cuda")
        tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
        tx_cl = tx.contiguous(memory_format=torch.channels_last)

        # ---- PyTorch: first-step losses (the references), then times
        theirs, first = {}, {}
        twin = torch_twin(template).cuda()
        t_fp32 = _torch_step_fn(_torch_loss_fn(twin, amp=False), _optimizer(torch, twin.parameters(), kind), tx, ty)
        first["eager fp32"] = t_fp32().item()
        theirs["eager fp32"] = _step_time(t_fp32, repeat)
        del twin, t_fp32

        twin = torch_twin(template).cuda().to(memory_format=torch.channels_last)
        t_amp = _torch_step_fn(_torch_loss_fn(twin, amp=True), _optimizer(torch, twin.parameters(), kind), tx_cl, ty)
        first["eager AMP"] = t_amp().item()
        theirs["eager AMP"] = _step_time(t_amp, repeat)
        del twin, t_amp

        compile_exc = None
        try:
            torch._dynamo.reset()  # a fresh compile per case: no shape-generalised recompiles
            twin = torch_twin(template).cuda().to(memory_format=torch.channels_last)
            closs = torch_compile(_torch_loss_fn(twin, amp=True), dynamic=False)
            t_comp = _torch_step_fn(closs, _optimizer(torch, twin.parameters(), kind), tx_cl, ty)
            first["compile"] = t_comp().item()  # compiles
            check_close(f"train step {label} torch.compile first loss", first["compile"], first["eager AMP"],
                        0.0, BF16_RTOL)
            theirs["compile"] = _step_time(t_comp, repeat)
            del twin, t_comp, closs
        except Exception as exc:  # noqa: BLE001 - no compiler toolchain, an inductor bug: say so
            compile_exc = exc
            torch._dynamo.reset()

        # ---- ours: fp32 (TF32), bf16 autocast, bf16 autocast + CUDA graph
        ours, checks = {}, {}
        for variant, amp, baseline, rtol in (("fp32", False, "eager fp32", FP32_RTOL),
                                             ("bf16", True, "eager AMP", BF16_RTOL)):
            model = make_model()
            fn = _ours_step_fn(model, _optimizer(gk, model.parameters(), kind), amp=amp)
            check_close(f"train step {label} {variant} first loss vs torch {baseline}", fn(gx, gy).item(),
                        first[baseline], 0.0, rtol)
            ours[variant] = _step_time(lambda fn=fn: fn(gx, gy), repeat)
            del model, fn

        try:
            graphed, checks["bf16+graph"] = _check_graph(label, make_model, kind, gx, gy)
            ours["bf16+graph"] = _step_time(lambda g=graphed: g(gx, gy), repeat)
            del graphed
        except Exception as exc:  # noqa: BLE001 - keep the eager rows; say why the graph has none
            print(f"bench_train: {label} bf16+graph FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)

        # ---- rows: each variant vs its matching baseline and vs the best PyTorch variant
        best = min(theirs, key=theirs.get)
        torch_times = {f"torch_{k.replace(' ', '_')}_s": v for k, v in theirs.items()}
        case_rows = []
        for variant in (v for v in OURS_VARIANTS if v in ours):
            match = MATCHING[variant] if MATCHING[variant] in theirs else "eager AMP"
            extra = {"batch": batch, "ours": variant, "optimizer": kind, **torch_times,
                     "vs_eager_amp": theirs["eager AMP"] / ours[variant]}
            if "compile" in theirs:
                extra["vs_compile"] = theirs["compile"] / ours[variant]
            if flops_per_img:
                extra["step_gflop_per_img"] = flops_per_img / 1e9
                extra["ours_tflops"] = flops_per_img * batch / ours[variant] / 1e12
            if variant in checks:
                extra["graph_check"] = checks[variant]
            goals = _goal_notes(name, batch, variant, ours[variant], theirs)
            if goals:
                extra["goals"] = "; ".join(goals)
                print(f"bench_train: {label} ours {variant}: {extra['goals']}", file=sys.stderr)
            for vs, tvariant in ((match, match), (f"best ({best})", best)):
                row_extra = dict(extra, baseline=f"torch {tvariant}")
                if flops_per_img:
                    row_extra["torch_tflops"] = flops_per_img * batch / theirs[tvariant] / 1e12
                case_rows.append(Result("train step", f"{label} {variant} vs {vs}", ours[variant],
                                        theirs[tvariant], unit="img/s", extra=row_extra))
        if compile_exc is not None:
            mark_compile_unavailable("bench_train", label, compile_exc, case_rows)
        results += case_rows
    return results
