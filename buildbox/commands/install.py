"""`buildbox install`: put a recipe's build in a new generation of its runtime root and make it
current (or, with --rollback, make the one before current again)."""

from __future__ import annotations

import argparse
from pathlib import Path

from buildbox import log
from buildbox.commands.common import load, need_root, open_remote, remote_flags, stop_on_signals
from buildbox.errors import BuildFailed, InputError


def add(commands, common) -> None:
    install = commands.add_parser("install", help="put a recipe's build in its runtime root, a new generation")
    install.add_argument("recipe", type=Path, metavar="RECIPE")
    install.add_argument("--root", type=Path, metavar="DIR",
                         help="the runtime root (default: /var/lib/buildbox/roots/NAME)")
    install.add_argument("--rollback", action="store_true",
                         help="make the generation before the current one current again; build nothing")
    install.add_argument("--unit", action="store_true",
                         help="write /etc/systemd/system/buildbox-NAME.service for the root")
    install.add_argument("--restart", action="store_true", help="restart that unit once the new generation is current")
    install.add_argument("-q", "--quiet", action="store_true", help="don't stream the build log")
    remote_flags(install)
    common(install)


def main(args: argparse.Namespace) -> int:
    from buildbox.roots import RuntimeRoot
    from buildbox.unit import systemd_running, unit_name, write_unit

    [recipe] = load([args.recipe])
    remote = open_remote(args, use=not args.rollback)
    need_root()
    root = RuntimeRoot.choose(args.root, recipe, args.cache, create=not args.rollback)
    if args.restart and not systemd_running():
        raise InputError("--restart restarts a systemd unit, and systemd is not running here (PID 1 is not systemd)",
                         hint="restart the service as this host starts it (rc, runit), or leave out --restart")
    log.quiet = args.quiet
    stop_on_signals()
    with root.locked():
        if args.rollback:
            number = root.previous()
            root.go_live(number)
            print(f"install: {recipe.name}: generation {number} is current again ({root.generation(number)})")
        else:
            entry = built(args, recipe, remote)
            number = root.make_generation(entry)
            was = root.current()
            for command in recipe.service.check:
                log.note(f"install: check: {command}")
                try:
                    root.run(number, check_words(recipe, command), foreground=False, timeout=recipe.verify_timeout)
                except BaseException as err:   # Ctrl-C too: an unchecked generation never stays
                    from buildbox.store import remove_tree
                    remove_tree(root.generation(number))
                    if not isinstance(err, BuildFailed):
                        raise
                    stays = f"generation {was} stays current" if was else "no generation is current"
                    raise BuildFailed(f"the check `{command}` failed in the new generation of {recipe.name}: "
                                      f"{err.message}; {stays}", where=recipe.service.at(recipe.path, "check"),
                                      tail=err.tail) from None
            root.go_live(number)
            gone = root.prune(was)
            print(f"install: {recipe.name}: generation {number} is current ({root.generation(number)})"
                  + (f"; removed generation {', '.join(map(str, gone))}" if gone else ""))
    if args.unit:
        print(f"install: wrote {write_unit(root)}")
    if args.restart:
        from buildbox.process import run
        run(["systemctl", "restart", unit_name(recipe.name)], what=f"restarting {unit_name(recipe.name)}")
        print(f"install: restarted {unit_name(recipe.name)}")
    return 0


def check_words(recipe, command: str) -> list[str]:
    """A check command as an argv: the root has no shell, so it is split into words as a shell would."""
    import shlex
    try:
        words = shlex.split(command)
    except ValueError as err:
        raise InputError(f"the check `{command}` cannot be split into words ({err})",
                         where=recipe.service.at(recipe.path, "check"), hint="close its quotes") from None
    return words


def built(args: argparse.Namespace, recipe, remote) -> Path:
    """The recipe's build entry, built (or taken from the remote cache) if need be, with its
    runtime closure: an entry made before buildbox kept closures is built again, saying so."""
    from buildbox import layers
    from buildbox.records import MANIFEST
    from buildbox.store import Store
    from buildbox.tasks import Graph
    import json

    store = Store(args.cache)
    for attempt in (1, 2):
        graph = Graph(store, [recipe], Path("out"), stream=not args.quiet, remote=remote)
        graph.run(stage="build")
        stage = graph.stages(recipe)["build"]
        entry = layers.entry(store, stage)
        if "runtime" in json.loads((entry / MANIFEST).read_text()):
            return entry
        log.say(f"install {recipe.name}: the cached build {stage.key[:12]} was made before builds kept their "   # type: ignore[index]
                "runtime closure: building it again")
        store.remove_entry(stage.kind, stage.key)   # type: ignore[arg-type]
    raise BuildFailed(f"the build of {recipe.name} has no runtime closure")
