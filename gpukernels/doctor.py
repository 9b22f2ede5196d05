"""``python -m gpukernels.doctor``: is this machine set up, and do the kernels compute
the right thing here?

What it does, in order:

1. Prints the versions it finds (Python, NumPy, triton, torch, CuPy, the CUDA driver
   and runtime through CuPy, every GPU with its compute capability and memory; "not
   installed" / "none" where a piece is missing: nothing is imported until asked for,
   and a missing library never stops the run), then the backend it checks and why
   (``--interpret`` / ``--backend`` asked, ``GPUKERNELS_BACKEND`` set, CuPy sees a GPU,
   or no GPU so ``numpy``).
2. Runs every op family once on small random inputs (odd sizes, channel counts that are
   not powers of two) on that backend, forward AND backward (the same random upstream
   gradient through autograd), against the naive NumPy reference
   (``gpukernels/reference/`` called directly, in float64) and, when torch imports,
   against torch in float64. On ``numpy`` the autograd path runs the fast NumPy kernels
   (``gpukernels/cpu/``), so both comparisons can fail there. Dropout is compared with the reference applied with the
   same mask (same seed); the optimizers take two Adam / SGD-momentum steps on a few
   parameters and are compared with the reference updates (and ``torch.optim``).
3. Prints one row per check: op, the implementation that ran (``triton.conv`` or
   ``cpu.conv``: a Triton backend that silently fell back to NumPy is an ERROR),
   dtype, what it was compared with, max error, tolerance, verdict (``ok``,
   ``MISMATCH`` naming the worst output, ``ERROR`` with the exception in one line).
   The error is ``max |ours - ref| / (1 + |ref|)`` over the output, every input
   gradient and any state the op updates (``numpy.isclose`` with atol = rtol = the
   tolerance); tolerances per precision are in ``TOLERANCES`` and under the table.
4. Ends with a one-line verdict; exit status 0 when every check is ok, 1 on any
   MISMATCH or ERROR, 2 when the backend asked for cannot be used here.

Run it:

    python -m gpukernels.doctor                 # the default backend (cuda with a GPU, else numpy)
    python -m gpukernels.doctor --interpret     # the Triton kernels on Triton's interpreter (CPU)
    python -m gpukernels.doctor --backend cuda --json doctor.json   # a scripted GPU run
    python -m gpukernels.doctor --only relu,conv --seed 3 --traceback

``--interpret`` must be chosen before any Triton kernel module is imported in the
process (Triton fixes interpretation when a kernel is decorated); the doctor says so
when that already happened. Every check is one entry of ``CHECKS`` (``gpukernels/doctor_checks.py``): adding an op is one
``OpCheck(...)`` there (a family of ``kernels.FAMILIES`` without an entry is
reported as an ERROR row).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import sys
import time
import traceback
import zlib
from typing import Any

import numpy as np

import gpukernels as gk
from gpukernels import backend, kernels
from gpukernels import random as gk_random
from gpukernels.doctor_checks import CHECKS, OpCheck, OptimCheck  # the table of checks

#: Tolerance (atol = rtol) per precision of the backend's arithmetic.
TOLERANCES = {
    "float64": 1e-10,   # the numpy backend: float64 against float64 (reference, torch)
    "float32": 1e-5,    # Triton kernels in float32 against the float64 reference
    "tf32": 1e-2,       # float32 conv / linear on TF32 tensor cores (cuda, the default)
    "exact": 0.0,       # casts: bit-for-bit
}

# ----------------------------------------------------------------------------- versions


def _module(name):
    """``(module, None)``, or ``(None, why)`` when it does not import."""
    try:
        return importlib.import_module(name), None
    except ImportError:
        return None, "not installed"
    except Exception as exc:  # noqa: BLE001 - a broken install is what a doctor reports
        return None, f"import failed: {_one_line(exc)}"


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def versions() -> dict[str, Any]:
    """What this machine has: library versions, the CUDA driver/runtime and GPUs (through
    CuPy). Never raises; missing pieces read "not installed" / "none"."""
    info: dict[str, Any] = {
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "platform": platform.platform(),
        "gpukernels": gk.__version__,
        "numpy": np.__version__,
    }
    for name in ("triton", "torch", "cupy"):
        module, why = _module(name)
        info[name] = getattr(module, "__version__", "unknown") if module else why
    cupy, _ = _module("cupy") if info["cupy"] != "not installed" else (None, None)
    info["cuda driver"] = info["cuda runtime"] = "none"
    info["gpus"] = []
    if cupy is not None:
        runtime = cupy.cuda.runtime
        for key, query in (("cuda driver", runtime.driverGetVersion), ("cuda runtime", runtime.runtimeGetVersion)):
            try:
                info[key] = _cuda_version(query())
            except Exception as exc:  # noqa: BLE001 - no driver: say so
                info[key] = f"none ({_one_line(exc)})"
        try:
            count = runtime.getDeviceCount()
        except Exception:  # noqa: BLE001 - no driver or no device: no GPU
            count = 0
        for i in range(count):
            try:
                props = runtime.getDeviceProperties(i)
                name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
                info["gpus"].append({"index": i, "name": name,
                                     "compute_capability": f"{props['major']}.{props['minor']}",
                                     "memory_gib": round(props["totalGlobalMem"] / 2**30, 1)})
            except Exception as exc:  # noqa: BLE001
                info["gpus"].append({"index": i, "error": _one_line(exc)})
    return info


def _gpu_text(gpus) -> str:
    if not gpus:
        return "none"
    return "; ".join(f"#{g['index']} {g['name']} (sm_{g['compute_capability'].replace('.', '')}, "
                     f"{g['memory_gib']} GiB)" if "name" in g else f"#{g['index']} error: {g['error']}"
                     for g in gpus)


# ----------------------------------------------------------------------------- backend choice


class DoctorError(RuntimeError):
    """The backend asked for cannot be used in this process (exit status 2)."""


def choose_backend(args) -> tuple[str, str]:
    """Set the process-wide backend the doctor checks; returns ``(name, why)``."""
    asked = "interpret" if args.interpret else args.backend
    if args.interpret and args.backend not in (None, "interpret"):
        raise DoctorError(f"--interpret and --backend {args.backend} contradict each other")
    if asked == "interpret" or (asked is None and os.environ.get("GPUKERNELS_BACKEND") == "interpret"):
        loaded = backend._loaded_kernel_modules()
        if not backend.interpreting() and loaded:
            raise DoctorError(
                "--interpret: Triton kernel modules were already imported in this process without "
                f"TRITON_INTERPRET=1 ({', '.join(sorted(loaded))}); Triton fixes interpretation when a "
                "kernel is decorated, so run `python -m gpukernels.doctor --interpret` in a fresh "
                "process (or set TRITON_INTERPRET=1 before the first import)")
        os.environ["TRITON_INTERPRET"] = "1"  # before any Triton kernel module is imported
    if asked is not None:
        why = ("--interpret asked: Triton's interpreter on NumPy arrays" if args.interpret
               else f"--backend {asked} asked")
        name = asked
    elif os.environ.get("GPUKERNELS_BACKEND"):
        name = os.environ["GPUKERNELS_BACKEND"]
        why = f"GPUKERNELS_BACKEND={name} set"
    elif backend.cuda_available():
        name, why = "cuda", "CuPy sees a GPU"
    else:
        cupy, _ = _module("cupy")
        name = "numpy"
        why = (f"no GPU: {'CuPy not installed' if cupy is None else 'CuPy sees no GPU'}, so numpy; "
               "--interpret checks the Triton kernels on this CPU")
    try:
        backend.set_backend(name)
    except (RuntimeError, ValueError) as exc:
        raise DoctorError(f"cannot use backend {name!r} ({why}): {exc}") from exc
    return name, why


def _bf16_supported(name: str, info: dict) -> tuple[bool, str]:
    if name != "cuda":
        return True, ""
    try:
        cupy = importlib.import_module("cupy")
        cc = cupy.cuda.Device().compute_capability  # "80" for sm_80
        if int(cc) < 80:
            return False, f"bfloat16 needs compute capability 8.0+, this GPU is sm_{cc}"
    except Exception as exc:  # noqa: BLE001
        return False, f"cannot read the compute capability: {_one_line(exc)}"
    return True, ""


# ----------------------------------------------------------------------------- running checks


@dataclasses.dataclass
class Row:
    op: str
    family: str
    ran: str = "-"
    dtype: str = "-"
    compared: str = "-"
    error: float | None = None
    tolerance: float | None = None
    precision: str = "-"
    verdict: str = "ERROR"
    detail: str = ""
    seconds: float = 0.0


@dataclasses.dataclass
class Context:
    backend: str
    dtype: np.dtype
    seed: int
    torch: Any  # the module, or None
    bf16: tuple[bool, str]

    def rng(self, name: str) -> np.random.Generator:
        """An independent stream per check: results do not depend on order or --only."""
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _grid(a):
    """Floats rounded to float32 values (held as float64): exact in every backend dtype,
    so every side of a comparison starts from the same numbers."""
    a = np.asarray(a)
    return a.astype(np.float32).astype(np.float64) if a.dtype.kind == "f" else a


def _host(x):
    """A float64 host array from a gk Tensor, backend array, torch tensor or None."""
    if x is None:
        return None
    if isinstance(x, gk.Tensor):
        x = x.numpy()
    elif type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    else:
        x = backend.to_numpy(x)
    return np.asarray(x, dtype=np.float64)


def _split(result, n):
    """``result`` as a tuple of n items, missing trailing ones None / []."""
    items = tuple(result) if isinstance(result, tuple) else (result,)
    return items + (None,) * (n - len(items))


def error_of(got, expected) -> tuple[float, str]:
    """``max |got - expected| / (1 + |expected|)``, inf on a shape or NaN mismatch."""
    if got is None:
        return float("inf"), "missing"
    if got.shape != expected.shape:
        return float("inf"), f"shape {got.shape} vs {expected.shape}"
    if got.size == 0:
        return 0.0, ""
    nan_got, nan_exp = np.isnan(got), np.isnan(expected)
    if (nan_got != nan_exp).any():
        return float("inf"), "NaN where the reference has none" if nan_got.any() else "NaN expected"
    ok = ~nan_got
    with np.errstate(invalid="ignore"):
        diff = np.abs(got[ok] - expected[ok])
        diff[np.isinf(got[ok]) & (got[ok] == expected[ok])] = 0.0
        err = diff / (1.0 + np.abs(expected[ok]))
    return (float(err.max()) if err.size else 0.0), ""


def _compare(got: dict, references: dict) -> tuple[float, str]:
    """The worst error over every part and reference, and where it was."""
    worst, where = 0.0, ""
    for against, expected in references.items():
        for part, value in expected.items():
            err, why = error_of(got.get(part), value)
            if err > worst or (err == worst and why and not where):
                worst, where = err, f"{part} vs {against}" + (f": {why}" if why else "")
    return worst, where


def _run_op(check: OpCheck, ctx: Context) -> tuple[dict, dict]:
    rng = ctx.rng(check.name)
    arrays = {k: _grid(v) for k, v in check.inputs(rng).items()}
    floats = [k for k, a in arrays.items() if a.dtype.kind == "f"]

    gk.manual_seed(ctx.seed)  # dropout: the reference and ours draw the same mask
    y_ref, backward, extras_ref = _split(check.reference(*arrays.values()), 3)
    y_ref = np.asarray(y_ref, dtype=np.float64)
    g = _grid(rng.standard_normal(y_ref.shape))
    reference = {"out": y_ref}
    if check.grads:
        reference.update({f"grad {k}": _host(v) for k, v in zip(floats, backward(g))})
    reference.update({f"state {i}": _host(v) for i, v in enumerate(extras_ref or [])})

    gk.manual_seed(ctx.seed)
    tensors = [gk.tensor(a.astype(ctx.dtype), requires_grad=check.grads) if a.dtype.kind == "f"
               else gk.tensor(a) for a in arrays.values()]
    out, extras = _split(check.ours(*tensors), 2)
    if check.grads:
        out.backward(gk.tensor(g, dtype=out.dtype))
    got = {"out": _host(out)}
    if check.grads:
        got.update({f"grad {k}": _host(t.grad) for k, t in zip(arrays, tensors) if k in floats})
    got.update({f"state {i}": _host(v) for i, v in enumerate(extras or [])})

    references = {"reference": reference}
    if ctx.torch is not None and check.torch is not None:
        torch = ctx.torch
        tt = [torch.tensor(a, dtype=torch.float64, requires_grad=check.grads) if a.dtype.kind == "f"
              else torch.tensor(a) for a in arrays.values()]
        out_t, extras_t = _split(check.torch(torch, *tt), 2)
        expected = {"out": _host(out_t)}
        if check.grads:
            out_t.backward(torch.tensor(g, dtype=out_t.dtype))
            expected.update({f"grad {k}": _host(t.grad) if t.grad is not None else np.zeros(t.shape)
                             for k, t in zip(arrays, tt) if k in floats})
        expected.update({f"state {i}": _host(v) for i, v in enumerate(extras_t or [])})
        references["torch"] = expected
    return got, references


def _run_optim(check: OptimCheck, ctx: Context) -> tuple[dict, dict]:
    rng = ctx.rng(check.name)
    start = [_grid(rng.standard_normal(s)) for s in check.shapes]
    steps = [[_grid(rng.standard_normal(s)) for s in check.shapes] for _ in range(check.steps)]

    params = [gk.nn.Parameter(gk.tensor(p.astype(ctx.dtype))) for p in start]
    opt = check.ours(params)
    for grads in steps:
        for p, g in zip(params, grads):
            p.grad = gk.tensor(g.astype(ctx.dtype))
        opt.step()
    got = {f"param {i}": _host(p) for i, p in enumerate(params)}

    ref = [p.copy() for p in start]
    check.reference(ref, steps)
    references = {"reference": {f"param {i}": p for i, p in enumerate(ref)}}
    if ctx.torch is not None and check.torch is not None:
        torch = ctx.torch
        tp = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in start]
        topt = check.torch(torch, tp)
        for grads in steps:
            for p, g in zip(tp, grads):
                p.grad = torch.tensor(g, dtype=torch.float64)
            topt.step()
        references["torch"] = {f"param {i}": _host(p) for i, p in enumerate(tp)}
    return got, references


def run_check(check, ctx: Context, show_traceback: bool = False) -> Row:
    """One row of the table: run ``check`` on the active backend and compare."""
    row = Row(check.name, check.family, dtype=np.dtype(ctx.dtype).name)
    if check.precision:
        row.precision = check.precision
    elif check.matmul and ctx.backend == "cuda" and row.dtype == "float32" and backend.get_allow_tf32():
        row.precision = "tf32"
    else:
        row.precision = row.dtype
    row.tolerance = TOLERANCES[row.precision]
    if check.needs_bf16 and not ctx.bf16[0]:
        row.verdict, row.detail = "skipped", ctx.bf16[1]
        return row
    family = kernels.FAMILIES[check.family]
    expected_module = family.triton_path if ctx.backend in ("cuda", "interpret") else family.cpu.__name__
    backend.last_dispatch.pop(check.family, None)
    begin = time.perf_counter()
    try:
        runner = _run_optim if isinstance(check, OptimCheck) else _run_op
        got, references = runner(check, ctx)
    except Exception as exc:  # noqa: BLE001 - every failure is a row, never a crash
        row.seconds = time.perf_counter() - begin
        row.verdict, row.detail = "ERROR", _one_line(exc)
        if show_traceback:
            traceback.print_exc()
        return row
    row.seconds = time.perf_counter() - begin
    ran = backend.last_dispatch.get(check.family)
    row.ran = (ran or "nothing").removeprefix("gpukernels.")
    row.compared = ", ".join(references)
    row.error, where = _compare(got, references)
    if ran != expected_module:
        row.verdict = "ERROR"
        row.detail = f"ran {ran or 'no kernel of the family'}, expected {expected_module}"
    elif row.error <= row.tolerance:
        row.verdict = "ok"
    else:
        row.verdict, row.detail = "MISMATCH", where
    return row


def run_checks(ctx: Context, only=None, show_traceback=False) -> list[Row]:
    checks = [c for c in CHECKS if not only or any(w in (c.name, c.family) or c.name.startswith(w) for w in only)]
    rows = [run_check(c, ctx, show_traceback) for c in checks]
    if not only:  # the doctor's own completeness: every Triton family has an entry
        covered = {c.family for c in CHECKS}
        for family in sorted(set(kernels.FAMILIES) - covered):
            rows.append(Row(f"({family})", family, detail="no doctor check for this family: add an entry "
                                                          "to gpukernels.doctor_checks.CHECKS"))
    return rows


# ----------------------------------------------------------------------------- output

COLUMNS = ("op", "ran", "dtype", "vs", "max error", "tolerance", "verdict", "s")


def _cells(row: Row) -> tuple[str, ...]:
    err = "-" if row.error is None else ("inf" if row.error == float("inf") else f"{row.error:.1e}")
    if row.tolerance is None:
        tol = "-"
    else:
        tol = "0 (exact)" if row.tolerance == 0 else f"{row.tolerance:.0e} ({row.precision})"
    verdict = row.verdict + (f": {row.detail}" if row.detail else "")
    return (row.op, row.ran, row.dtype, row.compared, err, tol, verdict, f"{row.seconds:.2f}")


def format_table(rows: list[Row]) -> str:
    """A plain aligned table (no terminal needed)."""
    cells = [COLUMNS] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    right = {"max error", "s"}
    def line(c):
        return "  ".join(v.rjust(w) if name in right else v.ljust(w)
                         for v, w, name in zip(c, widths, COLUMNS)).rstrip()
    return "\n".join([line(cells[0]), line(tuple("-" * w for w in widths))] + [line(c) for c in cells[1:]])


def print_table(rows: list[Row], file=None, width: int | None = None) -> None:
    """A ``rich`` table when rich imports and ``file`` is a terminal (``width`` columns,
    default the terminal's), else ``format_table``."""
    file = file or sys.stdout
    try:
        from rich.console import Console  # noqa: PLC0415 - optional
        from rich.table import Table  # noqa: PLC0415
    except ImportError:
        Console = None  # noqa: N806
    if Console is None or not file.isatty():
        print(format_table(rows), file=file)
        return
    table = Table()
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in ("max error", "s") else "left",
                         no_wrap=name != "verdict")
    colours = {"ok": "green", "skipped": "yellow"}
    for r in rows:
        cells = list(_cells(r))
        colour = colours.get(r.verdict, "red")
        cells[6] = f"[{colour}]{cells[6]}[/{colour}]"
        table.add_row(*cells)
    Console(file=file, width=width).print(table)


