"""The project's import graph has no circles: every module can be read knowing only the ones below
it. Imports inside functions count too (a late import is still a dependency), type-checking-only
ones do not. grimp (import-linter's engine) builds the graph from the source."""

from __future__ import annotations

import grimp

PACKAGES = ("adapters", "tasks", "warehouse", "flows")


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module: each is a set of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_finder_sees_a_circle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert sum(map(len, edges.values())) > 100               # the graph was read, not empty
    assert "adapters.judges.base" in edges["adapters.judges.learned"]
    assert strongly_connected(edges) == []


def test_flows_orchestrate_tasks_and_import_no_adapter():
    """The flows and the CLI call tasks (and the warehouse); models, judges and data sets are reached
    through tasks only, so an adapter's move or rename never touches a flow (issue 23, part 2)."""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    flows = [m for m in graph.modules if m == "flows" or m.startswith("flows.")]
    assert "flows.cli.entry" in flows and "flows.infer" in flows
    direct = {(m, i) for m in flows for i in graph.find_modules_directly_imported_by(m)
              if i == "adapters" or i.startswith("adapters.")}
    assert direct == set()
    assert any(i.startswith("tasks.") for i in graph.find_modules_directly_imported_by("flows.infer"))


def test_flows_hold_no_sql():
    """SQL lives in sql/ and in the tasks and warehouse modules that run it, not in a flow's strings."""
    import ast
    import re
    from pathlib import Path

    keyword = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|WITH)\b.*\b(FROM|INTO|SET|TABLE|AS)\b", re.I | re.S)
    found = []
    for path in sorted((Path(__file__).resolve().parent.parent / "flows").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and keyword.match(node.value):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []
    assert keyword.match("SELECT x FROM t") and not keyword.match("select the runs to judge")
