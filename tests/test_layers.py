"""Subpackages import each other in one direction: a cycle between them fails here.

Every ``import fabsight.X`` / ``from fabsight.X import ...`` counts, at module level or inside
a function (a lazy import is still a dependency). Top-level modules (``artifacts``,
``runtimes``, ...) are nodes like the subpackages.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fabsight"


def _node(path: Path) -> str:
    """``fabsight/die/model.py`` → ``die``; ``fabsight/artifacts.py`` → ``artifacts``."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def import_graph() -> dict[str, dict[str, list[str]]]:
    """{importer: {imported: [files that import it]}} between subpackages and top-level modules."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _node(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] == "fabsight" and len(parts) > 1 and parts[1] != me:
                    graph[me][parts[1]].append(str(path.relative_to(PACKAGE)))
    return graph


def strongly_connected(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Tarjan's components of more than one node: each is a set of packages importing in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(set(graph) | {w for deps in graph.values() for w in deps}):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    planted = {"a": {"b": ["a/x.py"]}, "b": {"c": ["b/y.py"]}, "c": {"a": ["c/z.py"]}, "d": {"a": ["d/w.py"]}}
    assert strongly_connected(planted) == [["a", "b", "c"]]


def test_no_import_cycle_between_subpackages() -> None:
    graph = import_graph()
    assert "die" in graph and "deploy" in graph["cli"], "the graph was not read"
    cycles = strongly_connected(graph)
    detail = [
        f"{a} -> {b} ({', '.join(sorted(set(graph[a][b]))[:3])})"
        for comp in cycles for a in comp for b in comp if b in graph.get(a, {})
    ]
    assert not cycles, "import cycles between subpackages:\n" + "\n".join(detail)
