"""The package's shape: no import cycles between prunetune's modules, no import of our own modules
hidden inside a function (the usual way to paper over a cycle), and no oversized file.

Imports under `if TYPE_CHECKING:` are for type hints only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "prunetune"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """prunetune modules an import statement loads (the module a name is imported from, or the
    submodule when the name is one)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
    out = []
    for n in names:
        while n and n not in MODULES and "." in n:
            n = n.rsplit(".", 1)[0]
        if n in MODULES:
            out.append(n)
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str, path: Path) -> tuple[set[str], list[str]]:
    """(modules imported at module level, 'file:line module' of imports inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    inner: list[str] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if _type_checking(node):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for t in _targets(node, module, is_package):
                if in_function:
                    inner.append(f"{path.relative_to(SRC)}:{node.lineno} {t}")
                else:
                    top.add(t)
        fn = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, fn)

    visit(tree, False)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first; a module's own packages are already
    # being imported when it runs (they are its parents, not its imports).
    parts = module.split(".")
    own = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    for t in list(top):
        tp = t.split(".")
        top.update(".".join(tp[:i]) for i in range(1, len(tp)) if ".".join(tp[:i]) in MODULES)
    top -= own
    return top, inner


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v][0]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            strong(v)
    return out


def test_the_checker_sees_the_package():
    assert len(MODULES) > 40 and "prunetune.registry" in MODULES
    assert any(GRAPH[m][0] for m in MODULES)  # it finds imports at all


def test_no_import_cycles():
    assert _cycles() == []


def test_no_own_imports_inside_functions():
    inner = [line for m in MODULES for line in GRAPH[m][1]]
    assert inner == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_stay_small(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(SRC)} has {lines} lines; split it by concept"


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "prunetune.errors", ({"prunetune.registry"}, []))
    assert any({"prunetune.errors", "prunetune.registry"} <= set(c) for c in _cycles())