def _json_row(row: Row) -> dict:
    """A row as strict JSON (an infinite error becomes the string "inf")."""
    d = dataclasses.asdict(row)
    if d["error"] is not None and not np.isfinite(d["error"]):
        d["error"] = "inf"
    return d


def summary(rows: list[Row], name: str, info: dict) -> str:
    failed = [r for r in rows if r.verdict in ("MISMATCH", "ERROR")]
    skipped = sum(r.verdict == "skipped" for r in rows)
    stack = f"triton {info['triton']}" if name != "numpy" else f"numpy {info['numpy']}"
    if failed:
        names = ", ".join(f"{r.op} ({r.verdict})" for r in failed)
        return f"doctor: {len(failed)} of {len(rows)} checks FAILED on backend {name} ({stack}): {names}"
    extra = f" ({skipped} skipped)" if skipped else ""
    return f"doctor: {len(rows)} checks, all ok{extra} on backend {name} ({stack})"


# ----------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gpukernels.doctor",
                                description="Print versions, then check every op family of the active backend "
                                            "against the NumPy reference (and torch); exit 1 on any failure.")
    p.add_argument("--interpret", action="store_true",
                   help="run the Triton kernels on Triton's interpreter (CPU; sets TRITON_INTERPRET=1)")
    p.add_argument("--backend", choices=backend.BACKENDS, help="the backend to check (default: as gpukernels chooses)")
    p.add_argument("--json", metavar="FILE", help="also write the versions and rows as JSON to FILE")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs and dropout masks (default 0)")
    p.add_argument("--only", metavar="NAMES", help="comma-separated check names (or prefixes) or families")
    p.add_argument("--traceback", action="store_true", help="print the traceback of every ERROR")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    previous = backend._state["name"]
    rng_state, tf32 = gk_random.get_rng_state(), backend.get_allow_tf32()
    try:
        return _main(args)
    finally:  # an in-process call leaves the library as it found it
        backend._state["name"] = previous
        gk_random.set_rng_state(rng_state)
        backend.set_allow_tf32(tf32)


