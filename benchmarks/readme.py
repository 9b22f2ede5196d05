"""Regenerate the README's results section: ``python -m benchmarks.readme [--check]``.

Every folder under ``benchmarks/results/`` with a ``results.json`` is rendered, the GPU
ones first, then the CPU ones; a folder is a GPU or a CPU run by its stamp
(``stamp_is_gpu``), whatever it is called. A GPU folder gets a heading with the device,
date and short commit, the driver and library versions, the ceilings, then the table of
every entry; without GPU results the section says the GPU figures are not measured on a
GPU yet and how to produce them. A CPU folder (the NumPy backend vs PyTorch CPU, e.g.
``cpu-x2-numpy``: the development machine's runs of ``python -m benchmarks.run --device
cpu``) gets a ``### CPU: ...`` heading with the backend and the thread count, a sentence
saying its figures depend on the machine, then the same stamp lines and table; without
one the section says no CPU results are committed. The section replaces the text
between the ``<!-- results:begin -->`` and ``<!-- results:end -->`` lines of README.md.
``--check`` writes nothing and exits 1, with one line on stderr, when README.md is out
of date (for CI).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import textwrap
from pathlib import Path

from .common import STAMP_FIELDS, _md_text, _stamp_lines

ROOT = Path(__file__).resolve().parents[1]
RESULTS_ROOT = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
GENERATED_NOTE = ("<!-- generated from benchmarks/results/*/results.json by `make readme-results` "
                  "(python -m benchmarks.readme): do not edit by hand -->")
NOT_MEASURED = "not measured on a GPU yet"
REPRODUCE = ("To reproduce: `make bench` on a machine with a CUDA GPU (or the image of "
             "`docker/README.md`: `python -m benchmarks.run` inside it, `benchmarks/results` "
             "mounted), then `make readme-results` (`python -m benchmarks.readme`) to regenerate "
             "this section, and commit `benchmarks/results/<device>/` with README.md.")
NO_CPU = ("CPU results: none committed (`python -m benchmarks.run --device cpu`, then "
          "`make readme-results`).")
CPU_REPRODUCE = ("To reproduce the CPU part: `python -m benchmarks.run --device cpu` (writes "
                 "`benchmarks/results/<cpu device>/`), then `make readme-results`, and commit "
                 "the folder with README.md.")


def _para(text: str) -> str:
    """A prose paragraph wrapped at the README's width (90 columns), never inside a
    `code span` (its spaces are held as NUL while wrapping)."""
    held = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", "\0"), text)
    return textwrap.fill(held, width=90, break_long_words=False,
                         break_on_hyphens=False).replace("\0", " ")


class ResultsError(Exception):
    """A results.json that cannot be rendered, or a README without the marker lines."""


def stamp_is_gpu(doc: dict) -> bool:
    """Whether a results.json stamp was measured on a GPU: its ``kind`` when it has one
    (``"gpu"``/``"cpu"``), else the backend in ``device`` (``"... (cuda backend)"`` is a
    GPU; ``"CPU x2 (NumPy backend)"`` is not), else a device that is not a ``CPU ...`` one
    on a machine with a GPU driver. A CPU run on a GPU machine (``--device cpu``) stamps
    the driver but the NumPy backend, so it is a CPU result."""
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.strip():
        return kind.strip().lower() == "gpu"
    device = str(doc.get("device", ""))
    m = re.search(r"\((\S+) backend\)\s*$", device)
    if m:
        return m.group(1).lower() == "cuda"
    driver = str(doc.get("gpu_driver", "no GPU"))
    return bool(device) and not device.lower().startswith("cpu") and driver != "no GPU"


def device_name(device: str) -> str:
    """``NVIDIA H100 80GB HBM3 (cuda backend)`` -> ``NVIDIA H100 80GB HBM3``."""
    return re.sub(r"\s*\(cuda backend\)\s*$", "", str(device)) or str(device)


def short_commit(commit: str) -> str:
    """``0123456789abcdef...-dirty`` -> ``0123456-dirty``; ``unknown`` stays."""
    commit = str(commit)
    head, dirty = (commit[: -len("-dirty")], "-dirty") if commit.endswith("-dirty") else (commit, "")
    if re.fullmatch(r"[0-9a-f]{8,40}", head):
        head = head[:7]
    return head + dirty


def _nice_date(date_utc: str) -> str:
    """``2026-01-02T03:04:05Z`` -> ``2026-01-02 03:04:05 UTC``."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)Z", str(date_utc))
    return f"{m.group(1)} {m.group(2)} UTC" if m else str(date_utc)


