"""`buildbox shell`: a shell in a clone of the recipe's prepared box; the shell's exit is ours."""

from __future__ import annotations

import argparse
from pathlib import Path

from buildbox import log
from buildbox.commands.common import load, need_root


def add(commands, common) -> None:
    shell = commands.add_parser("shell", help="a shell in a clone of the recipe's prepared box")
    shell.add_argument("recipe", type=Path, metavar="RECIPE")
    shell.add_argument("--root", action="store_true", help="as root instead of the build user")
    shell.add_argument("--keep", action="store_true", help="leave the box when the shell exits")
    shell.add_argument("--failed", action="store_true",
                       help="enter the box of the recipe's last failed build, as the build left it")
    common(shell)


def main(args: argparse.Namespace) -> int:
    """Packages installed and source in place, as for the build (or as a failed build left
    them, with --failed)."""
    from buildbox.shell import failed_layers, open_shell
    from buildbox.store import Store
    from buildbox.tasks import Graph

    [recipe] = load([args.recipe])
    need_root()
    log.quiet = True
    graph = Graph(Store(args.cache), [recipe], Path("out"), stream=False)
    fetched = None
    if args.failed:
        layers = failed_layers(graph.store, recipe)
    else:
        graph.run(stage="fetch" if recipe.fetch else "source")
        box = graph.build_box(recipe)
        layers, fetched = box.layers, box.fetched
    if args.failed and recipe.fetch:
        fetch = graph.stages(recipe)["fetch"]
        fetched = graph.store.entry(fetch.kind, fetch.key) / "tree" if isinstance(fetch.key, str) else None
    return open_shell(graph.store, recipe, layers, fetched=fetched, root=args.root, keep=args.keep,
                      failed=args.failed)

