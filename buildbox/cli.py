"""The buildbox command: arguments in, exit status out (0 built, 1 a build or verification
failed, 2 bad input or usage, 130 interrupted). Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from buildbox import __version__, log
from buildbox.errors import BuildboxError, InputError, os_failure


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit status 2 is ours too
        self.exit(2, f"buildbox: error: {message}; see `buildbox --help`\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="buildbox", description="Reproducible builds in chroot sandboxes.")
    top.add_argument("--version", action="version", version=f"buildbox {__version__}")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache", type=_cache_path, default=None,
                       help="the cache directory (default: $BUILDBOX_CACHE or ./cache)")
        p.add_argument("--debug", action="store_true", help="show tracebacks")

    run = commands.add_parser("run", help="build recipes and put their artifacts in out/NAME/")
    run.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE")
    run.add_argument("--out", type=Path, default=Path("out"), help="where artifacts go (default: ./out)")
    run.add_argument("--keep", action="store_true", help="leave the build box for inspection")
    run.add_argument("-j", "--jobs", type=int, default=1, help="recipes built in parallel")
    run.add_argument("-q", "--quiet", action="store_true", help="don't stream the build log")
    run.add_argument("--refresh", action="store_true",
                     help="first resolve each recipe afresh and rewrite its lock (as `buildbox lock` does)")
    common(run)

    locker = commands.add_parser("lock", help="resolve recipes afresh and pin them in recipes/NAME.lock")
    locker.add_argument("recipes", nargs="+", type=Path, metavar="RECIPE")
    common(locker)

    lister = commands.add_parser("list", help="show recipes and whether each is up to date")
    lister.add_argument("recipes", nargs="*", type=Path, metavar="RECIPE",
                        help="recipe files (default: recipes/*.toml)")
    lister.add_argument("--out", type=Path, default=Path("out"))
    lister.add_argument("--keys", action="store_true", help="print every stage's key: STAGE NAME KEY")
    common(lister)

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

    verify = commands.add_parser("verify", help="build twice under varied conditions and compare")
    verify.add_argument("recipe", type=Path, metavar="RECIPE")
    verify.add_argument("--against", type=Path, metavar="MANIFEST",
                        help="compare one fresh build with this manifest (e.g. the nightly's)")
    common(verify)

    shell = commands.add_parser("shell", help="a shell in a clone of the recipe's prepared box")
    shell.add_argument("recipe", type=Path, metavar="RECIPE")
    shell.add_argument("--root", action="store_true", help="as root instead of the build user")
    shell.add_argument("--keep", action="store_true", help="leave the box when the shell exits")
    shell.add_argument("--failed", action="store_true",
                       help="enter the box of the recipe's last failed build, as the build left it")
    common(shell)
    return top


def _cache_path(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError("--cache is empty: name the cache directory")
    return Path(text)


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
        command = {"run": cmd_run, "lock": cmd_lock, "list": cmd_list, "gc": cmd_gc, "clean": cmd_clean,
                   "shell": cmd_shell, "verify": cmd_verify, "fsck": cmd_fsck}[args.command]
        return command(args)
    except BuildboxError as err:
        if args.debug:
            traceback.print_exc()
        log.error(err)
        return err.exit_code
    except OSError as err:
        if args.debug:
            traceback.print_exc()
        failure = os_failure(err, getattr(args, "cache", None))
        log.error(failure)
        return failure.exit_code
    except KeyboardInterrupt:
        log.say("buildbox: interrupted")
        return 130


def _load(paths: list[Path], *, locked: bool = True):
    from buildbox.lock import load_recipe
    recipes = [load_recipe(p, locked=locked) for p in paths]
    names: dict[str, Path] = {}
    for recipe in recipes:
        if recipe.name in names:
            raise InputError(f"two recipes are named '{recipe.name}' ({names[recipe.name]} and {recipe.path})",
                             where=str(recipe.path), hint="give one of them another name = \"...\"")
        names[recipe.name] = recipe.path
    return recipes


def cmd_run(args: argparse.Namespace) -> int:
    from buildbox.store import Store
    from buildbox.tasks import Planner

    if args.jobs < 1:
        raise InputError(f"-j {args.jobs}: the number of jobs must be at least 1")
    recipes = _load(args.recipes, locked=not args.refresh)
    from buildbox.build import secrets
    for recipe in recipes:
        secrets(recipe)   # an unset secret is bad input, said before anything runs
    _need_root()
    log.quiet = args.quiet
    _stop_on_signals()
    if args.refresh:
        recipes = _relock(Store(args.cache), recipes)
    planner = Planner(Store(args.cache), recipes, args.out, keep=args.keep, stream=not args.quiet)
    planner.run(args.jobs)
    for recipe in recipes:
        out = planner.out_dir(recipe)
        manifest = json.loads((out / "manifest.json").read_text())
        for rel, fact in manifest["artifacts"].items():
            print(f"{fact['sha256']}  {log.escaped(str(out / rel))}")   # one line per artifact, whatever its name
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    from buildbox.store import Store
    recipes = _load(args.recipes, locked=False)
    _need_root()
    log.quiet = True
    _stop_on_signals()
    _relock(Store(args.cache), recipes)
    return 0


def _relock(store, recipes: list) -> list:
    """Lock each recipe afresh, say what changed, and return the recipes read again, locked."""
    from buildbox.lock import describe_source, load_recipe
    from buildbox.tasks import relock
    for path, pins, changed in relock(store, recipes):
        if changed is None:
            print(f"lock: wrote {log.escaped(str(path))}: {len(pins['sets'])} set(s), {len(pins['packages'])} "
                  f"packages, source {log.escaped(describe_source(pins['source']))}")
        else:
            print(f"lock: {log.escaped(str(path))}: {len(changed) or 'nothing'} changed")
            for line in changed:
                print(f"  {log.escaped(line)}")
    return [load_recipe(r.path) for r in recipes]


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM stop the running commands and let every box unwind its mounts; a
    second Ctrl-C is final."""
    from buildbox import process

    def on_signal(signum: int, frame: object) -> None:
        log.say(f"buildbox: {signal.Signals(signum).name}: stopping the running stage")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        process.interrupt()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def cmd_list(args: argparse.Namespace) -> int:
    """Read-only and offline: no mount, no network, no lock; an unlocked ref is taken at the
    commit the last run resolved it to, and said so."""
    import time
    from buildbox.out import is_current
    from buildbox.recipe import GitSource, find_recipes
    from buildbox.store import KINDS, Store, tree_size
    from buildbox.tasks import Planner

    paths = args.recipes or find_recipes(Path("recipes"))
    recipes = _load(paths)
    planner = Planner(Store(args.cache, read_only=True), recipes, args.out, offline=True)
    if args.keys:
        for recipe in recipes:
            for stage, key in planner.stage_keys(recipe):
                print(f"{stage} {recipe.name} {key or '(not resolved yet)'}")
        return 0
    for recipe in recipes:
        size, why = "", None
        try:
            key = planner.build_key(recipe)
            if is_current(planner.out_dir(recipe), key, planner.stamps(recipe)):
                state = "up to date"
            elif planner.store.has("builds", key):
                state = "built (in the cache, not in out/)"
            else:
                state, why = "needs a build", planner.stale(recipe)
            if planner.store.has("builds", key):
                size = _human(tree_size(planner.store.entry("builds", key)))
        except BuildboxError:
            state, why = "needs a build (not resolved yet)", planner.stale(recipe)
        locked = f" (locked: {recipe.lock.path.name})" if recipe.lock else ""
        print(f"{recipe.name:24} {state:36} {size:>9}  {log.escaped(str(recipe.path))}{locked}")
        last = planner.store.last_run(recipe.name).get("git", {})
        if isinstance(recipe.source, GitSource) and not recipe.lock and last.get("ref") == recipe.source.ref:
            age = time.time() - last["when"]
            ago = f"{age / 60:.0f} min" if age < 7200 else f"{age / 3600:.0f} h"
            print(f"    ref {log.escaped(recipe.source.ref)} taken at {last['commit'][:12]}, as resolved {ago} ago: "
                  "it may have moved since (`buildbox run` resolves it again; a lock pins it)")
        if why:
            print(f"    why: {log.escaped(why)}")
    if planner.store.root.is_dir():
        sizes = {kind: tree_size(planner.store.root / kind) for kind in (*KINDS, "debs")}
        print("cache: " + ", ".join(f"{kind} {_human(size)}" for kind, size in sizes.items() if size)
              + f"; {_human(sum(sizes.values()))} in all")
    return 0


