"""The house's shape: no two modules of the package import each other, however indirectly.

Read from the source with ``ast``, not from a run: every import counts, also one inside a
function (imported late to keep a command fast, it is still a dependency) and one under
``if TYPE_CHECKING:``. ``import a.b`` imports ``a.b``; ``from pkg import name`` imports
``pkg.name`` when that is a module, and always ``pkg`` itself, whose ``__init__`` the
statement runs to look the name up (so a package's ``__init__`` that names its modules,
even lazily, must not be reached back from them through ``from pkg import ...``). The
parent packages that ``import a.b.c`` initialises on the way are not counted: a package
that re-exports its modules would otherwise be in a circle with each of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "prefect_pipeline"


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's ``__init__``) for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (see the module docstring)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in known.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from . import x, from ..jobs import y
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                targets.add(source)
                targets.update(f"{source}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in targets if target in known} - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that reach each other (Tarjan's strongly connected
    components of more than one module), each as a path that closes the circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(_circle(graph, set(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _circle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One path through ``component`` back to where it started, for the failure message."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        following = sorted(graph[path[-1]] & component)
        if start in following and len(path) > 1:
            return [*path, start]
        unseen = [module for module in following if module not in seen]
        if not unseen:
            return [*path, following[0]]
        path.append(unseen[0])
        seen.add(unseen[0])


def test_no_import_circle() -> None:
    found = cycles(import_graph())

    assert found == [], "\n".join(" -> ".join(circle) for circle in found)


def test_the_graph_sees_late_imports_type_checking_imports_and_packages() -> None:
    """The check would see a circle if there were one: the kinds of import it relies on
    are in the graph."""
    graph = import_graph()

    # Inside a function: the runner imports the server when a run needs Prefect.
    assert "prefect_pipeline.pipeline.server" in graph["prefect_pipeline.pipeline.runner"]
    # Under TYPE_CHECKING: the lazy package re-exports its runner.
    assert "prefect_pipeline.pipeline.runner" in graph["prefect_pipeline.pipeline"]
    # ``from pkg import name`` reaches the package's __init__, and the module if it is one.
    assert "prefect_pipeline.validators" in graph["prefect_pipeline.jobs.reader"]
    assert {"prefect_pipeline", "prefect_pipeline.interrupts"} <= graph["prefect_pipeline.cli"]


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c", "a"]]),
        ({"p": {"p.r"}, "p.r": {"p.s"}, "p.s": {"p"}, "q": {"p"}}, [["p", "p.r", "p.s", "p"]]),
    ],
)
def test_cycles_finds_circles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected
