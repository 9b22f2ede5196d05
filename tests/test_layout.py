"""The layout's rules (docs/architecture.md), read from the source: dependencies point one
way, no import circle, no kernel package reaches into another's private names, and no
library file grows past what a reader takes in at once."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "gpukernels"
KERNEL_PACKAGES = ("reference", "cpu", "triton")
#: What a kernel package may not import: the autograd, op and module layers.
UPPER_LAYERS = ("tensor", "tensor_ops", "autograd", "functional", "ops", "nn", "optim", "amp", "creation",
                "kernels", "filters", "serialization", "data", "datasets", "samplers", "distributed", "doctor")
MAX_LINES = 700


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path):
    """``(imported module, names, line)`` for every import in the file, function-level
    imports included (a lazy import is still a dependency)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = tuple(a.name for a in node.names)
            yield target, names, node.lineno
            for name in names:  # ``from . import backend`` imports the module gpukernels.backend
                if (ROOT.parent / (target.replace(".", "/") + f"/{name}.py")).exists() or \
                        (ROOT.parent / (target.replace(".", "/") + f"/{name}/__init__.py")).exists():
                    yield f"{target}.{name}", (), node.lineno


FILES = sorted(p for p in ROOT.rglob("*.py"))


def _graph():
    graph = {}
    for path in FILES:
        deps = set()
        for target, _, _ in _imports(path):
            if target.startswith("gpukernels"):
                deps.add(target)
        graph[_module_name(path)] = deps & {_module_name(p) for p in FILES}
    return graph


@pytest.mark.parametrize("package", KERNEL_PACKAGES)
def test_kernel_packages_import_no_upper_layer_and_no_private_name_of_another_backend(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for target, names, line in _imports(path):
            parts = target.split(".")
            if parts[0] != "gpukernels" or len(parts) < 2:
                continue
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            if parts[1] in UPPER_LAYERS:
                bad.append(f"{where} imports {target}")
            other = parts[1] in KERNEL_PACKAGES and parts[1] != package
            if other and any(n.startswith("_") for n in names):
                bad.append(f"{where} imports private {names} of {target}")
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph = _graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            # a package imports its submodules' names through its __init__: not a circle
            if dep == node or node.startswith(dep + ".") or dep.startswith(node + "."):
                continue
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_every_library_file_reads_in_one_sitting():
    long = {str(p.relative_to(ROOT.parent)): n for p in FILES if (n := len(p.read_text().splitlines())) >= MAX_LINES}
    assert not long, f"files of {MAX_LINES} lines or more: {long}"


def test_the_leaf_modules_import_nothing_of_the_library():
    for leaf in ("dtypes", "shapes", "knobs"):
        deps = {t for t, _, _ in _imports(ROOT / f"{leaf}.py") if t.startswith("gpukernels")}
        assert not deps, f"gpukernels/{leaf}.py imports {deps}"
    deps = {t for t, _, _ in _imports(ROOT / "backend.py") if t.startswith("gpukernels")}
    assert not deps, f"gpukernels/backend.py imports {deps}"
