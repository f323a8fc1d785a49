"""The modules of buildbox/ import one another in layers, never in a circle: constants at the
bottom, then recipe, lock, keys, the stages, tasks and the cli (README: "How the code is laid out")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "buildbox"


def imports(path: Path, modules: set[str]) -> set[str]:
    """The buildbox modules a file imports, wherever the import stands (in a function, or under
    TYPE_CHECKING: a cycle that only type checkers see is still a knot in the design)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "buildbox":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names
                      if alias.name.startswith("buildbox.")}
    return found - {path.stem}


def graph() -> dict[str, set[str]]:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    return {path.stem: imports(path, modules) for path in PACKAGE.glob("*.py")}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as the list of its modules (the first repeated at the end), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_cycle_finder_names_a_cycle_it_is_given() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_of_buildbox_imports_itself_through_others() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_layers_hold_constants_recipe_and_lock_at_the_bottom() -> None:
    edges = graph()
    assert edges["constants"] == set()
    assert edges["recipe"] <= {"errors"}
    assert edges["lock"] <= {"errors", "recipe", "store"}
    assert edges["keys"] <= {"constants", "recipe"}
    assert "tasks" not in set().union(*(edges[m] for m in edges if m not in ("cli", "verify")))
