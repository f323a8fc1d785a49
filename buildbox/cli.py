"""The buildbox command: arguments in, exit status out (0 built, 1 a build or verification
failed, 2 bad input or usage, 70 an internal error, 130 interrupted). The parser and the one map
from errors to exit statuses live here; each command is a module of buildbox.commands."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from buildbox import __version__, log
from buildbox.commands import COMMANDS
from buildbox.errors import InputError, failure_of

# The module of each command (gc, clean and fsck share the cache's upkeep module).
MODULES = {name: "cache" if name in ("gc", "clean", "fsck") else name for name in COMMANDS}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit status 2 is ours too
        self.exit(2, f"buildbox: error: {message}; see `buildbox --help`\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """As argparse's, but what it does not know is named alone: `verify --bogus DIR R` is
        the option --bogus, not "--bogus R" with the recipe lumped in."""
        words = list(sys.argv[1:] if args is None else args)
        # What follows `--` is a command line of its own (`buildbox exec RECIPE -- CMD ...`),
        # for a command that takes one; nothing of it is parsed here.
        after = words[words.index("--") + 1:] if "--" in words else None
        parsed, extras = self.parse_known_args(words[:words.index("--")] if after is not None else words, namespace)
        if after is not None:
            if not hasattr(parsed, "argv"):
                self.error(f"unexpected argument {log.escaped(' '.join(['--', *after]))}")
            parsed.argv = after
        if extras:
            options = [word for word in extras if word.startswith("-") and word != "-"]
            command = getattr(parsed, "command", None)
            if options:
                self.exit(2, f"buildbox: error: {command + ': ' if command else ''}unknown option "
                             f"{log.escaped(options[0])}; see `buildbox {command + ' ' if command else ''}--help`\n")
            self.error(f"unexpected argument {log.escaped(extras[0])}")
        return parsed


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"buildbox.commands.{MODULES[name]}")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="buildbox", description="Reproducible builds in chroot sandboxes.")
    top.add_argument("--version", action="version", version=f"buildbox {__version__}")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache", type=_cache_path, default=None,
                       help="the cache directory (default: $BUILDBOX_CACHE or ./cache)")
        p.add_argument("--debug", action="store_true", help="show tracebacks and each box's plan")

    for module in dict.fromkeys(MODULES.values()):
        command_module(next(n for n, m in MODULES.items() if m == module)).add(commands, common)
    return top


def _cache_path(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("--cache is empty: name the cache directory")
    return Path(text)


def exit_status(err: BaseException, place: object = None, *, debug: bool = False) -> int:
    """The one map from a failure to what the user is told and the exit status: said on one
    line (a traceback only with --debug); used by the command, by dodo.py and by the graph."""
    failure = failure_of(err, place)   # type: ignore[arg-type]
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__)
    log.error(failure)
    return failure.exit_code


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log.debugging = args.debug
    try:
        if getattr(args, "cache", False) is None:
            from buildbox.store import default_cache
            args.cache = default_cache(Path("cache"))
        for flag in ("cache", "out"):
            place = getattr(args, flag, None)
            if place is not None and (place.is_symlink() or place.exists()) and not place.is_dir():
                raise InputError(f"--{flag} {place} is not a directory", hint=f"remove it or pick another --{flag}")
        return command_module(args.command).main(args)
    except KeyboardInterrupt:
        log.say("buildbox: interrupted")
        return 130
    except Exception as err:
        return exit_status(err, getattr(args, "cache", None), debug=args.debug)


def entry_point() -> None:
    sys.exit(main())
