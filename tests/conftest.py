"""Every test starts from the same library state, whatever order xdist runs them in:
the NumPy backend and the library generator seeded with 0."""

import pytest

import gpukernels as gk


@pytest.fixture(autouse=True)
def _fresh_library_state():
    previous = gk.get_backend()
    gk.set_backend("numpy")
    gk.manual_seed(0)
    yield
    if previous != "numpy":
        gk.set_backend(previous)
