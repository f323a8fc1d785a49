"""`buildbox lock`: resolve recipes afresh and pin them in recipes/NAME.lock."""

from __future__ import annotations

import argparse
from pathlib import Path

from buildbox import log
from buildbox.commands.common import load, need_root, relock, stop_on_signals


def add(commands, common) -> None:
    locker = commands.add_parser("lock", help="resolve recipes afresh and pin them in recipes/NAME.lock")
    locker.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE")
    common(locker)


def main(args: argparse.Namespace) -> int:
    from buildbox.store import Store
    recipes = load(args.recipes, locked=False)
    need_root()
    log.quiet = True
    stop_on_signals()
    relock(Store(args.cache), recipes)
    return 0
