"""Autotuning on a budget: how a ``Tuned`` kernel picks its tile config on a GPU.

``GPUKERNELS_AUTOTUNE`` sets how much a launch with a new key may spend:

- ``full`` (the default): every config the kernel's ``prune`` keeps is compiled and timed
  with Triton's usual timing (``do_bench``: 25 ms of warm-up, 100 ms of repeats).
- ``fast``: at most ``FAST_CONFIGS`` (3) configs, the heuristic's first choices, timed
  with a short timer (``FAST_WARMUP_MS`` / ``FAST_REP_MS``). The budgeted GPU run
  (``scripts/gpu_session.sh``) uses it.
- ``off``: the heuristic's first choice; nothing compiled beyond it, nothing timed.

The heuristic (``rank``): configs whose grid fills at least one wave of the GPU's SMs,
in the order the family lists them (best first), then the rest, most programs first
(a small problem wants many small tiles, not a few idle SMs).

The configs to be timed are compiled in parallel first (Triton's ``AsyncCompileMode``
over a thread pool: ptxas and much of the MLIR pipeline run outside the GIL), so a cold
tuning pays about one compile per core instead of one per config.

Results are kept in memory per ``Tuned`` and on disk in
``$GPUKERNELS_CACHE_DIR/autotune.json`` (default ``~/.cache/gpukernels``), keyed by kernel,
key argument values, argument dtypes, the configs considered, GPU and triton version, so
a second run does not tune again; ``off`` choices and choices made while a CUDA graph is
being captured (nothing can be timed then) are not stored. ``stats()`` says how many
tunings, compiles and cache hits a run had and how long tuning took (the benchmarks
print it).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .. import backend, cuda_graph

MODES = ("full", "fast", "off")
FAST_CONFIGS = 3
FAST_WARMUP_MS, FAST_REP_MS = 2, 8
FULL_WARMUP_MS, FULL_REP_MS = 25, 100
#: SMs assumed when no GPU answers (the interpreter, tests): an H100 / H200.
DEFAULT_SMS = 132

_STATS = {"tunings": 0, "configs_timed": 0, "compiles": 0, "compile_s": 0.0, "bench_s": 0.0,
          "disk_hits": 0, "untimed": 0}
_lock = threading.Lock()


def mode() -> str:
    """The autotuning mode from ``GPUKERNELS_AUTOTUNE`` (``full`` when unset)."""
    value = os.environ.get("GPUKERNELS_AUTOTUNE", "full").strip().lower() or "full"
    if value not in MODES:
        raise ValueError(f"GPUKERNELS_AUTOTUNE must be one of {MODES}, got {value!r}")
    return value


def stats() -> dict:
    """Counters since the process started (or ``reset_stats``): ``tunings`` (keys timed),
    ``configs_timed``, ``compiles`` (configs compiled ahead of timing), ``compile_s`` and
    ``bench_s`` (wall seconds spent compiling / timing), ``disk_hits`` (keys found in the
    on-disk cache), ``untimed`` (keys decided by the heuristic alone)."""
    with _lock:
        return dict(_STATS)


def reset_stats() -> None:
    with _lock:
        for k in _STATS:
            _STATS[k] = type(_STATS[k])(0)


def _count(**inc) -> None:
    with _lock:
        for k, v in inc.items():
            _STATS[k] += v


# ----------------------------------------------------------------------------- the device


def _gpu() -> tuple[str, int]:
    """(name, SM count) of the current GPU; ("interpreter", DEFAULT_SMS) without one."""
    if backend.interpreting():
        return "interpreter", DEFAULT_SMS
    import cupy  # noqa: PLC0415 - only a GPU launch gets here

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return f"{name} sm_{dev.compute_capability}", int(dev.attributes["MultiProcessorCount"])


_device = {}


def device() -> tuple[str, int]:
    if "gpu" not in _device:
        _device["gpu"] = _gpu()
    return _device["gpu"]


def triton_version() -> str:
    import triton  # noqa: PLC0415

    return triton.__version__


# ----------------------------------------------------------------------------- the disk cache


def cache_path() -> str:
    root = os.environ.get("GPUKERNELS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "gpukernels")
    return os.path.join(root, "autotune.json")


class DiskCache:
    """A JSON file of ``{key: {"config": [...], "mode": ..., "ms": {...}}}``, read once, and
    rewritten whole (temp file + rename, merged with what another process wrote) on each
    new entry. An unreadable file is reported once and treated as empty."""

    def __init__(self):
        self.path, self.entries = None, {}

    def _load(self):
        path = cache_path()
        if self.path == path:
            return
        self.path, self.entries = path, {}
        self.entries = self._read(path)

    @staticmethod
    def _read(path) -> dict:
        try:
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            return data
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            print(f"gpukernels: ignoring the autotuning cache {path} ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return {}

    def get(self, key: str, accept: tuple) -> dict | None:
        self._load()
        entry = self.entries.get(key)
        return entry if isinstance(entry, dict) and entry.get("mode") in accept else None

    def put(self, key: str, entry: dict) -> None:
        self._load()
        self.entries[key] = entry
        folder = os.path.dirname(self.path)
        try:
            os.makedirs(folder, exist_ok=True)
            merged = {**self._read(self.path), **self.entries} if os.path.exists(self.path) else self.entries
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".autotune-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(merged, f, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
            self.entries = merged
        except OSError as exc:  # a read-only home must not stop a training run
            print(f"gpukernels: cannot write the autotuning cache {self.path}: {exc}", file=sys.stderr)


DISK = DiskCache()


# ----------------------------------------------------------------------------- choosing


def rank(configs: list, programs: list, sms: int) -> list:
    """``configs`` best guess first: those whose grid has >= ``sms`` programs (one full
    wave) in their listed order, then the others with the most programs first."""
    full = [c for c, p in zip(configs, programs) if p >= sms]
    rest = sorted((pc for pc in zip(programs, configs) if pc[0] < sms), key=lambda pc: -pc[0])
    return full + [c for _, c in rest]


def _programs(grid, named, meta) -> int:
    g = grid({**named, **meta}) if callable(grid) else grid
    g = tuple(g) + (1, 1)
    return int(g[0]) * int(g[1]) * int(g[2])


def _compile_all(tuned, grid, args, consts, configs) -> None:
    """Compile ``configs`` of ``tuned`` for this launch's argument types, in parallel
    where Triton offers it, without running them."""
    start = time.perf_counter()
    warm = [lambda cfg=cfg: tuned.kernel.warmup(*args, grid=grid, **consts, **tuned.meta(cfg)) for cfg in configs]
    try:
        from triton.runtime._async_compile import AsyncCompileMode  # noqa: PLC0415 - triton >= 3.4
    except ImportError:
        AsyncCompileMode = None
    if AsyncCompileMode is not None and len(configs) > 1:
        # a config that fails to compile fails again, with its error, when it is timed
        with ThreadPoolExecutor(min(len(configs), os.cpu_count() or 1)) as pool, \
                AsyncCompileMode(pool, ignore_errors=True):
            for w in warm:
                w()
    else:
        for w in warm:
            w()
    _count(compiles=len(configs), compile_s=time.perf_counter() - start)


def _unlaunchable() -> tuple:
    """The errors that make a config unusable for a launch (too much shared memory, a
    compile-time assertion, a ptxas failure): timed as infinitely slow, as Triton's own
    autotuner does."""
    found = []
    for module, name in (("triton.runtime.errors", "OutOfResources"), ("triton.runtime.errors", "PTXASError"),
                         ("triton.compiler.errors", "CompileTimeAssertionFailure")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _time_gpu(fn, warmup_ms, rep_ms, config=None) -> float:
    """Median milliseconds of ``fn`` (a launch of ``config``) by ``triton.testing.do_bench``."""
    from triton.testing import do_bench  # noqa: PLC0415

    try:
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    except _unlaunchable():
        return float("inf")


#: How configs are compiled and timed; tests replace them (the interpreter has no clock
#: worth trusting and nothing to compile).
COMPILE = _compile_all
TIME = _time_gpu


def choose(tuned, grid, args, consts) -> tuple:
    """The config ``tuned`` launches with for these arguments (see the module doc)."""
    values = tuple(consts[k] if k in consts else args[tuned.arg_index[k]] for k in tuned.key)
    dtypes = tuple(str(a.dtype) for a in args if hasattr(a, "dtype"))
    named = None
    candidates = tuned.configs
    if tuned.prune is not None:
        named = {**dict(zip(tuned.kernel.arg_names, args)), **consts}
        candidates = tuned.pruned(named, consts)
    mem_key = (values, dtypes, tuple(candidates))
    cfg = tuned.chosen.get(mem_key)
    if cfg is not None:
        return cfg
    m = mode()
    if len(candidates) == 1:
        cfg = candidates[0]
    else:
        named = named or {**dict(zip(tuned.kernel.arg_names, args)), **consts}
        gpu, sms = device()
        ranked = rank(candidates, [_programs(grid, named, tuned.meta(c)) for c in candidates], sms)
        if m == "off" or cuda_graph.capturing():
            _count(untimed=1)
            cfg = ranked[0]
            if m == "off":
                tuned.chosen[mem_key] = cfg
            return cfg  # a capture cannot time: the heuristic now, a real tuning after it
        disk_key = json.dumps([tuned.name, [repr(v) for v in values], dtypes, [list(c) for c in candidates],
                               gpu, triton_version()])
        entry = DISK.get(disk_key, ("fast", "full") if m == "fast" else ("full",))
        if entry is not None and tuple(entry["config"]) in candidates:
            _count(disk_hits=1)
            cfg = tuple(entry["config"])
        else:
            trial = ranked[:FAST_CONFIGS] if m == "fast" else ranked
            COMPILE(tuned, grid, args, consts, trial)
            warmup_ms, rep_ms = (FAST_WARMUP_MS, FAST_REP_MS) if m == "fast" else (FULL_WARMUP_MS, FULL_REP_MS)
            start = time.perf_counter()
            ms = {c: TIME(lambda c=c: tuned.kernel[grid](*args, **consts, **tuned.meta(c)), warmup_ms, rep_ms,
                          config=c) for c in trial}
            _count(tunings=1, configs_timed=len(trial), bench_s=time.perf_counter() - start)
            cfg = min(trial, key=lambda c: ms[c])
            if ms[cfg] == float("inf"):
                raise RuntimeError(f"autotuning {tuned.name}: none of the configs {trial} can be launched "
                                   f"for key {dict(zip(tuned.key, values))} on {gpu}")
            DISK.put(disk_key, {"config": list(cfg), "mode": m,
                                "ms": {" ".join(map(str, c)): round(t, 5) for c, t in ms.items()}})
    tuned.chosen[mem_key] = cfg
    return cfg


# ----------------------------------------------------------------------------- compile census

#: Tuned kernels' block-size names and config counts, by the jit function's name: what
#: the launch recorder needs to tell a compile variant from a tile config.
TUNED_KERNELS: dict[str, tuple] = {}


def register(tuned) -> None:
    TUNED_KERNELS[tuned.kernel_name] = (tuned.blocks, len(tuned.configs))


def record_launches(path: str) -> None:
    """Under the interpreter: record every distinct compile variant launched (kernel,
    constexpr values other than tile sizes, argument dtypes) and write them as JSON to
    ``path`` at exit, with the number of compiles each would cost on a GPU (``fast``
    autotuning: ``min(FAST_CONFIGS, configs)`` for a tuned kernel, 1 otherwise). The
    dry run of ``scripts/gpu_session.sh`` turns its counts into a compile budget."""
    import atexit  # noqa: PLC0415

    from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415

    seen = {}
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        name = getattr(self.fn, "__name__", str(self.fn))
        blocks, n_configs = TUNED_KERNELS.get(name, ((), 1))
        consts = tuple(sorted((k, repr(v)) for k, v in kwargs.items()
                              if k not in blocks and k not in ("num_warps", "num_stages")))
        dtypes = tuple(str(a.dtype).replace("torch.", "") for a in args if hasattr(a, "dtype"))
        seen[(name, consts, dtypes)] = min(FAST_CONFIGS, n_configs)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run

    def write():
        rows = [{"kernel": k, "consts": dict(c), "dtypes": list(d), "compiles": n} for (k, c, d), n in seen.items()]
        with open(path, "w") as f:
            json.dump({"variants": len(rows), "compiles": sum(r["compiles"] for r in rows), "rows": rows}, f, indent=1)

    atexit.register(write)
