"""The budgeted GPU run: ``bash scripts/gpu_session.sh [--dry-run]`` (this is its driver).

A lent GPU machine gives one command of at most 10 minutes, no package registry, and
returns at most 8 files from ``$OUT``. So the run is a list of steps in order of value,
``GPU_BUDGET_S`` seconds in all (default 480), each step given what is left (up to its
own cap), shrunk when little is left, or skipped with a line saying so; each step's
files land in ``$OUT`` the moment it ends, so a step cut short keeps everything before
it. A step over its time gets SIGINT (pytest then prints its summary and the names of
the failures; ``benchmarks.run`` writes the entries it finished), then SIGTERM, SIGKILL.

Steps (files in ``$OUT``):

1. ``env``: GPU, driver, clocks, Python / NumPy / triton / torch / CuPy versions, the
   commit (``GPUKERNELS_COMMIT``: the copy on the GPU machine may have no ``.git``) ->
   ``env.json``; on a GPU also ``pip install --no-deps -e .`` (logged in the archive).
2. ``doctor``: ``python -m gpukernels.doctor`` on the GPU (``--interpret`` in a dry run)
   -> ``doctor.log``.
3. ``headline``: ``python -m benchmarks.run --headline``: ResNet-20 / fast CIFAR training
   steps (fp32/tf32, bf16, bf16 + CUDA graph) vs PyTorch eager (channels-last AMP),
   conv fwd+bwd vs cuDNN, softmax cross-entropy, Adam on many tensors; correctness
   checked first -> ``headline.json``, ``headline.md``.
4. ``smoke``: ``pytest -m "gpu and not slow"``: interop, one autotuned match per kernel
   family, CUDA-graph replay, the kernel census -> ``smoke.log``.
5. ``rest``: the ``slow`` gpu tests (every tile config forced, > 2**31 elements), then
   the remaining benchmark entries (with torch.compile baselines), as far as the budget
   goes -> ``rest.log``.

``session.log`` is this driver's own log (plan, each step's start, end, exit status and
seconds, skipped steps); ``results.tar.gz`` holds everything else (all benchmark result
folders, per-step logs, the autotuning cache, the dry run's compile census), rewritten
after every step. Eight files at most.

Autotuning is ``GPUKERNELS_AUTOTUNE=fast`` unless set, with one on-disk cache for the
whole run (``GPUKERNELS_CACHE_DIR``), so the smoke tests reuse the headline's tunings.

``--dry-run`` runs the same plan on a CPU machine: the doctor on Triton's interpreter,
the benchmarks with ``--tiny --device cpu``, the pytest selections (which skip without a
GPU), and it counts the compile variants the doctor launches, to print how many kernel
compiles the real run's smoke selection will need. ``make test`` runs it (a test).

Test knob: ``GPU_SESSION_OVERRUN=<step>`` replaces that step's command by one that never
ends, to prove that an overrun leaves the earlier steps' files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
#: SIGINT first; after this many seconds SIGTERM, after as many again SIGKILL.
GRACE_S = 15
#: Seconds kept back at the end for packing the archive.
RESERVE_S = 5
#: Cold-compile seconds of one kernel variant for sm_90 measured by the ahead-of-time
#: compile (triton 3.6 / 3.9, 2 cores): the range the compile estimate is priced with.
COMPILE_S = (0.3, 1.9)
MAX_FILES = 8

#: The remaining benchmark entries (the headline's four first, in their headline sizes).
REST_BENCH = "linear,activation,pool,batchnorm,train,conv,cross_entropy,optim"


class Session:
    def __init__(self, out: Path, budget: float, dry: bool):
        self.out, self.budget, self.dry = out, budget, dry
        self.start = time.monotonic()
        self.stage = Path(tempfile.mkdtemp(prefix="gk-session-"))
        self.logs = self.stage / "logs"
        self.logs.mkdir()
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.out / "session.log", "a", buffering=1)
        self.failed, self.skipped = [], []

    # ---- time
    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def log(self, line: str) -> None:
        stamp = f"[{time.monotonic() - self.start:6.1f}s]"
        print(f"{stamp} {line}", flush=True)
        self.log_file.write(f"{stamp} {line}\n")

    def slot(self, name: str, cap: float, least: float) -> float | None:
        """Seconds step ``name`` may run: what is left (less the grace and the reserve), at
        most ``cap``; None, with a line, when that is under ``least``."""
        avail = self.left() - GRACE_S - RESERVE_S
        if avail < least:
            self.log(f"SKIPPED {name}: {max(self.left(), 0):.0f} s of the {self.budget:.0f} s budget left, "
                     f"it needs >= {least:.0f} s")
            self.skipped.append(name)
            return None
        return min(cap, avail)

    # ---- running
    def run(self, name: str, cmd: list[str], limit: float, log_path: Path, env: dict | None = None) -> int:
        """``cmd`` with output to ``log_path`` (appended), at most ``limit`` seconds."""
        if os.environ.get("GPU_SESSION_OVERRUN") == name:
            cmd = [PY, "-c", "import time\nwhile True: time.sleep(1)"]
        self.log(f"START {name} (limit {limit:.0f} s): {' '.join(cmd)}")
        t0 = time.monotonic()
        with open(log_path, "ab") as f:
            f.write(f"$ {' '.join(cmd)}\n".encode())
            f.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, **(env or {})})
            rc = self._wait(proc, limit, name)
        seconds = time.monotonic() - t0
        verdict = "ok" if rc == 0 else "TIMED OUT" if rc == "timeout" else f"FAILED (exit {rc})"
        self.log(f"END {name}: {verdict} in {seconds:.1f} s")
        if rc != 0:
            self.failed.append(name)
        return 124 if rc == "timeout" else rc

    def _wait(self, proc, limit, name):
        try:
            return proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            pass
        self.log(f"{name}: over its {limit:.0f} s: SIGINT (pytest prints its summary, benchmarks write what they have)")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=GRACE_S)
                break
            except subprocess.TimeoutExpired:
                continue
        return "timeout"

    # ---- files
    def put(self, src: Path, name: str) -> None:
        if src.exists():
            shutil.copyfile(src, self.out / name)

    def pack(self) -> None:
        """Rewrite results.tar.gz from the staging folder (temp file, then rename)."""
        tmp = self.out / ".results.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.stage, arcname="gpu-session")
        os.replace(tmp, self.out / "results.tar.gz")
        files = [p for p in self.out.iterdir() if not p.name.startswith(".")]
        if len(files) > MAX_FILES:
            self.log(f"WARNING: {len(files)} files in {self.out}, more than the {MAX_FILES} a GPU machine returns")


# ----------------------------------------------------------------------------- steps


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "triton", "torch", "cupy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - a missing or broken library is a fact to report
            out[mod] = f"not importable ({type(exc).__name__})"
    return out


def step_env(s: Session) -> None:
    s.log("START env")
    info = {"commit": os.environ.get("GPUKERNELS_COMMIT", "unknown"), "dry_run": s.dry,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": s.budget,
            "autotune": os.environ.get("GPUKERNELS_AUTOTUNE"), **_versions()}
    query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,compute_cap"
    try:
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["gpu"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["gpu"] = f"no nvidia-smi ({type(exc).__name__})"
    try:
        import cupy  # noqa: PLC0415

        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as exc:  # noqa: BLE001
        info["cuda_runtime"] = f"unavailable ({type(exc).__name__})"
    (s.out / "env.json").write_text(json.dumps(info, indent=1) + "\n")
    s.log(f"END env: {info['gpu']}; commit {info['commit']}; "
          + ", ".join(f"{k} {info[k]}" for k in ("python", "numpy", "triton", "torch", "cupy")))
    if not s.dry:  # the machine has the dependencies; the checkout is on PYTHONPATH anyway
        limit = s.slot("install", 90, 10)
        if limit:
            s.run("install", [PY, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."], limit,
                  s.logs / "install.log")
    s.pack()


def step_doctor(s: Session) -> None:
    limit = s.slot("doctor", 90, 20)
    if limit is None:
        return
    cmd = [PY, "-m", "gpukernels.doctor", "--json", str(s.stage / "doctor.json")]
    env = {}
    if s.dry:
        cmd.append("--interpret")
        env["GPUKERNELS_RECORD_LAUNCHES"] = str(s.stage / "compile-census.json")
    s.run("doctor", cmd, limit, s.stage / "doctor.log", env)
    s.put(s.stage / "doctor.log", "doctor.log")
    s.pack()


def _bench(s: Session, name: str, args: list[str], limit: float, log: Path) -> Path:
    root = s.stage / f"bench-{name}"
    if s.dry:
        args = [*args, "--tiny", "--device", "cpu"]
    # the entry loop stops starting entries a little before the step's limit
    s.run(name, [PY, "-m", "benchmarks.run", *args, "--out", str(root), "--budget", f"{max(limit - 30, 5):.0f}"],
          limit, log)
    found = sorted(root.glob("*/results.json"))
    return found[0].parent if found else None


def step_headline(s: Session) -> None:
    limit = s.slot("headline", 240, 45)
    if limit is None:
        return
    repeat = "5" if limit < 150 else "10"  # shrink: fewer repeats when time is short
    folder = _bench(s, "headline", ["--headline", "--repeat", repeat], limit, s.stage / "headline.log")
    if folder is not None:
        s.put(folder / "results.json", "headline.json")
        s.put(folder / "results.md", "headline.md")
    else:
        s.log("headline: no results were written (see headline.log in results.tar.gz)")
    s.pack()


def _pytest(s: Session, name: str, marks: str, limit: float, log: Path) -> None:
    s.run(name, [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marks, "-rfE", "--durations=15",
                 "tests"], limit, log, {"GPUKERNELS_TEST_GPU": "1"})


def _compile_estimate(s: Session) -> None:
    """Dry run: price the real smoke selection in kernel compiles from the doctor's census
    (every family's forward and backward once, float32) and the smoke tests' three dtypes."""
    census = s.stage / "compile-census.json"
    if not census.exists():
        s.log("compile estimate: no census (the doctor step did not run to its end)")
        return
    data = json.loads(census.read_text())
    collected = subprocess.run([PY, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                "-m", "gpu and not slow", "tests"], cwd=ROOT, capture_output=True, text=True)
    tests = sum(1 for line in collected.stdout.splitlines() if "::" in line)
    compiles = 3 * data["compiles"]  # float32, float16 / bfloat16: the smoke tests' dtypes
    low, high = (compiles * t for t in COMPILE_S)
    s.log(f"compile estimate for the real smoke selection ({tests} tests): the doctor launched "
          f"{data['variants']} compile variants = {data['compiles']} compiles under GPUKERNELS_AUTOTUNE=fast "
          f"(<= 3 configs each); x 3 dtypes = ~{compiles} cold compiles: {low:.0f}-{high:.0f} s one at a time, "
          f"{low / 3:.0f}-{high / 3:.0f} s with each tuning's 3 configs compiled in parallel, less what the "
          f"headline step already compiled (same kernels, same dtypes)")

def step_smoke(s: Session) -> None:
    if s.dry:
        _compile_estimate(s)
    limit = s.slot("smoke", 180, 30)
    if limit is None:
        return
    _pytest(s, "smoke", "gpu and not slow", limit, s.stage / "smoke.log")
    s.put(s.stage / "smoke.log", "smoke.log")
    s.pack()


def step_rest(s: Session) -> None:
    log = s.stage / "rest.log"
    limit = s.slot("rest-tests", 300, 30)
    if limit is not None:
        _pytest(s, "rest-tests", "gpu and slow", limit, log)
        s.put(log, "rest.log")
        s.pack()
    limit = s.slot("rest-bench", 600, 30)
    if limit is not None:
        _bench(s, "rest-bench", ["--only", REST_BENCH, "--quick"], limit, log)
        s.put(log, "rest.log")
        s.pack()


STEPS = (step_env, step_doctor, step_headline, step_smoke, step_rest)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same plan on a CPU machine: interpreter, tiny sizes, same files")
    parser.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gk-gpu",
                        help="where the files go (default: $OUT, the device tool's folder, or /tmp/gk-gpu)")
    args = parser.parse_args(argv)
    budget = float(os.environ.get("GPU_BUDGET_S", "480"))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    os.environ.setdefault("GPUKERNELS_AUTOTUNE", "fast")
    # the checkout on the path: tests, models and benchmarks import even if the install fails
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH")
                                            else "")
    if "GPUKERNELS_COMMIT" not in os.environ:
        try:
            os.environ["GPUKERNELS_COMMIT"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                                             capture_output=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            os.environ["GPUKERNELS_COMMIT"] = "unknown"
    s = Session(Path(args.out), budget, args.dry_run)
    os.environ.setdefault("GPUKERNELS_CACHE_DIR", str(s.stage / "autotune-cache"))
    if args.dry_run:
        os.environ.pop("GPUKERNELS_BACKEND", None)
    s.log(f"plan: {', '.join(f.__name__[5:] for f in STEPS)}; budget {budget:.0f} s; out {s.out}; "
          f"{'DRY RUN (CPU, interpreter, tiny sizes)' if args.dry_run else 'GPU run'}; "
          f"GPUKERNELS_AUTOTUNE={os.environ['GPUKERNELS_AUTOTUNE']}")
    try:
        for step in STEPS:
            step(s)
    finally:
        s.pack()
        s.log(f"done in {time.monotonic() - s.start:.0f} s of {budget:.0f}; failed: {', '.join(s.failed) or 'none'}; "
              f"skipped: {', '.join(s.skipped) or 'none'}; files: "
              + ", ".join(sorted(p.name for p in s.out.iterdir() if not p.name.startswith("."))))
        s.log_file.close()
        shutil.rmtree(s.stage, ignore_errors=True)
    return 1 if s.failed else 0  # a skipped step is the budget's doing, said in session.log


if __name__ == "__main__":
    sys.exit(main())
