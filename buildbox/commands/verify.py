"""`buildbox verify`: build twice under varied conditions (or once against a manifest) and compare."""

from __future__ import annotations

import argparse
from pathlib import Path

from buildbox import log
from buildbox.commands.common import load, need_root
from buildbox.errors import InputError


def add(commands, common) -> None:
    verify = commands.add_parser("verify", help="build twice under varied conditions and compare")
    verify.add_argument("recipe", type=Path, metavar="RECIPE")
    verify.add_argument("--against", type=Path, metavar="MANIFEST",
                        help="compare one fresh build with this manifest (e.g. the nightly's)")
    common(verify)


def main(args: argparse.Namespace) -> int:
    """Exit 0 only when every artifact is identical."""
    from buildbox.store import Store
    from buildbox.tasks import Graph
    from buildbox.verify import compare

    [recipe] = load([args.recipe])
    if args.against:
        from buildbox.out import is_manifest
        if not args.against.is_file():
            raise InputError(f"--against {args.against}: no such manifest", hint="give the path of a manifest.json")
        if not is_manifest(args.against):
            raise InputError(f"--against {args.against}: not a buildbox manifest",
                             hint="give the manifest.json of a build's out/NAME/")
    need_root()
    log.quiet = True
    graph = Graph(Store(args.cache), [recipe], Path("out"), stream=False)
    graph.run(stage="fetch" if recipe.fetch else "source")
    differences = compare(graph.ctx, recipe, graph.build_box(recipe), args.against)
    if differences:
        for line in differences:
            print(log.printable(f"differs: {line}"))
        print(f"verify: {recipe.name} is not reproducible: {len(differences)} artifact(s) differ")
        return 1
    print(f"verify: {recipe.name} is reproducible: every artifact identical across the builds")
    return 0
