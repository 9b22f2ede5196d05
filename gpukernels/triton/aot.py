"""Compile every Triton kernel and config ahead of time, without a GPU, and read what
``ptxas`` says about it: ``python -m gpukernels.triton.aot [--arch 80,90] [--json F]``.

For each kernel variant and tile config of every op family (``aot_specs.py``) and
each target (sm_80 = A100, sm_90 = H100): ``triton.compile`` to PTX, then ``ptxas -v``
for registers, spills and shared memory, with the ptxas the installed Triton itself runs
for that target (Triton 3.9: its CUDA 13 ``ptxas-blackwell`` from sm_90 on, CUDA 12.9
``ptxas`` for sm_80; Triton 3.6: CUDA 12.8 ``ptxas`` for both; their register allocations
differ), so the counts are those of a launch on that GPU with that Triton. A GEMM-shaped
kernel must use tensor cores: ``mma`` (sm_80) / ``wgmma`` or ``mma`` (sm_90) in its PTX.
Exit status 1 when a variant spills registers or lacks tensor-core instructions, so CI
catches a config that would be slow or miscompiled on a GPU it has never seen.

Runs in its own process: Triton's interpreter mode (TRITON_INTERPRET=1, used by the
interpreter tests) is fixed when kernels are decorated, and compiling needs it off.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from .aot_specs import SPECS, KernelSpec

#: Every op family of gpukernels/triton/ (``aot_specs.SPECS`` lists each one's variants).
FAMILIES = ("activation", "batchnorm", "cast", "conv", "cross_entropy", "dropout", "linear", "loss", "optim", "pool")


def _ptxas(cap: int) -> str:
    """The ptxas the installed Triton runs for sm_``cap`` (its ``get_ptxas``, which also
    honours TRITON_PTXAS_PATH / TRITON_PTXAS_BLACKWELL_PATH); failing that, Triton's
    bin/ptxas-blackwell (the newer CUDA, which reads any PTX the older one does), else bin/ptxas."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: PLC0415

        return get_ptxas(cap).path
    except Exception:  # noqa: BLE001 - an older/newer Triton without it: look for the binaries
        import triton  # noqa: PLC0415

        bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        found = [os.path.join(bin_dir, n) for n in ("ptxas-blackwell", "ptxas")
                 if os.path.exists(os.path.join(bin_dir, n))]
        if not found:
            raise RuntimeError(f"no ptxas in {bin_dir}") from None
        return found[0]


def ptxas_stats(ptx: str, cap: int) -> dict:
    """Registers, spill bytes and shared memory that ptxas reports for ``ptx``."""
    arch = f"sm_{cap}a" if cap >= 90 else f"sm_{cap}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([_ptxas(cap), "-v", f"--gpu-name={arch}", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed for {arch}: {out.stderr.strip()[:2000]}")
    text = out.stderr + out.stdout
    regs = re.search(r"Used (\d+) registers", text)
    stores = re.search(r"(\d+) bytes spill stores", text)
    loads = re.search(r"(\d+) bytes spill loads", text)
    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_bytes": (int(stores.group(1)) if stores else 0) + (int(loads.group(1)) if loads else 0),
    }


def ptx_digest(ptx: str) -> str:
    """SHA-256 of the PTX without its debug lines (``.loc``, ``.file`` and the DWARF
    sections name source files and line numbers, which moving code changes): equal
    digests mean the same instructions, so a refactor can show it left a kernel alone."""
    import hashlib  # noqa: PLC0415

    body = ptx.split("\t.section\t.debug", 1)[0]
    kept = [line for line in body.splitlines()
            if not line.lstrip().startswith((".loc", ".file", "$L__", "//"))]
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()


