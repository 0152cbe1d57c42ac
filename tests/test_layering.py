"""The package's one rule, checked on its import graph (every import, lazy ones in functions too).

Layers, top to bottom: ``cli`` > ``serve`` > ``tasks`` > everything else (corpus, encoders, index,
embedding, retrieval, generators, eval, ...). A module imports only its own layer's shared modules
or lower layers; tasks are libraries (no typer, rich or fastapi) and do not import each other; no
two units (``mmrag.<subpackage>``, or ``mmrag.tasks.<task>``) import each other, directly or
through others.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mmrag"
TOP = {"cli": 3, "serve": 2, "tasks": 1}  # everything else: layer 0
APP_FRAMEWORKS = ("typer", "rich", "fastapi", "uvicorn", "starlette")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = _module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from mmrag.tasks import chat`
    return out


def unit(name: str) -> str | None:
    """``mmrag.tasks.chat.x`` -> ``tasks.chat``; ``mmrag.index.base`` -> ``index``; else None."""
    parts = name.split(".")
    if parts[0] != "mmrag" or len(parts) < 2:
        return None
    if parts[1] == "tasks":
        return "tasks" if len(parts) == 2 else f"tasks.{parts[2]}"
    return parts[1]


def layer(u: str) -> int:
    return TOP.get(u.split(".")[0], 0)


def import_graph() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the modules that make the edge (for the failure message)."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(PKG.rglob("*.py")):
        src = _module_name(path)
        a = unit(src)
        if a is None:
            continue
        for name in _imports(path):
            b = unit(name)
            if b is not None and b != a and not (a.startswith("tasks.") and b == "tasks"):
                graph[a][b].add(src)
    return graph


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
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
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_units():
    graph = import_graph()
    cycles = _cycles(graph)
    detail = [
        f"{' <-> '.join(c)}: " + "; ".join(f"{a}->{b} in {sorted(graph[a][b])[0]}" for a in c for b in c if b in graph[a])
        for c in cycles
    ]
    assert not cycles, "import cycles: " + " | ".join(detail)


def test_nothing_imports_upward():
    bad = [
        f"{src} imports mmrag.{b}"
        for a, edges in import_graph().items()
        for b, srcs in edges.items()
        if layer(b) > layer(a)
        for src in sorted(srcs)
    ]
    assert not bad, "upward imports: " + "; ".join(bad)


def test_tasks_do_not_import_each_other():
    bad = [
        f"{src} imports mmrag.{b}"
        for a, edges in import_graph().items() if a.startswith("tasks.")
        for b, srcs in edges.items() if b.startswith("tasks.")
        for src in sorted(srcs)
    ]
    assert not bad, "tasks importing other tasks (share a module below them instead): " + "; ".join(bad)


def test_tasks_are_libraries():
    bad = []
    for path in sorted((PKG / "tasks").rglob("*.py")):
        for name in _imports(path):
            if name.split(".")[0] in APP_FRAMEWORKS:
                bad.append(f"{_module_name(path)} imports {name}")
    assert not bad, "tasks must not use application frameworks: " + "; ".join(sorted(set(bad)))


def test_the_checks_see_the_package():
    """Guards the guard: the graph holds the known layers and the known edges between them."""
    graph = import_graph()
    units = set(graph) | {b for e in graph.values() for b in e}
    assert {"cli", "serve", "tasks.captioning", "tasks.chat", "tasks.rir", "tasks.imageref", "encoders",
            "index", "corpus", "generators", "eval"} <= units
    assert "tasks.chat" in graph["cli"] and "retrieval" in graph["tasks.captioning"] and "index" in graph["retrieval"]
    assert unit("mmrag.tasks.chat.session") == "tasks.chat" and layer("tasks.chat") == 1
