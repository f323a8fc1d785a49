"""`buildbox lock`: resolve recipes afresh and pin them in recipes/NAME.lock."""

from __future__ import annotations

import argparse
from pathlib import Path

from buildbox import log
from buildbox.commands.common import config_flag, load, need_root, relock, stop_on_signals


def add(commands, common) -> None:
    locker = commands.add_parser("lock", help="resolve recipes afresh and pin them in recipes/NAME.lock")
    locker.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE")
    config_flag(locker)
    common(locker)


def main(args: argparse.Namespace) -> int:
    from buildbox import config
    from buildbox.store import Store
    config.load(args.config)   # checked, as by every command that reads it
    recipes = load(args.recipes, locked=False)
    need_root()
    log.quiet = True
    stop_on_signals()
    relock(Store(args.cache), recipes)
    return 0
