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
    """Each module's buildbox imports; a command module (buildbox/commands/NAME.py) is
    "commands.NAME", and importing any of them counts as importing "commands"."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    edges = {path.stem: imports(path, modules) for path in PACKAGE.glob("*.py")}
    for path in (PACKAGE / "commands").glob("*.py"):
        edges[f"commands.{path.stem}"] = imports(path, modules) - {"commands"}
    # A package of the stages' layer (buildbox/remote/) counts as one module.
    edges["remote"] = set().union(*(imports(path, modules) for path in (PACKAGE / "remote").glob("*.py"))) - {"remote"}
    return edges


# The layers of the package, bottom first (README, "The pipeline"): a module imports only from
# its own layer and those below it.
LAYERS = {
    "core": {"errors", "constants", "log", "pins", "space", "signing", "__init__"},
    "cache": {"store"},
    "input": {"debian", "recipe", "lock", "keys", "records", "context", "config"},
    "sandbox": {"process", "inroot", "idmap", "cgroup", "box", "enter", "sandbox"},
    "stages": {"sets", "base", "packages", "source", "fetch", "epoch", "build", "out", "elf", "verify", "shell", "gc", "remote",
               "runtime", "roots", "unit"},
    "plan": {"resolve", "layers", "why", "tasks", "relock"},
    "commands": {"cli", "commands", "__main__"},
}
ORDER = list(LAYERS)
GRAPH_MODULES = LAYERS["plan"] | LAYERS["commands"]


def layer_of(module: str) -> str:
    name = "commands" if module.startswith("commands.") else module
    return next(layer for layer, members in LAYERS.items() if name in members)


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
    assert edges["pins"] == set()
    # debian.py is the recipe's reader of Debian's formats (a .dsc, the policy's grammars).
    assert edges["debian"] <= {"errors", "pins", "constants"}
    assert edges["recipe"] <= {"errors", "pins", "constants", "debian"}
    assert edges["lock"] <= {"errors", "recipe", "store", "pins", "debian"}
    # Keys are pure: nothing that touches the disk, processes or the network (of debian.py, only
    # the DscSource value).
    assert edges["keys"] <= {"constants", "recipe", "pins", "debian"}
    assert "tasks" not in set().union(*(edges[m] for m in edges if m not in ("relock", "cli")
                                       and not m.startswith("commands.")))


def test_every_module_imports_only_from_its_layer_and_those_below() -> None:
    edges = graph()
    for module, imported in sorted(edges.items()):
        for other in sorted(imported):
            assert ORDER.index(layer_of(other)) <= ORDER.index(layer_of(module)), \
                f"{module} ({layer_of(module)}) imports {other} ({layer_of(other)}), a layer above it"


def test_no_stage_imports_the_graph_or_the_commands() -> None:
    edges = graph()
    for stage in sorted(LAYERS["stages"] | LAYERS["sandbox"]):
        assert not edges[stage] & GRAPH_MODULES, f"{stage} imports {sorted(edges[stage] & GRAPH_MODULES)}"


def test_every_command_module_is_reachable_from_the_parser() -> None:
    import argparse
    from buildbox.cli import MODULES, parser
    from buildbox.commands import COMMANDS
    files = {path.stem for path in (PACKAGE / "commands").glob("*.py")} - {"__init__", "common"}
    assert files == set(MODULES.values()), "a command module the parser does not know, or one missing"
    [sub] = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == set(COMMANDS)
