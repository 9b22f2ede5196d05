"""Every test starts from the same library state, whatever order xdist runs them in:
the NumPy backend, the library generator seeded with 0, TF32 allowed.

Triton kernels run on Triton's interpreter in a test session (tests/triton/), unless
GPUKERNELS_TEST_GPU=1 asks for the compiled kernels of the `gpu`-marked tests (a
separate session: Triton fixes interpretation when a kernel is decorated)."""

import contextlib
import os

if os.environ.get("GPUKERNELS_TEST_GPU") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

import gpukernels as gk  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_library_state():
    previous = gk.get_backend()
    gk.set_backend("numpy")
    gk.manual_seed(0)
    gk.backend.set_allow_tf32(True)  # the default; models.train --precision changes it
    yield
    if previous != "numpy":
        gk.set_backend(previous)


@pytest.fixture
def knob():
    """``knob(split_k=5)``: ``gpukernels.knobs.override`` for the rest of the test
    (each call nests; all are undone, in reverse, when the test ends)."""
    from gpukernels import knobs

    with contextlib.ExitStack() as stack:
        yield lambda **values: stack.enter_context(knobs.override(**values))


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a GPU and compiled kernels (GPUKERNELS_TEST_GPU=1, `make test-gpu`)."""
    from gpukernels import backend

    if os.environ.get("GPUKERNELS_TEST_GPU") == "1" and backend.cuda_available():
        return
    why = ("no GPU here" if not backend.cuda_available()
           else "run with GPUKERNELS_TEST_GPU=1 (make test-gpu): this session interprets Triton")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))
