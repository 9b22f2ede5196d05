"""The library's random number generator (initialisation, dropout, ``randn``).

One ``numpy.random.Generator`` drives every random draw, on the host, so a seed gives
the same weights and dropout masks on every backend. ``manual_seed`` resets it;
``get_rng_state`` / ``set_rng_state`` save and restore it (checkpoints).
"""

from __future__ import annotations

import numpy as np

_rng = {"gen": np.random.default_rng(0)}


def manual_seed(seed: int) -> None:
    """Seed the generator behind initialisation, dropout and ``randn``."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"manual_seed(): seed must be an int, got {type(seed).__name__}")
    _rng["gen"] = np.random.default_rng(int(seed))


def generator() -> np.random.Generator:
    return _rng["gen"]


def get_rng_state() -> dict:
    return _rng["gen"].bit_generator.state


def set_rng_state(state: dict) -> None:
    gen = np.random.default_rng()
    gen.bit_generator.state = state
    _rng["gen"] = gen
