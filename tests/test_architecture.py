"""The layers: the library needs only torch and never imports the layers above it; the
reproduction (experiments, benchmark harness, zoo) uses only the library's public API; the
command line sits on top. Read from the source (ast), so an import hidden in a function counts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import weightnorm

PACKAGE = Path(weightnorm.__file__).parent
STDLIB = set(sys.stdlib_module_names)

#: The library, bottom to top: a module may import only modules of its own level or below.
LIBRARY_LEVELS = [
    {"_errors", "_kernels"},  # the Triton kernels import nothing of the library
    {"_torch_compat"},  # every torch internal read, in one place
    {"functional"},  # the math: the spec, the kernels and the one dispatch
    {"_torch_removal"},  # torch's removal functions on our weight norms
    {"_reparam"},  # one module, one parameter
    {"layers", "_model"},
    {"init", "batchnorm", "formats", "optim"},
    {"dynamics"},  # forced weight norm and what to log: modules and the optimizer-level mode
    {"__init__"},
]
LEVEL = {name: i for i, names in enumerate(LIBRARY_LEVELS) for name in names}


def imports(path: Path, package: str) -> list[tuple[str, list[str]]]:
    """``(absolute module, names imported from it)`` for every import in the file, a module of
    ``package`` (``from .x`` is ``package.x``, ``from ..x`` is one package up)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names]))
    return found


def library_modules() -> list[Path]:
    return [p for p in PACKAGE.glob("*.py") if p.stem != "__main__"]


def test_every_library_module_has_a_level() -> None:
    assert {p.stem for p in library_modules()} == set(LEVEL)


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: p.stem)
def test_the_library_needs_only_torch_and_imports_nothing_above(path: Path) -> None:
    for module, names in imports(path, "weightnorm"):
        top = module.split(".")[0]
        if top != "weightnorm":
            assert top in STDLIB or top in ("torch", "triton"), f"{path.name} imports {module}"
            continue
        parts = module.split(".")
        targets = [parts[1]] if len(parts) > 1 else names
        for target in targets:
            assert target in LEVEL, f"{path.name} imports weightnorm.{target} (above the library)"
            assert LEVEL[target] <= LEVEL[path.stem], (
                f"{path.name} (level {LEVEL[path.stem]}) imports {target} (level {LEVEL[target]})"
            )


def test_no_import_cycle_in_the_library() -> None:
    """Issue 20: functional and _kernels imported each other. A module imports no module of
    the library that imports it back, directly or not."""
    graph: dict[str, set[str]] = {}
    for path in library_modules():
        graph[path.stem] = set()
        for module, names in imports(path, "weightnorm"):
            parts = module.split(".")
            if parts[0] == "weightnorm":
                graph[path.stem] |= {parts[1]} if len(parts) > 1 else set(names) & set(LEVEL)
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            assert node != start, f"{start} imports itself through {sorted(seen)}"
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))


def upper_modules() -> list[Path]:
    return sorted((PACKAGE / "experiments").glob("*.py"))


@pytest.mark.parametrize("path", upper_modules(), ids=lambda p: p.stem)
def test_the_reproduction_uses_only_the_public_api(path: Path) -> None:
    for module, names in imports(path, "weightnorm.experiments"):
        if not module.startswith("weightnorm"):
            continue
        if module.startswith("weightnorm.experiments"):
            continue  # its own modules
        assert not module.startswith("weightnorm.cli"), f"{path.name} imports the command line"
        public = module in ("weightnorm", "weightnorm.functional", "weightnorm.optim")
        assert public, f"{path.name} imports {module}: not a public module of the library"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{path.name} imports private names {private} from {module}"
    text = path.read_text()
    for name in ast.walk(ast.parse(text)):
        if (
            isinstance(name, ast.Attribute)
            and isinstance(name.value, ast.Name)
            and name.value.id == "wn"
        ):
            assert not name.attr.startswith("_") or name.attr == "__version__", (
                f"{path.name} uses wn.{name.attr}"
            )
            assert name.attr in weightnorm.__all__, f"{path.name}: wn.{name.attr} not public"


def test_the_command_line_is_on_top() -> None:
    for path, package in [
        *((p, "weightnorm") for p in library_modules()),
        *((p, "weightnorm.experiments") for p in upper_modules()),
    ]:
        for module, names in imports(path, package):
            assert not module.startswith("weightnorm.cli"), f"{path} imports the command line"
            assert not (module == "weightnorm" and "cli" in names), f"{path} imports weightnorm.cli"


def test_relative_imports_resolve_to_the_module_they_name(tmp_path: Path) -> None:
    """Regression: an experiments module was read as a module of ``weightnorm.experiments.x``,
    so ``from .._reparam import ...`` passed as one of its own modules, unchecked."""
    source = tmp_path / "m.py"
    source.write_text(
        "from .._reparam import weight_norm\nfrom .jobs import Jobs\nfrom .. import cli\n"
    )
    assert imports(source, "weightnorm.experiments") == [
        ("weightnorm._reparam", ["weight_norm"]),
        ("weightnorm.experiments.jobs", ["Jobs"]),
        ("weightnorm", ["cli"]),
    ]
    assert imports(source, "weightnorm")[1] == ("weightnorm.jobs", ["Jobs"])


def test_importing_the_library_imports_no_optional_dependency() -> None:
    code = (
        "import sys, weightnorm, weightnorm.cli; "
        "bad = [m for m in ('mnist1d', 'matplotlib', 'sklearn', 'gymnasium', 'transformers', "
        "'snac', 'bigvgan', 'weightnorm.experiments.runner') if m in sys.modules]; "
        "print(bad); raise SystemExit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
