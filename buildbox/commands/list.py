"""`buildbox list`: recipes and whether each is up to date. Read-only and offline: no mount, no
network, no lock; an unlocked ref is taken at the commit the last run resolved it to, and said so."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from buildbox import log
from buildbox.errors import InputError
from buildbox.commands.common import human, load, open_remote, remote_flags


def add(commands, common) -> None:
    lister = commands.add_parser("list", help="show recipes and whether each is up to date")
    lister.add_argument("recipes", nargs="*", type=Path, metavar="RECIPE",
                        help="recipe files (default: recipes/*.toml)")
    lister.add_argument("--out", type=Path, default=Path("out"))
    lister.add_argument("--keys", action="store_true", help="print every stage's key: STAGE NAME KEY")
    remote_flags(lister, listing=True)
    common(lister)


def main(args: argparse.Namespace) -> int:
    from buildbox.out import is_current
    from buildbox.recipe import GitSource, find_recipes
    from buildbox.records import RunRecord
    from buildbox.store import KINDS, Store, tree_size
    from buildbox.tasks import Graph
    from buildbox.why import stale

    paths = args.recipes or find_recipes(Path("recipes"))
    recipes = load(paths)
    # Offline unless asked: --remote (the configured remote, or URL) adds what the remote has.
    remote = open_remote(args, use=args.remote is not None and not args.no_remote)
    if args.remote is not None and remote is None and not args.no_remote:
        raise InputError("list --remote: no remote cache is configured", hint="give --remote URL, or set [remote] url in buildbox.toml")
    graph = Graph(Store(args.cache, read_only=True), recipes, args.out, offline=True)
    store = graph.store
    on_remote = remote_view(remote, graph, recipes) if remote else {}
    if args.keys:
        for recipe in recipes:
            for stage in graph.stages(recipe).values():
                print(f"{stage.name} {recipe.name} {stage.key if isinstance(stage.key, str) else '(not resolved yet)'}")
        return 0
    for recipe in recipes:
        size, why = "", None
        stages = graph.stages(recipe)
        key = stages["build"].key
        if not isinstance(key, str):
            state, why = "needs a build (not resolved yet)", stale(store, recipe, stages)
        elif is_current(graph.out_dir(recipe), key, graph.stamps(recipe)):
            state = "up to date"
        elif store.has("builds", key):
            state = "built (in the cache, not in out/)"
        else:
            state, why = "needs a build", stale(store, recipe, stages)
        if isinstance(key, str) and store.has("builds", key):
            size = human(tree_size(store.entry("builds", key)))
        locked = f" (locked: {recipe.lock.path.name})" if recipe.lock else ""
        print(f"{recipe.name:24} {state:36} {size:>9}  {log.escaped(str(recipe.path))}{locked}")
        last = RunRecord.read(store, recipe.name).git
        if isinstance(recipe.source, GitSource) and not recipe.lock and last and last.ref == recipe.source.ref:
            age = time.time() - last.when
            ago = f"{age / 60:.0f} min" if age < 7200 else f"{age / 3600:.0f} h"
            print(f"    ref {log.escaped(recipe.source.ref)} taken at {last.commit[:12]}, as resolved {ago} ago: "
                  "it may have moved since (`buildbox run` resolves it again; a lock pins it)")
        if why:
            print(f"    why: {log.escaped(why)}")
        if recipe.name in on_remote:
            print(f"    remote: {on_remote[recipe.name]}")
    if store.root.is_dir():
        sizes = {kind: tree_size(store.root / kind) for kind in (*KINDS, "debs")}
        print("cache: " + ", ".join(f"{kind} {human(size)}" for kind, size in sizes.items() if size)
              + f"; {human(sum(sizes.values()))} in all")
    return 0


def remote_view(remote, graph, recipes) -> dict[str, str]:
    """What the remote has of each recipe's build, asked in one batch: signer and reproductions."""
    wanted = {recipe.name: w for recipe in recipes if (w := graph.wanted_of(recipe))}
    found = remote.look_up(list(wanted.values()))
    view = {name: "not resolved yet: build it first" for name in (r.name for r in recipes) if name not in wanted}
    for name, w in wanted.items():
        hit = found[w.key]
        view[name] = (f"has it ({hit.said()})" if hit else
                      "unreachable" if remote.down else "does not have it (or refused it: see the warning)")
    return view
