"""Backend choice, dispatch, and the NumPy-only import."""

import os
import subprocess
import sys

import numpy as np
import pytest

import gpukernels as gk
from gpukernels import backend


def run_python(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_import_needs_only_numpy():
    # torch, triton and cupy made unimportable: the package and every op still work
    code = (
        "import sys\n"
        "for m in ('torch', 'triton', 'cupy'): sys.modules[m] = None\n"
        "import gpukernels as gk, gpukernels.nn, gpukernels.optim\n"
        "from gpukernels import functional as F\n"
        "m = gk.nn.Sequential(gk.nn.Conv2d(1, 2, 3, activation='relu'), gk.nn.Flatten(), gk.nn.Linear(8, 3))\n"
        "loss = F.cross_entropy(m(gk.randn(2, 1, 4, 4)), gk.tensor([0, 2]))\n"
        "loss.backward(); gk.optim.Adam(m.parameters()).step()\n"
        "print(gk.get_backend())\n"
    )
    result = run_python(code, GPUKERNELS_BACKEND="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"


def test_import_does_not_load_torch():
    result = run_python("import sys, gpukernels, gpukernels.nn, gpukernels.optim, gpukernels.functional\n"
                        "print(sorted(m for m in ('torch', 'triton', 'cupy') if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_environment_variable_chooses_backend():
    result = run_python("import gpukernels as gk; print(gk.get_backend())", GPUKERNELS_BACKEND="numpy")
    assert result.stdout.strip() == "numpy"
    bad = run_python("import gpukernels as gk; gk.get_backend()", GPUKERNELS_BACKEND="tpu")
    assert bad.returncode != 0 and "GPUKERNELS_BACKEND must be one of" in bad.stderr and "'tpu'" in bad.stderr


def test_set_backend_validates_name():
    with pytest.raises(ValueError, match="backend must be one of .* got 'metal'"):
        gk.set_backend("metal")


@pytest.mark.skipif(backend.cuda_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CuPy does not see a GPU"):
        gk.set_backend("cuda")
    with pytest.raises(RuntimeError, match="(GPU|CuPy)"):
        gk.tensor([1.0]).to("cuda")


def test_ops_dispatch_through_the_backend_table():
    gk.set_backend("numpy")
    x = gk.randn(2, 3, 5, 5, requires_grad=True)
    w = gk.randn(4, 3, 3, 3, requires_grad=True)
    gk.functional.max_pool2d(gk.functional.conv2d(x, w), 2).sum().backward()
    assert backend.last_dispatch["conv"] == "gpukernels.cpu.conv"
    assert backend.last_dispatch["pool"] == "gpukernels.cpu.pool"


def test_tensor_device_and_numpy_round_trip():
    t = gk.tensor(np.arange(6.0).reshape(2, 3))
    assert t.device == "cpu" and t.dtype == np.float64
    assert t.to("cpu") is t
    assert np.array_equal(t.numpy(), np.arange(6.0).reshape(2, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="needs an NVIDIA GPU with CuPy")
def test_cuda_tensors_round_trip_and_match_numpy():
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((5, 3, 3, 3)).astype(np.float32)
    cpu = gk.functional.conv2d(gk.tensor(x), gk.tensor(w), padding=1).numpy()
    gpu = gk.functional.conv2d(gk.tensor(x).to("cuda"), gk.tensor(w).to("cuda"), padding=1)
    assert gpu.device == "cuda"
    np.testing.assert_allclose(gpu.numpy(), cpu, rtol=1e-4, atol=1e-4)


def test_every_triton_family_implements_its_reference_api():
    # a family module in gpukernels/triton/ serves the whole family: a missing function
    # would be an AttributeError at dispatch, so check the public names up front
    import importlib
    import inspect

    from gpukernels import kernels
    from gpukernels.triton import aot_specs

    assert "conv" in kernels.FAMILIES
    for family in sorted(kernels.FAMILIES):
        ref = importlib.import_module(f"gpukernels.cpu.{family}")
        tri = importlib.import_module(f"gpukernels.triton.{family}")
        wanted = {n for n, f in vars(ref).items() if inspect.isfunction(f) and not n.startswith("_")
                  and f.__module__ == ref.__name__}
        missing = sorted(n for n in wanted if not callable(getattr(tri, n, None)))
        assert not missing, f"gpukernels.triton.{family} lacks {missing}"
        assert callable(aot_specs.SPECS.get(family)), f"gpukernels.triton.aot_specs lacks {family}'s specs"
