"""Fail if the package has an import cycle (lazy imports inside functions included).

Also checks that the running bridge never imports the model tooling
(``bridge.modeltools``), apart from ``synth`` and ``demo`` for the synthetic presets.

    python3 scripts/check_imports.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "bridge"
#: modules on the running bridge's path may import these tooling modules (lazily) and no others
TOOLING_ALLOWED = {"bridge.modeltools.synth", "bridge.modeltools.demo"}
TOOLING_USERS = ("bridge.modeltools", "bridge.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except those under ``if TYPE_CHECKING:`` (annotations only, never imported)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every bridge module ``path`` imports at run time, lazy imports included
    (``from bridge.x import y`` counts ``bridge.x.y`` when it is a module)."""
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    return {m: imports(p, modules) - {m} for m, p in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
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
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in g:
        if v not in index:
            visit(v)
    return found


def main() -> int:
    g = graph()
    bad = 0
    for comp in cycles(g):
        print("import cycle: " + " <-> ".join(comp))
        bad += 1
    for m, deps in sorted(g.items()):
        if m.startswith(TOOLING_USERS):
            continue
        for d in sorted(deps):
            if d.startswith("bridge.modeltools") and d not in TOOLING_ALLOWED:
                print(f"runtime module {m} imports model tooling {d}")
                bad += 1
    if not bad:
        print(f"imports: {len(g)} modules, no cycle, runtime apart from the model tooling")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
