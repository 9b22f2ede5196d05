"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--only conv,train]``.

First the machine's ceilings (copy bandwidth, GEMM GFLOP/s), then every entry: each
checks its result against PyTorch before timing, then prints ours vs PyTorch on the
same machine in the same run, with the ratio (> 1: ours faster) and the rate against
the ceiling. The results are then written, stamped with the commit, date, device,
ceilings, versions and command line, as ``results.{csv,json,md,png}`` under
``benchmarks/results/<device slug>/`` (``--out DIR`` replaces ``benchmarks/results``).
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

from . import (bench_activation, bench_batchnorm, bench_conv, bench_cross_entropy, bench_linear,
               bench_optim, bench_pool, bench_train)
from .common import measure_ceilings, print_table, write_results

ENTRIES = {"conv": bench_conv, "linear": bench_linear, "activation": bench_activation,
           "pool": bench_pool, "batchnorm": bench_batchnorm, "cross_entropy": bench_cross_entropy,
           "optim": bench_optim, "train": bench_train}
RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases, few repeats (a smoke run)")
    parser.add_argument("--only", default=",".join(ENTRIES),
                        help=f"comma-separated entries among {', '.join(ENTRIES)}")
    parser.add_argument("--repeat", type=int, default=None, help="timed repeats per measurement")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda: our Triton kernels vs cuDNN; cpu: the NumPy backend vs torch CPU")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch CPU threads (default: all cores, as our NumPy BLAS uses)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="root folder of the result files (default: benchmarks/results); "
                             "they go to DIR/<device slug>/")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENTRIES]
    if unknown:
        parser.error(f"unknown entries {unknown}; choose among {list(ENTRIES)}")

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    repeat = args.repeat or (3 if args.quick else 10)
    start = time.perf_counter()
    on_gpu = args.device == "cuda" or (args.device == "auto" and gk.cuda_available())
    gk.set_backend("cuda" if on_gpu else "numpy")
    ceilings = measure_ceilings(args.quick, gpu=on_gpu)
    results, failed = [], []
    for name in names:
        if on_gpu and not hasattr(ENTRIES[name], "run_gpu"):
            print(f"skipping {name}: this entry has no GPU version yet", file=sys.stderr)
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            results += ENTRIES[name].run(quick=args.quick, repeat=repeat)
        except Exception:  # noqa: BLE001 - one broken entry must not lose the others' results
            traceback.print_exc()
            print(f"entry {name} FAILED (traceback above); going on with the others", file=sys.stderr)
            failed.append(name)
    print_table(results, ceilings)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{time.perf_counter() - start:.1f} s in all")
    out = write_results(results, ceilings, args.out or RESULTS_ROOT,
                        sys.argv[1:] if argv is None else argv)
    print(f"results written to {out}")
    if failed:
        print(f"failed entries: {', '.join(failed)} (no rows; see the tracebacks)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
