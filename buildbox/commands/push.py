"""`buildbox push`: put the cache's builds of recipes in the remote cache, signed."""

from __future__ import annotations

import argparse
from pathlib import Path

from buildbox.commands.common import load, need_root, open_remote, remote_flags
from buildbox.errors import BuildFailed, InputError


def add(commands, common) -> None:
    push = commands.add_parser("push", help="push the cached builds of recipes to the remote cache")
    push.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE")
    remote_flags(push)
    common(push)


def main(args: argparse.Namespace) -> int:
    """Exit 0 when every build landed (or was there with the same bits), 1 otherwise."""
    from buildbox.store import Store
    from buildbox.tasks import Graph

    recipes = load(args.recipes)
    remote = open_remote(args, push=True)
    if remote is None:
        raise InputError("push: --no-remote leaves nowhere to push", hint="drop --no-remote")
    need_root()
    graph = Graph(Store(args.cache, read_only=True), recipes, Path("out"), offline=True)
    missing = []
    for recipe in recipes:
        key = graph.stages(recipe)["build"].key
        if not isinstance(key, str) or not graph.store.intact("builds", key):
            missing.append(recipe.name)
            continue
        remote.push(graph.store, recipe.name, key, fetched=graph.fetched_digest(recipe))
    if missing:
        raise BuildFailed(f"push: the cache holds no build of {', '.join(missing)} for its current inputs",
                          hint="run `buildbox run` on it first")
    return 1 if remote.failures else 0
