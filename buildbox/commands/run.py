"""`buildbox run`: build recipes and put their artifacts in out/NAME/."""

from __future__ import annotations

import argparse
from pathlib import Path

from buildbox import log
from buildbox.commands.common import load, need_root, open_remote, relock, remote_flags, stop_on_signals
from buildbox.errors import BuildFailed, InputError


def add(commands, common) -> None:
    run = commands.add_parser("run", help="build recipes and put their artifacts in out/NAME/")
    run.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE")
    run.add_argument("--out", type=Path, default=Path("out"), help="where artifacts go (default: ./out)")
    run.add_argument("--keep", action="store_true", help="leave the build box for inspection")
    run.add_argument("-j", "--jobs", type=int, default=1, help="recipes built in parallel")
    run.add_argument("-q", "--quiet", action="store_true", help="don't stream the build log")
    run.add_argument("--refresh", action="store_true",
                     help="first resolve each recipe afresh and rewrite its lock (as `buildbox lock` does)")
    remote_flags(run)
    run.add_argument("--push", action="store_true", help="push what this run builds to the remote cache")
    run.add_argument("--push-required", action="store_true",
                     help="as --push, and exit 1 if a push does not land")
    common(run)


def main(args: argparse.Namespace) -> int:
    from buildbox.build import secrets
    from buildbox.records import MANIFEST, Manifest
    from buildbox.store import Store
    from buildbox.tasks import Graph

    if args.jobs < 1:
        raise InputError(f"-j {args.jobs}: the number of jobs must be at least 1")
    recipes = load(args.recipes, locked=not args.refresh)
    for recipe in recipes:
        secrets(recipe)   # an unset secret is bad input, said before anything runs
    remote = open_remote(args, push=args.push or args.push_required)
    need_root()
    log.quiet = args.quiet
    stop_on_signals()
    if args.refresh:
        recipes = relock(Store(args.cache), recipes)
    graph = Graph(Store(args.cache), recipes, args.out, keep=args.keep, stream=not args.quiet, remote=remote)
    graph.run(args.jobs)
    for recipe in recipes:
        out = graph.out_dir(recipe)
        manifest = Manifest.read(out / MANIFEST)
        assert manifest is not None, f"{out} has no manifest after its out stage"
        for rel, fact in manifest.artifacts.items():
            print(f"{fact.sha256}  {log.escaped(str(out / rel))}")   # one line per artifact, whatever its name
    if args.push_required and remote and remote.failures:
        log.error(BuildFailed(f"{len(remote.failures)} push(es) did not land (--push-required)"))
        return 1
    return 0
