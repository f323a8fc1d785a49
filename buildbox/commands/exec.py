"""`buildbox exec`: run a recipe's service (or a command) in the current generation of its
runtime root, in the foreground; the exit status is the service's."""

from __future__ import annotations

import argparse
from pathlib import Path

from buildbox.commands.common import load, need_root
from buildbox.errors import InputError


def add(commands, common) -> None:
    run = commands.add_parser("exec", help="run a recipe's service in its runtime root, in the foreground")
    run.add_argument("recipe", type=Path, metavar="RECIPE")
    run.add_argument("--root", type=Path, metavar="DIR",
                     help="the runtime root (default: /var/lib/buildbox/roots/NAME)")
    run.set_defaults(argv=[])   # what follows `--` (cli.py): run that instead of [install] exec
    run.epilog = "buildbox exec RECIPE -- CMD ARG...: run CMD in the root instead of [install] exec"
    common(run)


def main(args: argparse.Namespace) -> int:
    from buildbox.roots import RuntimeRoot

    [recipe] = load([args.recipe])
    root = RuntimeRoot.choose(args.root, recipe, args.cache, create=False)
    need_root()
    command = args.argv   # what follows `--`: argparse takes the options before it
    number = root.current()
    if number is None:
        raise InputError(f"{root.path} has no current generation", hint=f"run `buildbox install {recipe.path}` first")
    status = root.run(number, command or list(recipe.service.exec), foreground=True)
    assert isinstance(status, int)
    return status
