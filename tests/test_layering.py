"""The package's layering, read from every module's imports (module-level and inside functions):
imports point one way, and no modules import each other in a loop.

    cli -> flows (loaded by entrypoint, not imported) -> job / evaluation / publish
        -> render -> director -> shape_world -> bundled -> core

Each subpackage's ``__init__`` docstring says the same in words; this test is what keeps it true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What each part may import (besides itself). ``flows`` is the Prefect wiring outside the library.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "bundled": {"core"},
    "director": {"core", "shape_world"},
    "render": {"core", "director"},
    "shape_world": {"core", "bundled"},
    "job": {"core", "director", "render"},
    "evaluation": {"core", "director", "render", "job", "shape_world"},
    "publish": {"core", "render", "job", "evaluation", "shape_world"},
    "cli": {"core", "bundled", "director", "render", "job", "evaluation", "publish", "shape_world"},
    "main": {"cli"},
    "flows": {"core", "director", "render", "job", "publish", "evaluation", "flows"},
}


def part_of(module: str) -> str | None:
    """``direct2v.job.manifest`` -> ``job``; ``flows.generate`` -> ``flows``; others -> None."""
    parts = module.split(".")
    if parts[0] == "flows":
        return "flows"
    if parts[0] != "direct2v":
        return None
    if len(parts) == 1:
        return "package"
    return "main" if parts[1] == "__main__" else parts[1]


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every project module ``path`` imports, anywhere in the file."""
    module = module_name(path)
    return imports_of(path.read_text(encoding="utf-8"), module if path.name == "__init__.py" else module.rpartition(".")[0])


def imports_of(source: str, package: str) -> set[str]:
    """The project modules ``source`` (a module of ``package``) imports, at any depth: ``from a.b
    import c`` gives ``a.b.c`` when that is a module of ours, else ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return {name for name in found if part_of(name) is not None}


SOURCES = sorted([*ROOT.glob("direct2v/**/*.py"), *ROOT.glob("flows/*.py")])
MODULES = {module_name(path) for path in SOURCES}
GRAPH = {module_name(path): imported_modules(path) for path in SOURCES}


def test_every_part_of_the_package_is_placed():
    assert {part_of(module) for module in MODULES} - {"package"} <= set(ALLOWED)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_one_way(module):
    wrong = wrong_imports(module, GRAPH[module])
    assert not wrong, f"{module} may import only {sorted(ALLOWED.get(part_of(module), ()))}, imports {wrong}"


def wrong_imports(module: str, imported: set[str]) -> list[str]:
    """The modules of ``imported`` that ``module``'s part may not import."""
    part = part_of(module)
    return sorted(name for name in imported
                  if part_of(name) not in (part, "package") and part_of(name) not in ALLOWED.get(part, set()))


def test_no_import_cycles():
    graph = {module: {name for name in targets if name in GRAPH} for module, targets in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_reader_sees_late_relative_and_from_package_imports():
    """What the layering rests on: an import inside a function, a relative import and a
    ``from package import module`` all count, and other packages' imports do not."""
    source = """
import numpy
from direct2v.core import files
from ..render.encode import read_video

def late():
    from direct2v.job.manifest import ManifestRow
    import flows.generate
"""
    assert imports_of(source, "direct2v.publish") == {
        "direct2v.core.files", "direct2v.render.encode", "direct2v.job.manifest", "flows.generate"}


def test_a_wrong_arrow_is_caught():
    """The rule itself, on imports no module has: core importing the job layer and the library
    importing the flows are refused; the job layer importing core is not."""
    assert wrong_imports("direct2v.core.config", {"direct2v.job.manifest", "direct2v.core.files"}) == [
        "direct2v.job.manifest"]
    assert wrong_imports("direct2v.cli.common", {"flows.generate"}) == ["flows.generate"]
    assert wrong_imports("direct2v.job.request", {"direct2v.core.config", "direct2v.render.model_dir"}) == []
