"""The layering of wmplan, read from the source with ``ast``: which module may import what.

Data flows one way (see the design notes): platform -> storage, config -> jobs -> tuning -> cli. A lower
part never imports a higher one; platform never imports Ray, MLflow or Optuna; no module imports
another package's private (``_``) names; and no two modules import each other, directly or through
others, whether at the top of the file or inside a function (imports under ``if TYPE_CHECKING:``
never run and do not count).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "wmplan"


@dataclass(frozen=True)
class Import:
    """One imported module (``target``), the names taken from it, and where."""

    source: str
    """The importing module, e.g. ``wmplan.tuning.study``."""
    target: str
    """The imported module, e.g. ``wmplan.jobs.runner`` (for ``from X import Y`` with Y a module: X.Y)."""
    names: tuple[str, ...]
    """The names taken (``from X import a, b``), or attributes read off an imported module."""
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def package_of(module: str) -> str:
    """The package a module belongs to: the folder it lies in (a package's ``__init__``: itself)."""
    path = MODULES.get(module)
    if path is not None and path.name == "__init__.py":
        return module
    return module.rpartition(".")[0]


def _resolve(source: str, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = source if MODULES[source].name == "__init__.py" else source.rpartition(".")[0]
    for _ in range(level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{name}" if name else base


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node`` except those under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for sub in child.orelse:
                yield sub
                yield from _walk(sub)
            continue
        yield child
        yield from _walk(child)


def imports_of(module: str) -> list[Import]:
    """Every import in ``module`` (top level and inside functions), third-party ones included."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))
    out: list[Import] = []
    aliases: dict[str, str] = {}  # a local name bound to a wmplan module -> that module
    nodes = list(_walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(Import(module, alias.name, (), node.lineno))
                if alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node.level, node.module)
            plain = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # `from wmplan.storage import parquet`: the submodule itself
                    out.append(Import(module, sub, (), node.lineno))
                    aliases[alias.asname or alias.name] = sub
                else:
                    plain.append(alias.name)
            if plain or not node.names:
                out.append(Import(module, target, tuple(plain), node.lineno))
    for node in nodes:  # `tracking._helper` on a module bound by an import
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            out.append(Import(module, aliases[node.value.id], (node.attr,), node.lineno))
    return out


IMPORTS: list[Import] = [imp for module in MODULES for imp in imports_of(module)]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _part(module: str) -> str:
    """``wmplan.tuning.study`` -> ``tuning``; ``wmplan.cli`` -> ``cli``."""
    return module.split(".")[1] if module.count(".") else ""


def _imports_module(imp: Import, prefixes: tuple[str, ...]) -> bool:
    return any(imp.target == p or imp.target.startswith(p + ".") for p in prefixes)


# -- tests ---------------------------------------------------------------------------------------------


def test_the_modules_are_found():
    assert {"wmplan.storage.tracking", "wmplan.tuning.study", "wmplan.jobs.runner", "wmplan.cli"} <= set(MODULES)
    study = [i for i in IMPORTS if i.source == "wmplan.tuning.study"]
    assert any(i.target == "optuna" for i in study) and any(i.target.startswith("wmplan.jobs") for i in study)


def test_no_module_imports_another_packages_private_names():
    bad = []
    for imp in IMPORTS:
        if not imp.target.startswith("wmplan") or package_of(imp.target) == package_of(imp.source):
            continue
        hidden = [n for n in imp.names if _private(n)]
        if any(_private(part) for part in imp.target.split(".")) and package_of(imp.target) != package_of(imp.source):
            hidden.append(imp.target)
        bad += [f"{imp.source}:{imp.line} takes {imp.target}.{n}" if n != imp.target else f"{imp.source}:{imp.line} imports {n}"
                for n in hidden]
    assert not bad, "private names used across packages (make them public where they belong):\n" + "\n".join(bad)


LOWER_MAY_NOT_IMPORT = {
    "platform": ("ray", "mlflow", "optuna", "wmplan.config", "wmplan.storage", "wmplan.jobs", "wmplan.tuning", "wmplan.cli"),
    "config": ("ray", "mlflow", "optuna", "wmplan.storage", "wmplan.jobs", "wmplan.tuning", "wmplan.cli"),
    "storage": ("ray", "optuna", "wmplan.jobs", "wmplan.tuning", "wmplan.cli"),
    "jobs": ("wmplan.tuning", "wmplan.cli"),
    "tuning": ("wmplan.cli",),
}


@pytest.mark.parametrize("part", sorted(LOWER_MAY_NOT_IMPORT))
def test_a_lower_part_imports_no_higher_one(part):
    forbidden = LOWER_MAY_NOT_IMPORT[part]
    bad = [f"{i.source}:{i.line} imports {i.target}" for i in IMPORTS
           if _part(i.source) == part and _imports_module(i, forbidden)]
    assert not bad, f"wmplan.{part} may not import {', '.join(forbidden)}:\n" + "\n".join(bad)


def import_graph() -> dict[str, set[str]]:
    """wmplan module -> the wmplan modules it imports (the nearest existing module of each target)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        target = imp.target
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != imp.source:
            graph[imp.source].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def _where(source: str, target: str) -> str:
    """Where ``source`` imports ``target`` first: its line, and whether inside a function."""
    tree = ast.parse(MODULES[source].read_text(encoding="utf-8"))
    functions = [(f.lineno, f.end_lineno or f.lineno) for f in ast.walk(tree)
                 if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for imp in IMPORTS:
        if imp.source == source and (imp.target == target or imp.target.startswith(target + ".")):
            inside = any(lo <= imp.line <= hi for lo, hi in functions)
            return f"line {imp.line}{' (in a function)' if inside else ''}"
    return "?"


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    lines = []
    for component in found:
        lines.append("cycle: " + ", ".join(component))
        lines += [f"    {a} -> {b}  {_where(a, b)}" for a in component for b in sorted(graph[a]) if b in component]
    assert not found, "modules that import each other (directly or through others):\n" + "\n".join(lines)


def test_figures_and_the_mlflow_client_live_apart():
    """Plots are pure matplotlib; the MLflow recorders draw nothing themselves."""
    plots = ("wmplan.storage.plots", "wmplan.tuning.plots")
    recorders = ("wmplan.storage.mlflow", "wmplan.storage.tracking", "wmplan.tuning.tracking")
    bad = [f"{i.source}:{i.line} imports {i.target}" for i in IMPORTS
           if (i.source in plots and _imports_module(i, ("mlflow", "wmplan.storage.mlflow", "wmplan.storage.tracking")))
           or (i.source in recorders and _imports_module(i, ("matplotlib",)))]
    assert not bad, "\n".join(bad)
