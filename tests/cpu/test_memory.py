"""``gpukernels.cpu._memory``: the allocator settings the numpy backend applies on its
first kernel call, and the ways to keep them off. Subprocesses: the settings are
process-wide and applied once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SNIPPET = """
import json, numpy as np, gpukernels as gk
from gpukernels.cpu import _memory
before = dict(_memory._state)
gk.functional.relu(gk.tensor(np.ones(3, np.float32)))  # the first numpy-backend kernel call
print(json.dumps({"before": before["applied"], "after": _memory._state["applied"], "again": _memory.apply(),
                  "glibc": _memory._glibc() is not None}))
"""


def _run(**env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("GPUKERNELS_CPU_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")}
    full.update(env, GPUKERNELS_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_first_kernel_call_applies_the_settings_once():
    got = _run()
    assert got["before"] is None
    assert got["after"] == got["again"]
    expected = {"mmap_threshold": 32 << 20, "trim_threshold": 256 << 20} if got["glibc"] else {}
    assert got["after"] == expected


def test_opt_out_and_the_users_own_choices_are_kept():
    assert _run(GPUKERNELS_CPU_MALLOC="default")["after"] == {}
    got = _run(MALLOC_TRIM_THRESHOLD_="1000000")
    assert "trim_threshold" not in got["after"]
    if got["glibc"]:
        assert got["after"] == {"mmap_threshold": 32 << 20}
