"""The cache's upkeep commands: `buildbox gc`, `clean` and `fsck`."""

from __future__ import annotations

import argparse

from buildbox.commands.common import human, need_root
from buildbox.errors import InputError

COMMANDS = ("gc", "clean", "fsck")


def add(commands, common) -> None:
    collector = commands.add_parser("gc", help="remove unreferenced and old cache entries")
    collector.add_argument("--max-size", metavar="SIZE", help="then remove the least recently used until "
                           "the cache fits, e.g. 20G")
    collector.add_argument("--older-than", metavar="AGE", help="also remove entries unused for AGE, e.g. 30d")
    common(collector)
    cleaner = commands.add_parser("clean", help="remove everything but downloaded sets")
    common(cleaner)
    checker = commands.add_parser("fsck", help="check every cache entry's content against its record")
    checker.add_argument("--repair", action="store_true", help="remove the entries whose content changed")
    common(checker)


def main(args: argparse.Namespace) -> int:
    return {"gc": gc, "clean": clean, "fsck": fsck}[args.command](args)


def gc(args: argparse.Namespace) -> int:
    from buildbox.gc import gc as collect
    from buildbox.recipe import parse_amount
    from buildbox.store import Store

    limits = {}
    for flag, value, kind in (("--max-size", args.max_size, "size"), ("--older-than", args.older_than, "time")):
        if value is not None:
            amount = parse_amount(value, kind)
            if amount is None:
                raise InputError(f"{flag} {value}: not a {kind}",
                                 hint="write e.g. 20G" if kind == "size" else "write e.g. 30d or 12h")
            limits[flag] = amount
    need_root()
    removed = collect(Store(args.cache), max_size=limits.get("--max-size"), older_than=limits.get("--older-than"))
    for entry in removed:
        print(f"removed {entry.kind}/{entry.path.name} ({human(entry.size)})")
    print(f"gc: removed {len(removed)} entries, {human(sum(e.size for e in removed))}")
    return 0


def fsck(args: argparse.Namespace) -> int:
    """Exit 0 when every entry is as recorded (or the damaged ones were removed), 1 otherwise."""
    from buildbox.gc import fsck as check
    from buildbox.store import Store
    need_root()
    checked, problems = check(Store(args.cache), repair=args.repair)
    for entry, problem, damaged in problems:
        removed = " (removed)" if damaged and args.repair else ""
        print(f"{'damaged' if damaged else 'unchecked'}: {entry.kind}/{entry.path.name}: {problem}{removed}")
    damaged = sum(1 for _, _, d in problems if d)
    print(f"fsck: {checked} entries checked, {damaged} damaged{' and removed' if damaged and args.repair else ''}, "
          f"{len(problems) - damaged} without a record")
    return 1 if damaged and not args.repair else 0


def clean(args: argparse.Namespace) -> int:
    from buildbox.gc import clean as remove
    from buildbox.store import Store
    need_root()
    remove(Store(args.cache))
    print(f"clean: {args.cache} holds only the downloaded sets now")
    return 0