def cpu_backend(device: str) -> str:
    """The backend a CPU device's stamp names: ``CPU x2 (NumPy backend)`` -> ``NumPy``
    (``NumPy`` when the device has no ``(... backend)`` note)."""
    m = re.search(r"\((\S+) backend\)\s*$", str(device))
    name = m.group(1) if m else "numpy"
    return "NumPy" if name.lower() == "numpy" else name


def cpu_device_name(device: str) -> str:
    """``CPU x2 (NumPy backend)`` -> ``CPU x2`` (the backend goes in the heading's note)."""
    return re.sub(r"\s*\(\S+ backend\)\s*$", "", str(device)) or str(device)


def cpu_cores(device: str) -> int | None:
    """The core count of a ``CPU xN ...`` device (``measure_ceilings`` names it after
    ``os.cpu_count()``), else ``None``."""
    m = re.match(r"\s*CPU x(\d+)\b", str(device), re.IGNORECASE)
    return int(m.group(1)) if m else None


def cpu_threads(doc: dict) -> int | None:
    """PyTorch's CPU threads in a run: ``--threads N`` of the stamped command when given,
    else every core (``benchmarks.run``'s default, as our NumPy BLAS uses), else ``None``."""
    try:
        args = shlex.split(str(doc.get("command", "")))
    except ValueError:
        args = []
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else (
            args[i + 1] if arg == "--threads" and i + 1 < len(args) else None)
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value)
    return cpu_cores(doc.get("device", ""))


def load_results(results_root: Path, gpu: bool = True) -> list[tuple[Path, dict]]:
    """``(folder, results.json document)`` of every GPU (``gpu``) or CPU (not ``gpu``)
    result folder under ``results_root``, by its stamp, the latest date first (then by
    device name)."""
    found = []
    root = Path(results_root)
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        path = folder / "results.json"
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{path}: not readable JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise ResultsError(f"{path}: not a results.json object")
        if stamp_is_gpu(doc) != gpu:
            continue
        missing = [k for k in ("device", "date_utc", "commit", "ceilings", "rows") if k not in doc]
        if missing:
            raise ResultsError(f"{path}: no {', '.join(missing)} (not written by benchmarks.run?)")
        found.append((folder, doc))
    found.sort(key=lambda fd: (fd[1]["date_utc"], fd[1]["device"]), reverse=True)
    return found


def load_gpu_results(results_root: Path) -> list[tuple[Path, dict]]:
    """``load_results`` of the GPU folders (CPU runs are left out by their stamp)."""
    return load_results(results_root, gpu=True)


def load_cpu_results(results_root: Path) -> list[tuple[Path, dict]]:
    """``load_results`` of the CPU folders (the NumPy backend vs PyTorch CPU)."""
    return load_results(results_root, gpu=False)