def _human(size: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return ""


def cmd_gc(args: argparse.Namespace) -> int:
    from buildbox.gc import gc
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
    _need_root()
    removed = gc(Store(args.cache), max_size=limits.get("--max-size"), older_than=limits.get("--older-than"))
    for entry in removed:
        print(f"removed {entry.kind}/{entry.path.name} ({_human(entry.size)})")
    print(f"gc: removed {len(removed)} entries, {_human(sum(e.size for e in removed))}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    """Exit 0 when every entry is as recorded (or the damaged ones were removed), 1 otherwise."""
    from buildbox.gc import fsck
    from buildbox.store import Store
    _need_root()
    checked, problems = fsck(Store(args.cache), repair=args.repair)
    for entry, problem, damaged in problems:
        removed = " (removed)" if damaged and args.repair else ""
        print(f"{'damaged' if damaged else 'unchecked'}: {entry.kind}/{entry.path.name}: {problem}{removed}")
    damaged = sum(1 for _, _, d in problems if d)
    print(f"fsck: {checked} entries checked, {damaged} damaged{' and removed' if damaged and args.repair else ''}, "
          f"{len(problems) - damaged} without a record")
    return 1 if damaged and not args.repair else 0


def cmd_clean(args: argparse.Namespace) -> int:
    from buildbox.gc import clean
    from buildbox.store import Store
    _need_root()
    clean(Store(args.cache))
    print(f"clean: {args.cache} holds only the downloaded sets now")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 only when every artifact is identical."""
    from buildbox.store import Store
    from buildbox.tasks import Planner
    from buildbox.verify import compare

    [recipe] = _load([args.recipe])
    if args.against:
        from buildbox.out import is_manifest
        if not args.against.is_file():
            raise InputError(f"--against {args.against}: no such manifest", hint="give the path of a manifest.json")
        if not is_manifest(args.against):
            raise InputError(f"--against {args.against}: not a buildbox manifest",
                             hint="give the manifest.json of a build's out/NAME/")
    _need_root()
    log.quiet = True
    differences = compare(recipe, Planner(Store(args.cache), [recipe], Path("out"), stream=False), args.against)
    if differences:
        for line in differences:
            print(log.printable(f"differs: {line}"))
        print(f"verify: {recipe.name} is not reproducible: {len(differences)} artifact(s) differ")
        return 1
    print(f"verify: {recipe.name} is reproducible: every artifact identical across the builds")
    return 0


def cmd_shell(args: argparse.Namespace) -> int:
    """Packages installed and source in place, as for the build (or as a failed build left
    them, with --failed); the shell's exit is ours."""
    from buildbox.constants import BUILDER, FETCH, SRC
    from buildbox.box import Box
    from buildbox.build import build_env
    from buildbox.store import Store
    from buildbox.tasks import Planner

    [recipe] = _load([args.recipe])
    _need_root()
    log.quiet = True
    planner = Planner(Store(args.cache), [recipe], Path("out"), stream=False)
    if args.failed:
        layers = _failed_layers(planner.store, recipe)
    else:
        planner.run(stage=planner.last_stage_before_build(recipe))
        layers = planner.build_layers(recipe)
    env = build_env(recipe)
    env.update({"PS1": f"{recipe.name}:\\w \\$ ", "TERM": os.environ.get("TERM", "xterm")})
    if args.root:
        env.update({"HOME": "/root", "USER": "root", "LOGNAME": "root",
                    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    # Ctrl-C belongs to the shell inside, not to buildbox.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with Box(planner.store, layers, label=f"shell-{recipe.name}", keep=args.keep) as box:
        fetched = planner.fetched_tree(recipe)
        if fetched:
            box.bind(fetched, FETCH)
        status = box.run(["bash", "--norc", "--noprofile", "-i"], what=f"a shell in {recipe.name}",
                         user=None if args.root else BUILDER.spec, env=env,
                         cwd=SRC if args.failed else env["HOME"], network=recipe.network, outbound=recipe.network,
                         limits=recipe.limits.rlimits(), interactive=True)
    return int(status)   # the shell's own exit status, as `ssh` and `machinectl shell` give it


def _failed_layers(store, recipe) -> list[Path]:
    """The layers of the box the recipe's last failed build left: its changes over its lower layers."""
    import time
    from buildbox.build import failed_box
    saved = failed_box(store, recipe.name)
    try:
        info = json.loads((saved / "failed.json").read_text())
    except (OSError, ValueError):
        raise InputError(f"{recipe.name} has no failed build in {store.root}", where=str(recipe.path),
                         hint="a build that fails leaves its box for --failed; without it, "
                         f"`buildbox shell {recipe.path}` opens a fresh one") from None
    # The failed build's changes: its upper layer, or the disk image that holds it.
    layers = [Path(info.get("top", saved / "upper")), *map(Path, info["layers"])]
    if not all(layer.exists() for layer in layers):
        raise InputError(f"the layers under {recipe.name}'s failed box are gone (gc or clean removed them)",
                         where=str(recipe.path), hint=f"run `buildbox run {recipe.path}` again")
    minutes = (time.time() - info["when"]) / 60
    log.say(f"buildbox: the box of {recipe.name}'s build that failed {minutes:.0f} min ago; "
            f"the build log is {store.root / 'logs' / recipe.name / 'build.log'}")
    return layers


def _need_root() -> None:
    if os.geteuid() != 0:
        raise InputError("this needs root: the cache holds root-owned trees and mounts",
                         hint="run it as root")


def entry_point() -> None:
    sys.exit(main())
