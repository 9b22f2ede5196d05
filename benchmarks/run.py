"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--only conv,train]``.

First the machine's ceilings (copy bandwidth, GEMM GFLOP/s), then every entry: each
checks its result against PyTorch before timing, then prints ours vs PyTorch on the
same machine in the same run, with the ratio (> 1: ours faster) and the rate against
the ceiling. The results are then written, stamped with the commit, date, device,
ceilings, versions and command line, as ``results.{csv,json,md,png}`` under
``benchmarks/results/<device slug>/`` (``--out DIR`` replaces ``benchmarks/results``),
rewritten after every entry, so a run cut short (``--budget``, a SIGINT from a time
limit) keeps what it measured; on a GPU each entry also says how long autotuning took.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch

import gpukernels as gk

from . import (bench_activation, bench_batchnorm, bench_conv, bench_cross_entropy, bench_data_parallel,
               bench_linear, bench_optim, bench_pool, bench_train)
from .common import OPTIONS, git_commit, measure_ceilings, print_table, write_results

ENTRIES = {"conv": bench_conv, "linear": bench_linear, "activation": bench_activation,
           "pool": bench_pool, "batchnorm": bench_batchnorm, "cross_entropy": bench_cross_entropy,
           "optim": bench_optim, "train": bench_train,
           "data_parallel": bench_data_parallel}
RESULTS_ROOT = Path(__file__).resolve().parent / "results"


#: The budgeted GPU run's first numbers (``--headline``), in this order.
HEADLINE = ("train", "conv", "cross_entropy", "optim")


def _tuning_note(before: dict) -> dict:
    """Autotuning done since ``before`` (``autotune.stats()``), or {} off the Triton backends."""
    if gk.get_backend() != "cuda":
        return {}
    from gpukernels.triton import autotune  # noqa: PLC0415

    now = autotune.stats()
    return {k: round(now[k] - before.get(k, 0), 3) for k in now}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases, few repeats (a smoke run)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated entries among {', '.join(ENTRIES)} (in the order given)")
    parser.add_argument("--headline", action="store_true",
                        help=f"the budgeted GPU run's first numbers: {', '.join(HEADLINE)} at quick sizes, "
                             "the training step for ResNet and fast CIFAR only, no torch.compile")
    parser.add_argument("--tiny", action="store_true",
                        help="the smallest cases (a dry run of the plan, not a measurement)")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="skip the torch.compile baselines (each costs a compile of tens of seconds)")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="start no entry after this many seconds; the rest are skipped, with a line each")
    parser.add_argument("--repeat", type=int, default=None, help="timed repeats per measurement")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda: our Triton kernels vs cuDNN; cpu: the NumPy backend vs torch CPU")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch CPU threads (default: all cores, as our NumPy BLAS uses)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="root folder of the result files (default: benchmarks/results); "
                             "they go to DIR/<device slug>/")
    args = parser.parse_args(argv)
    # The commit is read once, now: the result files are rewritten after every entry,
    # and where they are tracked (benchmarks/results/cpu-*) the later stamps would call
    # the run's own output a dirty tree.
    commit = git_commit()
    default = HEADLINE if args.headline else tuple(ENTRIES)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(default)
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        parser.error(f"unknown entries {unknown}; choose among {list(ENTRIES)}")
    quick = args.quick or args.headline or args.tiny
    OPTIONS.update(tiny=args.tiny, headline=args.headline,
                   torch_compile=not (args.no_torch_compile or args.headline or args.tiny))

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    repeat = args.repeat or (1 if args.tiny else 3 if quick else 10)
    start = time.perf_counter()
    on_gpu = args.device == "cuda" or (args.device == "auto" and gk.cuda_available())
    gk.set_backend("cuda" if on_gpu else "numpy")
    ceilings = measure_ceilings(quick, gpu=on_gpu)
    argv_used = sys.argv[1:] if argv is None else argv
    results, failed, notes = [], [], {"entries": {}}
    out = None
    for i, name in enumerate(names):
        if on_gpu and not hasattr(ENTRIES[name], "run_gpu"):
            print(f"skipping {name}: this entry has no GPU version yet", file=sys.stderr)
            continue
        elapsed = time.perf_counter() - start
        if args.budget is not None and elapsed >= args.budget:
            for late in names[i:]:
                print(f"skipped {late}: the budget of {args.budget:.0f} s is spent ({elapsed:.0f} s)",
                      file=sys.stderr, flush=True)
            notes["skipped"] = names[i:]
            break
        print(f"running {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        tuning = _tuning_note({}) if on_gpu else {}
        try:
            rows = ENTRIES[name].run(quick=quick, repeat=repeat)
        except KeyboardInterrupt:  # a time limit (SIGINT): keep what the finished entries measured
            print(f"interrupted during {name}; writing the entries finished before it", file=sys.stderr)
            notes["interrupted"] = name
            write_results(results, ceilings, args.out or RESULTS_ROOT, argv_used, notes, commit)
            return 130
        except Exception:  # noqa: BLE001 - one broken entry must not lose the others' results
            traceback.print_exc()
            print(f"entry {name} FAILED (traceback above); going on with the others", file=sys.stderr)
            failed.append(name)
            rows = []
        note = {"seconds": round(time.perf_counter() - t0, 2), "rows": len(rows), "failed": name in failed}
        if on_gpu:
            note["autotune"] = _tuning_note(tuning)
            print(f"{name}: {note['seconds']:.1f} s, of which autotuning compiled "
                  f"{note['autotune']['compiles']:.0f} configs in {note['autotune']['compile_s']:.1f} s and timed "
                  f"{note['autotune']['configs_timed']:.0f} in {note['autotune']['bench_s']:.1f} s "
                  f"({note['autotune']['disk_hits']:.0f} keys from the disk cache)", file=sys.stderr, flush=True)
        notes["entries"][name] = note
        results += rows
        out = write_results(results, ceilings, args.out or RESULTS_ROOT, argv_used, notes, commit)  # after each entry
    print_table(results, ceilings)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{time.perf_counter() - start:.1f} s in all")
    out = write_results(results, ceilings, args.out or RESULTS_ROOT, argv_used, notes, commit)
    print(f"results written to {out}")
    if failed:
        print(f"failed entries: {', '.join(failed)} (no rows; see the tracebacks)", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
