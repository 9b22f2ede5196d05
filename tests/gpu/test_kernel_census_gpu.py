"""What runs on the GPU during one training step on the cuda backend: our Triton kernels,
plus a short, named list of CuPy glue (each listed with why it is there). A kernel of
anything else (a CuPy reduction, an elementwise pass we thought gone, a cuBLAS call)
fails the test with the census, so "a step runs only our kernels" stays checked.

Run with ``make test-gpu`` (GPUKERNELS_TEST_GPU=1): compiled kernels, not the interpreter."""

from __future__ import annotations

import collections
import importlib
import pkgutil

import numpy as np
import pytest

import gpukernels as gk
from models import train
from models.fast_cifar import fast_cifar
from models.resnet import resnet20

pytestmark = pytest.mark.gpu

#: CuPy kernels a step may still launch (name prefixes), and why
GLUE = {
    "cupy_copy": "conv weights re-laid out per call (KH, KW, C, O); gradients copied into the "
                 "optimizer's flat buffer; contiguous copies of strided views",
    "cupy_add": "BatchNorm2d.num_batches_tracked += 1 (PyTorch launches one too)",
    "cupy_fill": "the backward's seed gradient (ones) and zero fills",
}


def _our_kernel_names() -> set:
    """Names of every @triton.jit function in gpukernels.triton."""
    import gpukernels.triton as pkg

    names = set()
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name == "aot":
            continue
        module = importlib.import_module(f"gpukernels.triton.{info.name}")
        names |= {n for n, v in vars(module).items() if type(v).__name__ == "JITFunction"}
    return names


@pytest.mark.parametrize("make,batch", [(resnet20, 128), (fast_cifar, 256)], ids=["resnet20", "fast_cifar"])
@pytest.mark.parametrize("precision", [None, gk.bfloat16], ids=["tf32", "bf16"])
def test_a_training_step_runs_our_kernels_and_listed_glue_only(make, batch, precision):
    import torch
    from torch.profiler import ProfilerActivity, profile

    gk.set_backend("cuda")
    try:
        gk.manual_seed(0)
        model = make()
        opt = gk.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        step = train.make_train_step(model, opt, precision)
        rng = np.random.default_rng(0)
        x = gk.tensor(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32), device="cuda")
        y = gk.tensor(rng.integers(0, 10, batch), device="cuda")
        for _ in range(2):  # compile and autotune outside the census
            step(x, y)[0].item()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(x, y)[0].item()
            torch.cuda.synchronize()
    finally:
        gk.set_backend("numpy")
    kernels = collections.Counter(
        e.name for e in prof.events()
        if e.device_type.name == "CUDA" and not e.name.startswith(("Memset", "Memcpy", "cudaMemcpy")))
    ours = _our_kernel_names()
    census = "\n".join(f"{n:5d}  {name}" for name, n in kernels.most_common())

    def is_ours(name):  # Triton names a kernel after its function (a suffix is tolerated)
        return name in ours or any(name.startswith(o) for o in ours)

    assert any(is_ours(name) for name in kernels), f"no Triton kernel of ours seen:\n{census}"
    foreign = {name: n for name, n in kernels.items() if not is_ours(name) and not name.startswith(tuple(GLUE))}
    assert not foreign, f"kernels that are neither ours nor listed glue: {foreign}\ncensus:\n{census}"
