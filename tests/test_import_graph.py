"""The package's import graph has no cycle, lazy imports included.

Every module under ``lbyl_pl/`` is parsed with ``ast`` (nothing is imported) and every import of a package
module becomes an edge: top-level imports and those inside functions, classes and ``try``/``if`` blocks,
relative and absolute ones, ``from . import x`` resolving to the submodule ``x`` where there is one.
Importing ``lbyl_pl.a.b`` from outside the subpackage ``lbyl_pl.a`` also runs ``lbyl_pl/a/__init__.py``,
so it is an edge to ``lbyl_pl.a`` as well (the root package is not: every module runs inside it).
Imports under ``if TYPE_CHECKING:`` never run; they count for the module they name only.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "lbyl_pl"


def package_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__.py``)."""
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """``(node, type_checking_only)`` for every Import / ImportFrom, at any depth."""
    def walk(node, guarded):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, guarded
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), guarded)
            else:
                yield from walk(child, guarded)
    yield from walk(tree, False)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (``from .x import y`` in ``a.b`` -> ``a.x``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]  # a plain module's ``.`` is its package
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def named_imports(module: str, path: Path, modules: dict[str, Path]):
    """``(imported package module, type_checking_only)`` for every import in ``module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node, guarded in _imports(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            source = _resolve(module, is_package, node)
            targets = []
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                # ``from pkg import sub`` imports the submodule; ``from mod import name`` imports mod
                targets.append(sub if sub in modules else source)
        for target in targets:
            # ``import a.b.c`` loads a.b.c (an unknown name: its nearest known package)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.split(".")[0] == PACKAGE and target in modules:
                yield target, guarded


def module_edges(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that importing ``module`` runs directly."""
    edges = set()
    for target, guarded in named_imports(module, path, modules):
        edges.add(target)
        if not guarded:
            parts = target.split(".")
            for depth in range(2, len(parts)):  # enclosing subpackages, not the root package
                package = ".".join(parts[:depth])
                if not (module == package or module.startswith(package + ".")):
                    edges.add(package)
    return edges - {module}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {module: module_edges(module, path, modules) for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or ``None``."""
    state = {}  # 1: on the current path, 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20 and "lbyl_pl.units" in graph["lbyl_pl.discovery"]  # the parser sees the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_unit_types_are_a_leaf_module():
    assert import_graph()["lbyl_pl.units"] == set()


@pytest.mark.parametrize("source, expected", [
    ("from .units import PrunableUnit", {"lbyl_pl.units"}),
    ("def f():\n    from .discovery import discover\n", {"lbyl_pl.discovery"}),
    ("from . import units, checks", {"lbyl_pl.units", "lbyl_pl.checks"}),
    ("from . import __version__", {"lbyl_pl"}),
    ("import lbyl_pl.methods.base", {"lbyl_pl.methods.base", "lbyl_pl.methods"}),
    ("from lbyl_pl.methods.fusion import IntraFusion", {"lbyl_pl.methods.fusion", "lbyl_pl.methods"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .methods.base import ProducerUpdate\n",
     {"lbyl_pl.methods.base"}),
    ("import torch\nfrom torch import nn", set()),
])
def test_the_parser_sees_every_kind_of_import(tmp_path, monkeypatch, source, expected):
    module = tmp_path / PACKAGE / "probe.py"
    module.parent.mkdir()
    module.write_text(source)
    modules = package_modules()
    modules["lbyl_pl.probe"] = module
    assert module_edges("lbyl_pl.probe", module, modules) == expected


def test_a_cycle_is_named():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_criteria_are_registered_where_the_registry_is():
    """``CRITERIA`` holds the same criteria whatever was imported: every ``@register_criterion`` is in
    ``lbyl_pl/selection.py`` (a method's own criterion too), none in a module that may not be loaded."""
    places = set()
    for module, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name == "register_criterion":
                    places.add(module)
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and \
                    getattr(node.value, "id", getattr(node.value, "attr", None)) == "CRITERIA":
                places.add(module)
    assert places == {"lbyl_pl.selection"}, f"criteria registered outside selection.py: {places}"
    from lbyl_pl.selection import CRITERIA
    assert {"l1-norm", "l2-norm", "l2-GM", "random_1", "random_2", "random_3", "IF-l1"} <= set(CRITERIA)
