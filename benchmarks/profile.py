"""Where a training step's time goes, per op family, forward and backward, plus what is
left for autograd and Python: ``python -m benchmarks.profile [--model resnet8]``.

Every kernel module the dispatch table (``gpukernels.kernels``) hands out is wrapped,
for the profiled steps only, in a proxy that times each call of its functions
(``conv2d_forward``, ``batch_norm_backward``, ``sgd_update``, ...); a call is counted
once, under the family that was asked for it (a kernel that calls another family's
function through the table counts both: nesting is rare, and shown by ``calls``).
"Autograd + Python" is the step's wall time minus every kernel call: graph recording,
the topological sort, gradient bookkeeping, argument checks and the module tree.

On the ``cuda`` backend the kernels launch asynchronously, so the times would be
launch costs: the profile is for the ``numpy`` backend (bench_train prints it for
the ResNet-8 step).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import defaultdict

from gpukernels import kernels


class _Timed:
    """A kernel module whose functions add their wall time to ``totals``."""

    def __init__(self, family: str, module, totals: dict):
        self._family, self._module, self._totals = family, module, totals

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not callable(fn):
            return fn
        key = (self._family, _phase(name))
        totals = self._totals

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                entry = totals[key]
                entry[0] += time.perf_counter() - t0
                entry[1] += 1

        return timed


def _phase(name: str) -> str:
    if name.endswith("_backward"):
        return "backward"
    if name.endswith("_update") or name == "clip_coefficient":
        return "update"
    return "forward"


@contextlib.contextmanager
def timing():
    """Within it, every CPU kernel call is timed; yields ``{(family, phase): [s, calls]}``."""
    totals: dict = defaultdict(lambda: [0.0, 0])
    saved = {}
    for name, family in kernels.FAMILIES.items():
        saved[name] = family.cpu
        family.cpu = _Timed(name, family.cpu, totals)
    try:
        yield totals
    finally:
        for name, family in kernels.FAMILIES.items():
            family.cpu = saved[name]


def profile(step, args, steps: int = 3, warmup: int = 1) -> dict:
    """Profile ``step(*args)`` over ``steps`` calls after ``warmup``.

    Returns ``{"step_s": mean wall seconds per step, "rows": [(family, phase, seconds per
    step, calls per step)] sorted by time, "autograd_python_s": the rest, "ops": kernel
    calls per step}``."""
    for _ in range(warmup):
        step(*args)
    with timing() as totals:
        t0 = time.perf_counter()
        for _ in range(steps):
            step(*args)
        wall = (time.perf_counter() - t0) / steps
    rows = sorted(((f, ph, s / steps, n / steps) for (f, ph), (s, n) in totals.items()), key=lambda r: -r[2])
    kernel = sum(r[2] for r in rows)
    ops = sum(r[3] for r in rows)
    return {"step_s": wall, "rows": rows, "autograd_python_s": wall - kernel, "ops": ops}


def format_profile(result: dict, title: str = "") -> str:
    wall = result["step_s"]
    lines = [f"profile{': ' + title if title else ''}: {wall * 1e3:.1f} ms per step, "
             f"{result['ops']:.0f} kernel calls",
             f"  {'family':<14}{'phase':<10}{'ms/step':>9}{'share':>8}{'calls':>7}"]
    for family, phase, s, n in result["rows"]:
        lines.append(f"  {family:<14}{phase:<10}{s * 1e3:9.2f}{s / wall:8.1%}{n:7.0f}")
    rest = result["autograd_python_s"]
    per_op = rest / max(result["ops"], 1)
    lines.append(f"  {'autograd + Python':<24}{rest * 1e3:9.2f}{rest / wall:8.1%}"
                 f"   ({per_op * 1e6:.0f} us per kernel call)")
    return "\n".join(lines)


def main(argv=None) -> int:
    import gpukernels as gk  # noqa: PLC0415
    from benchmarks.bench_train import profile_case  # noqa: PLC0415

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet8", choices=("resnet8", "fastcifar", "cnn"))
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    gk.set_backend("numpy")
    result, title = profile_case(args.model, args.steps)
    print(format_profile(result, title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
