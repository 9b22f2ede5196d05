"""Timing, machine ceilings, the result table, and the input building and correctness
checks shared by every benchmark entry."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import gpukernels as gk


def timeit(fn, *, warmup: int = 2, repeat: int = 10, min_seconds: float = 0.0, stat=statistics.median) -> float:
    """Median (or ``stat``) wall time of ``fn()`` in seconds over ``repeat`` runs after
    ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return stat(times)


def timeit_pair(a, b, *, warmup: int = 2, repeat: int = 10, block: int = 3,
                stat=statistics.median) -> tuple[float, float]:
    """``(stat of a's times, stat of b's)`` in seconds over at least ``repeat`` timed runs
    each, taken in turns after ``warmup`` runs of each: a turn is ``block`` timed runs of
    one side, the sides alternate and the order flips each round (a b, b a, ...). With
    ``block`` > 1 each turn starts with one untimed run, which pays for the switch.

    Why turns: on a shared machine whose speed drifts, timing all of ``a`` and then all
    of ``b`` compares two different stretches of time. On the 2-vCPU dev VM the second
    core comes and goes within a minute: one 16->16 32x32 b128 conv forward, min of 15
    taken back to back, read 5.17 then 8.20 ms for ours and 8.77 then 4.77 ms for
    torch's in two rounds a few seconds apart. Why the untimed first run of a turn: the
    run right after the other library's pays for the switch. Batch norm fwd+bwd 64x32x32
    b32, ours / torch's ms: back to back 4.26 / 4.76, in strict alternation (``block``
    1) 6.24 / 4.81, and back to back with a 64 MiB memset before every run 4.42 / 4.99,
    so the cache is not what slows ours after torch's call: PyTorch's OpenMP workers
    spin-wait after a parallel region, on the core our second thread needs (with
    ``OMP_WAIT_POLICY=PASSIVE`` strict alternation reads 4.83-4.96 / 5.02-5.30). Every
    CPU entry and training step takes turns of 3 (``block``'s default)."""
    for _ in range(warmup):
        a()
        b()
    times = ([], [])
    fns = (a, b)
    for r in range(-(-repeat // block)):
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            if block > 1:
                fns[k]()
            for _ in range(block):
                t0 = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t0)
    return stat(times[0]), stat(times[1])


#: Run-wide options that ``benchmarks.run`` sets from its flags and the entries read:
#: ``tiny``: the smallest cases (the dry run of ``scripts/gpu_session.sh``: it checks the
#: plan, not the speed); ``headline``: only the cases the budgeted GPU run leads with
#: (the ResNet / fast CIFAR training steps); ``torch_compile``: time ``torch.compile``
#: variants too (each costs a compile of tens of seconds on a GPU).
OPTIONS = {"tiny": False, "headline": False, "torch_compile": True}


def pick_cases(full, quick_cases, tiny, quick: bool):
    """The cases an entry runs: ``tiny`` under ``OPTIONS["tiny"]``, else quick or full."""
    return tiny if OPTIONS["tiny"] else quick_cases if quick else full


@dataclass
class Result:
    """One benchmark row: our time vs the reference's, and the work it did."""

    entry: str
    case: str
    ours_s: float
    theirs_s: float
    flops: float = 0.0  # floating-point operations of one call (0: not FLOP-bound)
    bytes: float = 0.0  # bytes one call must move at least (0: not counted)
    unit: str = "s"
    ceiling_note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Speed of ours relative to theirs: > 1 means ours is faster."""
        return self.theirs_s / self.ours_s


@dataclass
class Ceilings:
    """What this machine can do at best, measured in the same run."""

    copy_gbps: float
    gemm_gflops: float
    device: str

    @property
    def slug(self) -> str:
        """The device as a folder name: ``CPU x2 (NumPy backend)`` -> ``cpu-x2-numpy``,
        ``NVIDIA H100 80GB HBM3 (cuda backend)`` -> ``nvidia-h100-80gb-hbm3``."""
        return device_slug(self.device)


def device_slug(device: str) -> str:
    """Lower-case, dash-separated ``device`` without the ``(... backend)`` note (a CPU keeps
    its backend's name, e.g. ``numpy``; the cuda backend is implied by a GPU's name)."""
    m = re.match(r"^(.*?)\s*\((\S+) backend\)\s*$", device)
    if m:
        device = m.group(1) if m.group(2).lower() == "cuda" else f"{m.group(1)} {m.group(2)}"
    return re.sub(r"[^a-z0-9.]+", "-", device.lower()).strip("-.") or "unknown-device"


def measure_gpu_ceilings(quick: bool = False) -> Ceilings:
    """Device copy bandwidth (a 1 GiB copy, read + write) and bf16 GEMM GFLOP/s (8192^3,
    float32 accumulation) with PyTorch on the current GPU."""
    import torch  # noqa: PLC0415
    import triton.testing  # noqa: PLC0415

    n = (64 if quick else 256) * 1024 * 1024
    src = torch.ones(n, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    t = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median") / 1e3
    copy = 2 * src.numel() * 4 / t / 1e9
    m = 4096 if quick else 8192
    a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
    t = triton.testing.do_bench(lambda: a @ a, return_mode="median") / 1e3
    return Ceilings(copy, 2 * m**3 / t / 1e9, f"{torch.cuda.get_device_name()} (cuda backend)")


def measure_ceilings(quick: bool = False, gpu: bool = False) -> Ceilings:
    """Copy bandwidth (a 256 MB float32 copy) and float32 GEMM GFLOP/s (2048^3) with NumPy;
    the GPU's (bf16 GEMM) with ``gpu``. On a CPU each is the best of its runs: a ceiling
    is what the machine can do, and on a shared VM a median caught a neighbour's load
    (the GEMM's read 109-204 GFLOP/s from run to run)."""
    if gpu:
        return measure_gpu_ceilings(quick)
    n = (16 if quick else 64) * 1024 * 1024
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    t = timeit(lambda: np.copyto(dst, src), warmup=1, repeat=3 if quick else 7, stat=min)
    copy = 2 * src.nbytes / t / 1e9
    m = 1024 if quick else 2048
    a = np.random.default_rng(0).standard_normal((m, m), dtype=np.float32)
    t = timeit(lambda: a @ a, warmup=1, repeat=3 if quick else 7, stat=min)
    gemm = 2 * m**3 / t / 1e9
    return Ceilings(copy, gemm, f"CPU x{os.cpu_count()} (NumPy backend)")


def format_table(results: list[Result], ceilings: Ceilings) -> str:
    """A plain-text table: ours, theirs, ratio, and the rate against the ceiling."""
    head = f"{'entry':<16} {'case':<44} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'rate':>24}"
    lines = [
        f"device: {ceilings.device}; ceilings: copy {ceilings.copy_gbps:.1f} GB/s, "
        f"GEMM {ceilings.gemm_gflops:.0f} GFLOP/s (float32 on a CPU, bf16 on a GPU)",
        "ratio = torch time / our time (> 1: ours faster)",
        head,
        "-" * len(head),
    ]
    for r in results:
        lines.append(
            f"{r.entry:<16} {r.case:<44} {1e3 * r.ours_s:9.2f} {1e3 * r.theirs_s:9.2f} "
            f"{r.ratio:6.2f} {rate_text(r, ceilings):>24}"
        )
    return "\n".join(lines)


def print_table(results: list[Result], ceilings: Ceilings, file=None) -> None:
    """The results on the terminal: a ``rich`` table (ratio green when ours is faster, red
    when slower) when rich is installed and ``file`` is a terminal, else ``format_table``."""
    file = file or sys.stdout
    try:
        from rich.console import Console  # noqa: PLC0415 - optional ('bench' extra)
        from rich.table import Table  # noqa: PLC0415
    except ImportError:
        Console = None  # noqa: N806
    if Console is None or not file.isatty():
        print(format_table(results, ceilings), file=file)
        return
    table = Table(title=f"{ceilings.device}: copy {ceilings.copy_gbps:.1f} GB/s, GEMM "
                        f"{ceilings.gemm_gflops:.0f} GFLOP/s", caption="ratio = torch time / our time (> 1: ours faster)")
    for name, justify in (("entry", "left"), ("case", "left"), ("ours ms", "right"), ("torch ms", "right"),
                          ("ratio", "right"), ("rate", "right")):
        table.add_column(name, justify=justify)
    for r in results:
        colour = "green" if r.ratio >= 1 else "red"
        table.add_row(r.entry, r.case, f"{1e3 * r.ours_s:.2f}", f"{1e3 * r.theirs_s:.2f}",
                      f"[{colour}]{r.ratio:.2f}[/{colour}]", rate_text(r, ceilings).strip())
    Console(file=file).print(table)


def rate(r: Result, ceilings: Ceilings) -> tuple[float | None, str, float | None]:
    """``(rate, unit, percent of the ceiling)`` of our time: GFLOP/s against the GEMM ceiling
    for a FLOP-counted row, GB/s against the copy ceiling for a byte-counted one, our img/s
    (no ceiling) for a training row, else ``(None, "", None)``."""
    if r.flops:
        g = r.flops / r.ours_s / 1e9
        return g, "GFLOP/s", 100 * g / ceilings.gemm_gflops
    if r.bytes:
        g = r.bytes / r.ours_s / 1e9
        return g, "GB/s", 100 * g / ceilings.copy_gbps
    if r.unit == "img/s" and "batch" in r.extra:
        return r.extra["batch"] / r.ours_s, "img/s", None
    return None, "", None


def rate_text(r: Result, ceilings: Ceilings) -> str:
    """The table's rate column: ``"  28.8 GF/s    9%"``, ``"512 vs 640 img/s"`` or ``""``."""
    value, unit, pct = rate(r, ceilings)
    if unit == "GFLOP/s":
        return f"{value:7.1f} GF/s {pct:4.0f}%"
    if unit == "GB/s":
        return f"{value:7.1f} GB/s {pct:4.0f}%"
    if unit == "img/s":
        return f"{value:.0f} vs {r.extra['batch'] / r.theirs_s:.0f} img/s"
    return ""


# ----------------------------------------------------------------------------- result files

RESULT_FIELDS = ("entry", "case", "ours_s", "theirs_s", "ratio", "flops", "bytes", "rate",
                 "rate_unit", "pct_of_ceiling", "extra")
STAMP_FIELDS = ("commit", "date_utc", "device", "ceilings", "python", "numpy", "torch", "triton",
                "cupy", "gpu_driver", "command")


def row_dict(r: Result, ceilings: Ceilings) -> dict:
    """One row of the result files (the keys of ``RESULT_FIELDS``)."""
    value, unit, pct = rate(r, ceilings)
    return {"entry": r.entry, "case": r.case, "ours_s": r.ours_s, "theirs_s": r.theirs_s,
            "ratio": r.ratio, "flops": r.flops, "bytes": r.bytes, "rate": value, "rate_unit": unit,
            "pct_of_ceiling": pct, "extra": dict(r.extra)}


def git_commit(repo: Path | None = None) -> str:
    """``git rev-parse HEAD`` of ``repo`` (default: this checkout), with ``-dirty`` when
    tracked files have changes; ``GPUKERNELS_COMMIT`` when set (a Docker image has no
    .git: docker/Dockerfile bakes it in); ``"unknown"`` outside git or without git."""
    if os.environ.get("GPUKERNELS_COMMIT"):
        return os.environ["GPUKERNELS_COMMIT"]
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + "-dirty" if dirty else head) or "unknown"


def _module_version(name: str) -> str:
    try:
        module = __import__(name)
    except ImportError:
        return "not installed"
    except Exception as exc:  # noqa: BLE001 - a broken install (e.g. no CUDA for cupy)
        return f"unavailable ({type(exc).__name__})"
    return str(getattr(module, "__version__", "unknown"))


def gpu_driver_version() -> str | None:
    """The GPU driver when a GPU is present (``None`` otherwise): the CUDA driver API version
    from torch.cuda or CuPy, with the NVIDIA driver's from ``nvidia-smi`` where it runs."""
    api = None
    try:
        if torch.cuda.is_available():
            api = torch._C._cuda_getDriverVersion()  # noqa: SLF001 - e.g. 12040
    except Exception:  # noqa: BLE001
        api = None
    if api is None and gk.cuda_available():
        try:
            import cupy  # noqa: PLC0415

            api = cupy.cuda.runtime.driverGetVersion()
        except Exception:  # noqa: BLE001
            api = None
    if not api:
        return None
    text = f"CUDA driver API {api // 1000}.{api % 1000 // 10}"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
            if out.strip():
                text = f"NVIDIA {out.strip().splitlines()[0]}, {text}"
        except (OSError, subprocess.SubprocessError):
            pass
    return text


def run_stamp(ceilings: Ceilings, argv: list[str] | None = None, commit: str | None = None) -> dict:
    """What every result file is stamped with (the keys of ``STAMP_FIELDS``): commit (as
    given, else ``git_commit()`` now), UTC date, device, ceilings, versions, GPU driver
    and the command line (``argv``: the arguments of ``benchmarks.run``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return {
        "commit": commit or git_commit(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": ceilings.device,
        "ceilings": {"copy_gbps": ceilings.copy_gbps, "gemm_gflops": ceilings.gemm_gflops},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "triton": _module_version("triton"),
        "cupy": _module_version("cupy"),
        "gpu_driver": gpu_driver_version() or "no GPU",
        "command": shlex.join(["python", "-m", "benchmarks.run", *args]),
    }


def _write_atomic(path: Path, write) -> None:
    """``write(binary file)`` into a temp file next to ``path``, then ``os.replace`` it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _stamp_lines(stamp: dict) -> list[str]:
    out = []
    for key in STAMP_FIELDS:
        value = stamp[key]
        if key == "ceilings":
            value = f"copy {value['copy_gbps']:.1f} GB/s, GEMM {value['gemm_gflops']:.0f} GFLOP/s"
        out.append(f"{key}: {value}")
    return out


def _csv_text(rows: list[dict], stamp: dict) -> str:
    buf = io.StringIO()
    for line in _stamp_lines(stamp):
        buf.write(f"# {line}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_FIELDS)
    for row in rows:
        w.writerow(["" if row[k] is None else json.dumps(row[k], sort_keys=True, default=str)
                    if k == "extra" else row[k] for k in RESULT_FIELDS])
    return buf.getvalue()


def _md_text(rows: list[dict], stamp: dict) -> str:
    def cell(x) -> str:
        return str(x).replace("|", "\\|")

    lines = ["# Benchmark results", ""]
    lines += [f"- {line}" for line in _stamp_lines(stamp)]
    lines += ["", "ratio = torch time / our time (> 1: ours faster); rate and % of ceiling are ours.", "",
              "| entry | case | ours ms | torch ms | ratio | rate | % of ceiling | extra |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        rate_s = "" if row["rate"] is None else f"{row['rate']:.1f} {row['rate_unit']}"
        pct = "" if row["pct_of_ceiling"] is None else f"{row['pct_of_ceiling']:.0f}%"
        extra = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in row["extra"].items())
        lines.append(f"| {cell(row['entry'])} | {cell(row['case'])} | {1e3 * row['ours_s']:.3f} | "
                     f"{1e3 * row['theirs_s']:.3f} | {row['ratio']:.2f} | {rate_s} | {pct} | {cell(extra)} |")
    return "\n".join(lines) + "\n"


def _write_png(path: Path, rows: list[dict], stamp: dict) -> bool:
    """The ratio of every row as a horizontal bar from 1.0 (log axis), a line at 1.0, the
    stamp in the title, footer and PNG metadata; ``False`` without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    labels = [f"{r['entry']}: {r['case']}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.28 * max(len(rows), 1)))
    y = list(range(len(rows)))[::-1]
    # bars grow from 1.0 on a log axis: right when ours is faster, left when slower
    ax.barh(y, [v - 1.0 for v in ratios], left=1.0, color=["tab:green" if v >= 1 else "tab:red" for v in ratios])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    if ratios:
        lo, hi = min(min(ratios), 1.0), max(max(ratios), 1.0)
        ax.set_xlim(lo / 1.5, hi * 1.5)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlabel("ratio = torch time / our time (> 1: ours faster; log scale)")
    ax.set_title(f"{stamp['device']} - {stamp['commit'][:12]} - {stamp['date_utc']}", fontsize=9)
    fig.text(0.01, 0.005, f"torch {stamp['torch']}, numpy {stamp['numpy']}, python {stamp['python']}, "
             f"triton {stamp['triton']}, cupy {stamp['cupy']}; {stamp['command']}", fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    meta = {"Title": "gpukernels benchmark results", "Comment": json.dumps(stamp, sort_keys=True, default=str)}
    try:
        _write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120, metadata=meta))
    finally:
        plt.close(fig)
    return True


def write_results(results: list[Result], ceilings: Ceilings, out_root, argv: list[str] | None = None,
                  notes: dict | None = None, commit: str | None = None) -> Path:
    """Write ``results.{csv,json,md,png}`` under ``out_root/<device slug>/`` (each atomically,
    each stamped by ``run_stamp``; ``notes``, e.g. per-entry seconds and autotuning, go to
    the JSON's ``run``) and return that folder. Without matplotlib the PNG is
    skipped with a note on stderr."""
    out = Path(out_root) / ceilings.slug
    out.mkdir(parents=True, exist_ok=True)
    stamp = run_stamp(ceilings, argv, commit)
    rows = [row_dict(r, ceilings) for r in results]
    doc = {**stamp, **({"run": notes} if notes else {}), "rows": rows}
    _write_atomic(out / "results.json",
                  lambda f: f.write((json.dumps(doc, indent=2, default=str) + "\n").encode()))
    _write_atomic(out / "results.csv", lambda f: f.write(_csv_text(rows, stamp).encode()))
    _write_atomic(out / "results.md", lambda f: f.write(_md_text(rows, stamp).encode()))
    if not _write_png(out / "results.png", rows, stamp):
        print("matplotlib not installed: results.png skipped", file=sys.stderr)
    return out


def check_close(name: str, ours, theirs, atol: float, rtol: float) -> None:
    """Fail the benchmark entry loudly when ours disagrees with the reference."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise AssertionError(f"{name}: shape {ours.shape} != reference {theirs.shape}")
    bad = ~np.isclose(ours, theirs, atol=atol, rtol=rtol)
    if bad.any():
        idx = np.argwhere(bad)[:3].tolist()
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.size} elements differ "
            f"(max abs err {np.abs(ours - theirs).max():.3g}); first at {idx}"
        )


def time_both(entry: str, case: str, ours, theirs, repeat: int, **work) -> Result:
    """A Result row: the median times of ``ours()`` and ``theirs()``, at least
    ``repeat`` runs each, taken in turns (``timeit_pair``); ``work`` holds the other
    fields (``flops``, ``bytes``, ``extra``, ...)."""
    return Result(entry, case, *timeit_pair(ours, theirs, repeat=repeat), **work)


class CpuPair:
    """Ours (gpukernels on the current backend) and PyTorch's CPU op over the same host
    ``arrays``, each wrapped as leaves that require a gradient: the four calls a CPU entry
    checks and times. ``ours_op(*gk_tensors)`` and ``torch_op(*torch_tensors)`` compute
    one output; the backward is fed ``grad`` on both sides."""

    def __init__(self, ours_op, torch_op, arrays, grad):
        self.ours_op, self.torch_op = ours_op, torch_op
        self.ours_inputs = [gk.tensor(a, requires_grad=True) for a in arrays]
        self.torch_inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
        self.ours_grad, self.torch_grad = gk.tensor(grad), torch.tensor(grad)

    def ours_fwd(self):
        """Our forward without autograd."""
        with gk.no_grad():
            return self.ours_op(*self.ours_inputs)

    def torch_fwd(self):
        """PyTorch's forward without autograd."""
        with torch.no_grad():
            return self.torch_op(*self.torch_inputs)

    def ours_fb(self):
        """Our forward + backward (the inputs' gradients cleared first)."""
        for t in self.ours_inputs:
            t.grad = None
        self.ours_op(*self.ours_inputs).backward(self.ours_grad)

    def torch_fb(self):
        """PyTorch's forward + backward (the inputs' gradients cleared first)."""
        for t in self.torch_inputs:
            t.grad = None
        self.torch_op(*self.torch_inputs).backward(self.torch_grad)

    def check_forward(self, prefix: str, atol: float, rtol: float) -> None:
        """check_close of the two forwards (``f"{prefix} forward"``)."""
        check_close(f"{prefix} forward", self.ours_fwd().numpy(), self.torch_fwd().numpy(), atol, rtol)

    def check_grads(self, prefix: str, labels, atol: float, rtol: float, scaled: bool = False) -> None:
        """Run ``ours_fb`` and ``torch_fb`` once, then check_close the inputs' gradients, one
        per label (``f"{prefix} {label}"``); with ``scaled`` the atol is ``atol * max|torch's|``."""
        self.ours_fb()
        self.torch_fb()
        for label, a, t in zip(labels, self.ours_inputs, self.torch_inputs):
            ref = t.grad.numpy()
            tol = atol * float(np.abs(ref).max()) if scaled else atol
            check_close(f"{prefix} {label}", a.grad.numpy(), ref, tol, rtol)


# ----------------------------------------------------------------------------- GPU


def gpu_time(fn, repeat: int) -> float:
    """Median time of ``fn()`` on the GPU in seconds: ``triton.testing.do_bench`` (25 ms of
    warm-up, then ``max(repeat, 20)`` ms of timed runs)."""
    import triton.testing  # noqa: PLC0415 - GPU entries only

    return triton.testing.do_bench(fn, warmup=25, rep=max(repeat, 20), return_mode="median") / 1e3


def cuda_generator(seed: int = 0):
    """A ``torch.Generator`` on the GPU seeded ``seed``: the inputs of a GPU case."""
    return torch.Generator(device="cuda").manual_seed(seed)


def cuda_randn(gen, *shape, dtype=None, scale=None, shift=None):
    """``torch.randn(*shape)`` on the GPU drawn from ``gen``, then ``scale * x`` and
    ``shift + x`` (each only when given), cast to ``dtype`` last (when given)."""
    x = torch.randn(*shape, device="cuda", generator=gen)
    if scale is not None:
        x = scale * x
    if shift is not None:
        x = shift + x
    return x if dtype is None else x.to(dtype)


def torch_compile(fn, **kwargs):
    """``torch.compile(fn, **kwargs)``, or a ``RuntimeError`` saying why not when this run
    skips compiled baselines (``OPTIONS["torch_compile"]`` off): callers report it as
    unavailable, as when inductor cannot run."""
    if not OPTIONS["torch_compile"]:
        raise RuntimeError("not timed in this run (benchmarks.run --no-torch-compile / --headline)")
    import torch  # noqa: PLC0415

    return torch.compile(fn, **kwargs)


def mark_compile_unavailable(bench: str, label: str, exc: Exception, rows) -> None:
    """torch.compile could not serve as a second baseline for ``label``: say why on stderr
    (``bench`` names the entry) and mark the eager ``rows`` (Results) with it."""
    print(f"{bench}: torch.compile unavailable for {label}: {type(exc).__name__}: {str(exc)[:200]}",
          file=sys.stderr)
    for row in rows:
        row.extra["torch_compile"] = "unavailable"


def check_close_gpu(name: str, ours, theirs, rtol: float, atol: float | None = None) -> None:
    """check_close of our GPU result against the torch tensor ``theirs``, both compared in
    float32 on the host. ``ours`` is a torch tensor or a CuPy array (viewed with
    ``backend.torch_from_cupy``, bf16 from uint16 bits when ``theirs`` is bf16). ``atol``
    defaults to ``rtol * max|theirs|``."""
    from gpukernels.backend import torch_from_cupy  # noqa: PLC0415

    if not isinstance(ours, torch.Tensor):
        ours = torch_from_cupy(ours, bfloat16=theirs.dtype == torch.bfloat16)
    theirs = theirs.detach().float()
    if atol is None:
        atol = rtol * float(theirs.abs().max())
    check_close(name, ours.detach().float().cpu().numpy(), theirs.cpu().numpy(), atol, rtol)
