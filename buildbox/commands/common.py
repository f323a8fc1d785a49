"""What the commands share: loading recipes, the root check, the signal handlers, sizes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from buildbox import log
from buildbox.errors import InputError
from buildbox.recipe import Recipe


def load(paths: list[Path], *, locked: bool = True) -> list[Recipe]:
    """The recipes at paths (with their locks, unless not `locked`), no two of one name."""
    from buildbox.lock import load_recipe
    recipes = [load_recipe(p, locked=locked) for p in paths]
    names: dict[str, Path] = {}
    for recipe in recipes:
        if recipe.name in names:
            raise InputError(f"two recipes are named '{recipe.name}' ({names[recipe.name]} and {recipe.path})",
                             where=str(recipe.path), hint="give one of them another name = \"...\"")
        names[recipe.name] = recipe.path
    return recipes


def need_root() -> None:
    if os.geteuid() != 0:
        raise InputError("this needs root: the cache holds root-owned trees and mounts",
                         hint="run it as root")


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the running commands and let every box unwind its mounts; a
    second Ctrl-C is final."""
    from buildbox import process

    def on_signal(signum: int, frame: object) -> None:
        log.say(f"buildbox: {signal.Signals(signum).name}: stopping the running stage")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        process.interrupt()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def relock(store, recipes: list[Recipe]) -> list[Recipe]:
    """Lock each recipe afresh, say what changed, and return the recipes read again, locked."""
    from buildbox.lock import load_recipe
    from buildbox.relock import relock as lock_afresh
    for path, pins, changed in lock_afresh(store, recipes):
        if changed is None:
            print(f"lock: wrote {log.escaped(str(path))}: {len(pins.sets)} set(s), {len(pins.packages)} "
                  f"packages, source {log.escaped(pins.source.describe())}")
        else:
            print(f"lock: {log.escaped(str(path))}: {len(changed) or 'nothing'} changed")
            for line in changed:
                print(f"  {log.escaped(line)}")
    return [load_recipe(r.path) for r in recipes]


def human(size: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return ""


def config_flag(parser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="the settings file (default: $BUILDBOX_CONFIG, else ./buildbox.toml if there)")


def remote_flags(parser, *, listing: bool = False) -> None:
    """--remote URL and --no-remote; for `list`, --remote alone asks the configured remote."""
    config_flag(parser)
    if listing:
        parser.add_argument("--remote", nargs="?", const="", default=None, metavar="URL",
                            help="also ask the remote cache (the configured one, or URL) what it has")
    else:
        parser.add_argument("--remote", metavar="URL", help="the remote cache (overrides buildbox.toml)")
    parser.add_argument("--no-remote", action="store_true", help="use no remote cache")


def open_remote(args, *, push: bool = False, use: bool = True):
    """The remote cache the command uses (None without one, or if not `use`), from buildbox.toml
    (read and checked in any case) and the flags."""
    from buildbox import config
    settings = config.load(args.config)
    if not use:
        return None
    found = config.remote(settings, url=args.remote or None, off=args.no_remote, push=push)
    if found is None:
        return None
    from buildbox.remote import RemoteCache
    return RemoteCache(found)