def _rel(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def render_device(folder: Path, doc: dict, readme_dir: Path, heading: str | None = None,
                  intro: str | None = None) -> list[str]:
    """One device's part of the section: heading (``heading``, default the device's name),
    ``intro`` (a paragraph, if any), stamp list, table (``_md_text``'s)."""
    stamp = {k: doc.get(k, "unknown") for k in STAMP_FIELDS}
    heading = device_name(doc["device"]) if heading is None else heading
    lines = [f"### {heading}: {_nice_date(doc['date_utc'])}, commit "
             f"`{short_commit(doc['commit'])}`", ""]
    if intro:
        lines += [_para(intro), ""]
    shown = {"commit", "ceilings", "gpu_driver", "python", "numpy", "torch", "triton", "cupy", "command"}
    lines += [f"- {line}" for key, line in zip(STAMP_FIELDS, _stamp_lines(stamp)) if key in shown]
    rel = _rel(folder, readme_dir)
    files = [f"[{name}]({rel}/{name})" for name in ("results.md", "results.csv", "results.json")
             if (folder / name).is_file()]
    if files:
        lines.append(f"- files: {', '.join(files)}")
    lines.append("")
    # the note and the table exactly as results.md has them (no second formatter to drift)
    md = _md_text(doc["rows"], stamp).splitlines()
    start = next((i for i, line in enumerate(md) if line.startswith("ratio =")), None)
    if start is None:
        start = next(i for i, line in enumerate(md) if line.startswith("| entry"))
    lines += md[start:]
    if (folder / "results.png").is_file():
        lines += ["", f"![ratios on {device_name(doc['device'])}]({rel}/results.png)"]
    lines.append("")
    return lines


def render_cpu_device(folder: Path, doc: dict, readme_dir: Path) -> list[str]:
    """One CPU folder's part: ``### CPU: <device> (<backend> backend vs PyTorch CPU, N
    threads)``, the sentence on the machine, then ``render_device``'s stamp list and table."""
    threads = cpu_threads(doc)
    note = f"{cpu_backend(doc['device'])} backend vs PyTorch CPU"
    if threads:
        note += f", {threads} thread{'s' if threads != 1 else ''}"
    cores = cpu_cores(doc["device"])
    machine = f" ({cores} core{'s' if cores != 1 else ''})" if cores else ""
    intro = (f"CPU figures depend on the machine: these are the development machine's{machine}, "
             "ours and PyTorch's timed in turns in the same run on the same cores.")
    return render_device(folder, doc, readme_dir,
                         heading=f"CPU: {cpu_device_name(doc['device'])} ({note})", intro=intro)


def render_section(results_root: Path = RESULTS_ROOT, readme_dir: Path = ROOT) -> str:
    """The text between the marker lines (without them), ending with a newline: the GPU
    part, then the CPU part."""
    found = load_gpu_results(results_root)
    cpus = load_cpu_results(results_root)
    lines = [GENERATED_NOTE, ""]
    if not found:
        lines += [
            _para(f"GPU results: {NOT_MEASURED}. The Triton kernels are checked on Triton's "
                  "interpreter and compiled for sm_80/sm_90 by `make test`, but no GPU results "
                  "are committed under `benchmarks/results/`."),
            "",
            _para(REPRODUCE),
        ]
    else:
        names = ", ".join(device_name(doc["device"]) for _, doc in found)
        lines += [_para(f"GPU results ({names}): our Triton kernels vs PyTorch CUDA/cuDNN on "
                        "the same GPU in the same run, from the committed "
                        "`benchmarks/results/<device>/` folders, the latest first."), ""]
        for folder, doc in found:
            lines += render_device(folder, doc, readme_dir)
        lines.append(_para(REPRODUCE))
    lines.append("")
    if not cpus:
        lines.append(_para(NO_CPU))
    else:
        names = ", ".join(cpu_device_name(doc["device"]) for _, doc in cpus)
        lines += [_para(f"CPU results ({names}): the NumPy backend vs PyTorch CPU in the same "
                        "run, from the committed `benchmarks/results/<cpu device>/` folders, "
                        "the latest first."), ""]
        for folder, doc in cpus:
            lines += render_cpu_device(folder, doc, readme_dir)
        lines.append(_para(CPU_REPRODUCE))
    return "\n".join(lines) + "\n\n"  # a blank line before the end marker


def replace_section(text: str, section: str) -> str:
    """``text`` with everything between the marker lines replaced by ``section``."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise ResultsError(f"README needs one '{BEGIN}' line, then one '{END}' line "
                           f"(found {len(begins)} and {len(ends)})")
    return "".join(lines[: begins[0] + 1]) + section + "".join(lines[ends[0]:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if README.md is out of date, without writing it")
    parser.add_argument("--readme", default=str(README), help="the README to update (default: README.md)")
    parser.add_argument("--results", default=str(RESULTS_ROOT), metavar="DIR",
                        help="the result folders' root (default: benchmarks/results)")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    try:
        text = readme.read_text()
        new = replace_section(text, render_section(Path(args.results), readme.resolve().parent))
    except (OSError, ResultsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{readme}: results section is out of date; run `python -m benchmarks.readme` "
                  "(make readme-results) and commit it", file=sys.stderr)
            return 1
        return 0
    if new != text:
        readme.write_text(new)
        print(f"{readme}: results section updated")
    else:
        print(f"{readme}: results section already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