def compile_spec(spec: KernelSpec, cap: int) -> dict:
    """Compile ``spec`` for sm_``cap``; return its statistics and any problem found."""
    import importlib  # noqa: PLC0415

    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    fn = getattr(importlib.import_module(spec.module), spec.kernel)
    start = time.perf_counter()
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in spec.aligned}
    compiled = triton.compile(ASTSource(fn, spec.signature, spec.constexprs, attrs), target=GPUTarget("cuda", cap, 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    ptx = compiled.asm["ptx"]
    stats = ptxas_stats(ptx, cap)
    digest = ptx_digest(ptx)
    has_mma = bool(re.search(r"\bmma\.sync|\bwgmma\.", ptx))
    problems = []
    if stats["spill_bytes"]:
        problems.append(f"spills {stats['spill_bytes']} bytes")
    if spec.tensor_cores and not has_mma:
        problems.append("no tensor-core (mma/wgmma) instruction")
    return {
        "name": spec.name, "arch": f"sm_{cap}", **stats, "mma": has_mma,
        "wgmma": "wgmma." in ptx, "shared_bytes": getattr(compiled.metadata, "shared", None),
        "ptx_sha256": digest, "seconds": round(time.perf_counter() - start, 2), "problems": problems,
        **spec.extra,
    }


def all_specs(families=FAMILIES) -> list[KernelSpec]:
    """The specs of ``families``, in that order."""
    return [spec for family in families for spec in SPECS[family]()]


def _compile_job(args):
    spec, cap = args
    try:
        return compile_spec(spec, cap)
    except Exception as exc:  # noqa: BLE001 - reported as a problem of that variant
        return {"name": spec.name, "arch": f"sm_{cap}", "problems": [f"{type(exc).__name__}: {exc}"[:2000]]}


def run(archs=(80, 90), families=FAMILIES, jobs: int | None = None, only: str | None = None) -> list[dict]:
    """Compile every spec for every arch (in ``jobs`` processes); returns one row each."""
    specs = [s for s in all_specs(families) if only is None or only in s.name]
    work = [(s, cap) for s in specs for cap in archs]
    jobs = jobs or min(len(work), os.cpu_count() or 1)
    if jobs <= 1:
        return [_compile_job(w) for w in work]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_compile_job, work))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="80,90", help="compute capabilities, e.g. 80,90")
    parser.add_argument("--family", default=",".join(FAMILIES))
    parser.add_argument("--only", help="compile the specs whose name contains this")
    parser.add_argument("--jobs", type=int, help="parallel compiler processes (default: CPU count)")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--quiet", action="store_true", help="print only the variants with problems, and the summary")
    parser.add_argument("--compare", metavar="JSON", help="a --json file of an earlier run: report every variant "
                        "whose PTX (debug lines aside) differs from it, or is new or gone")
    args = parser.parse_args(argv)
    from .. import backend  # noqa: PLC0415

    if backend.interpreting():
        parser.exit(2, "error: TRITON_INTERPRET=1 is set; ahead-of-time compiling needs it unset\n")
    archs = tuple(int(a) for a in args.arch.split(","))
    start = time.perf_counter()
    rows = run(archs, tuple(args.family.split(",")), args.jobs, args.only)
    for r in rows:
        if args.quiet and not r["problems"]:
            continue
        status = "; ".join(r["problems"]) or "ok"
        print(f"{r['name']:<58} {r['arch']:<6} regs {r.get('registers', '-')!s:>4}  "
              f"spill {r.get('spill_bytes', '-')!s:>5}  smem {r.get('shared_bytes', '-')!s:>6}  "
              f"{'wgmma' if r.get('wgmma') else 'mma' if r.get('mma') else '-':<5}  {status}")
    bad = [r for r in rows if r["problems"]]
    import triton  # noqa: PLC0415

    print(f"{len(rows)} compilations ({','.join(f'sm_{a}' for a in archs)}, triton {triton.__version__}), "
          f"{len(bad)} with problems, {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    complete = args.only is None and args.family == ",".join(FAMILIES) and archs == (80, 90)
    changed = compare(rows, args.compare, complete) if args.compare else []
    return 1 if bad or changed else 0


def compare(rows, path, complete=True) -> list[str]:
    """Print and return the variants whose PTX digest differs from those in ``path``
    (those missing from ``rows`` too when ``rows`` is a complete run)."""
    with open(path) as f:
        before = {(r["name"], r["arch"]): r.get("ptx_sha256") for r in json.load(f)}
    now = {(r["name"], r["arch"]): r.get("ptx_sha256") for r in rows}
    if not complete:
        before = {k: v for k, v in before.items() if k in now}
    changed = [f"{n} {a}: {'new' if (n, a) not in before else 'gone' if (n, a) not in now else 'PTX differs'}"
               for n, a in sorted(before.keys() | now.keys()) if before.get((n, a)) != now.get((n, a))]
    for line in changed:
        print("changed:", line)
    print(f"compared with {path}: {len(now) - len(changed)} of {len(now)} variants have the same PTX, "
          f"{len(changed)} changed")
    return changed


if __name__ == "__main__":
    sys.exit(main())