def _main(args) -> int:
    try:
        name, why = choose_backend(args)
    except DoctorError as exc:
        print(f"doctor: error: {exc}", file=sys.stderr)
        return 2
    info = versions()
    info["gpu"] = _gpu_text(info["gpus"])
    torch, _ = _module("torch")
    labels = ("python", "platform", "gpukernels", "numpy", "triton", "torch", "cupy", "cuda driver",
              "cuda runtime", "gpu")
    width = max(map(len, labels)) + 1
    for key in labels:
        print(f"{key + ':':<{width}} {info[key]}")
    interp = os.environ.get("TRITON_INTERPRET", "unset")
    print(f"{'backend:':<{width}} {name} ({why}); TRITON_INTERPRET={interp}"
          + (f"; TF32 {'allowed' if backend.get_allow_tf32() else 'off'}" if name == "cuda" else ""))
    ctx = Context(name, np.dtype(np.float64 if name == "numpy" else np.float32), args.seed, torch,
                  _bf16_supported(name, info))
    vs = "the NumPy reference (float64)" + (", torch float64" if torch is not None else "")
    if name == "numpy" and torch is None:
        vs += " -- torch does not import: the numpy backend is compared with the code it runs (plumbing only)"
    print(f"{'checks:':<{width}} {ctx.dtype.name} on {name} vs {vs}; seed {args.seed}")
    print()
    only = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else None
    rows = run_checks(ctx, only, args.traceback)
    print_table(rows)
    print("error = max |ours - ref| / (1 + |ref|) over the output, input gradients and updated state; "
          "tolerance per precision: " + ", ".join(f"{k} {v:.0e}" if v else f"{k} 0" for k, v in TOLERANCES.items()))
    line = summary(rows, name, info)
    if args.json:
        payload = {"versions": info, "backend": name, "reason": why, "seed": args.seed,
                   "dtype": ctx.dtype.name, "tolerances": TOLERANCES,
                   "rows": [_json_row(r) for r in rows], "summary": line,
                   "ok": not any(r.verdict in ("MISMATCH", "ERROR") for r in rows)}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, default=str)
            f.write("\n")
    print(line)
    return 1 if any(r.verdict in ("MISMATCH", "ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
