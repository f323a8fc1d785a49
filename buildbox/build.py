"""The build: the recipe's script as the build user, the checks on what it left in $OUT, and the
artifacts copied out of the box (resolved inside it) into the cache and on to out/NAME/."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildbox import __version__, log, process
from buildbox.base import renumber_user
from buildbox.constants import BUILDER, EPOCH, FETCH, FETCH_ENV, OFFLINE_ENV, OUT, SRC, BuildUser
from buildbox.box import NAMESPACES, Box, resolve_in_root, run_on_host
from buildbox.epoch import of_build as source_epoch
from buildbox.cgroup import Cgroup
from buildbox.errors import BuildFailed, InputError
from buildbox.context import Context
from buildbox.records import MANIFEST, Manifest
from buildbox.recipe import Limits, Recipe
from buildbox.store import Store, copy_sparse, file_sha256, remove_tree

if TYPE_CHECKING:
    from buildbox.elf import ElfInfo

MAX_DEPTH = 32
MAX_ENTRIES = 10_000
SCRIPT = "/buildbox/build.sh"
# The verify commands' uid: no account, no process of the host's (nobody is many daemons' user).
VERIFY_UID = 0x7FFFFFFE


def build_env(recipe: Recipe, user: BuildUser = BUILDER, epoch: str | int = EPOCH) -> dict[str, str]:
    """The whole environment of a build: fixed, clean, the same on every host, and the recipe's
    secret-env taken from buildbox's own environment; with a [fetch], where the fetched tree is
    and the settings that keep the tools to it. `epoch` is the source's (epoch.of_build)."""
    env = user.login_env()
    env.update({"SOURCE_DATE_EPOCH": str(epoch), "OUT": OUT})
    env.update(dict(recipe.env))
    env.update(secrets(recipe))
    if recipe.fetch:
        env.update({**fetch_env(), **offline_env(env)})
    return env


def say_epoch(epoch: str, why: str, logfile: Path) -> None:
    """Say the build's SOURCE_DATE_EPOCH and why, on the terminal and in the log."""
    line = f"SOURCE_DATE_EPOCH={epoch}: {why}"
    log.note(line)
    with open(logfile, "a") as f:
        f.write(f"buildbox: {line}\n")


def fetch_env() -> dict[str, str]:
    """Where the common tools keep what they download, all under $FETCH (the fetch and the build)."""
    return dict(FETCH_ENV)


def offline_env(env: dict[str, str]) -> dict[str, str]:
    """What makes the tools use only what was fetched, and the recipe's GOFLAGS with -mod=mod."""
    return {**OFFLINE_ENV, "GOFLAGS": " ".join(filter(None, [env.get("GOFLAGS"), "-mod=mod"]))}


def secrets(recipe: Recipe) -> dict[str, str]:
    """The values of the recipe's secret-env, from the invoking environment; one unset is bad input.
    From then on they are *** in every command's log and output (process.mask)."""
    missing = [name for name in recipe.secret_env if name not in os.environ]
    if missing:
        raise InputError(f"secret-env names {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         "not set in buildbox's environment", where=recipe.at("script"),
                         hint=f"export {missing[0]}=... before running buildbox")
    values = {name: os.environ[name] for name in recipe.secret_env}
    process.mask(values.values())
    return values


def make(ctx: Context, recipe: Recipe, layers: list[Path], entry: Path, inputs: dict[str, Any], why: str = "",
         *, fetched: Path | None = None) -> None:
    """The build stage: the recipe's script over layers (its fetched tree at $FETCH), its
    artifacts and manifest in entry/."""
    with log.step(f"Building {recipe.name}"):
        make_build(ctx.store, recipe, layers, entry, inputs, ctx.logfile(recipe.name, "build", why),
                   stream=ctx.stream, keep=ctx.keep, fetched=fetched)


def make_build(store: Store, recipe: Recipe, layers: list[Path], entry: Path, inputs: dict[str, Any],
               logfile: Path, *, stream: bool, keep: bool, user: BuildUser = BUILDER,
               vary: Callable[[Box, dict[str, str]], dict[str, str]] | None = None, fetched: Path | None = None) -> None:
    """Build in a fresh box, check the artifacts, and fill entry/ with them and their manifest.
    `user` is the build user as the base has it, or the same user under another uid, and `vary`
    changes the box and the build's environment before the build (both for verify)."""
    files = entry / "files"
    files.mkdir()
    started = _now()
    network = ("network: on for the build ([build] network = true)" if recipe.network
               else "network: off for the build (loopback only)")
    log.note(network)
    with open(logfile, "a") as f:
        f.write(f"buildbox: {network}\n")
    with Box(store, layers, label=f"build-{recipe.name}", keep=keep, log=logfile,
             save_failed=failed_box(store, recipe.name), disk=recipe.limits.disk,
             rerun=f"buildbox shell --failed {recipe.path}") as box:
        if recipe.network:
            box.bind(Path("/etc/resolv.conf").resolve(), "/etc/resolv.conf")
        if fetched:
            box.bind(fetched, FETCH)   # read-only: the build uses what was fetched, and changes none of it
        if user != BUILDER:
            box.as_root(lambda root: renumber_user(root, BUILDER, user))
        log.note(f"build log: {logfile}")
        limits = recipe.limits
        epoch, why = source_epoch(box, recipe, user)
        say_epoch(epoch, why, logfile)
        env = build_env(recipe, user, epoch)
        if vary:
            env = vary(box, env)
        # The script handed over as a file in the box, read-only to the build: no quoting of user
        # code, and nothing of it on a command line, where every host user could read it.
        box.write(SCRIPT, recipe.script)
        with whole_box_limits(recipe, logfile) as (group, rlimits):
            try:
                box.run(["sh", "-e", "-c", f". {SCRIPT}", recipe.name], what=f"the build of {recipe.name}",
                        user=user.spec, env=env, cwd=SRC, log=logfile, stream=stream,
                        network=recipe.network, outbound=recipe.network, limits=rlimits, timeout=limits.timeout,
                        silence=limits.silence, log_limit=limits.log, cgroups=group.procs if group else [])
            except BuildFailed as err:
                failure = name_the_limit(err, recipe, group.hit() if group else None)
                failure.hint = "; ".join(filter(None, [failure.hint, f"`buildbox shell --failed {recipe.path}` "
                                                                     "opens a shell in the box where it failed"]))
                raise failure from None
        artifacts = collect(box.root, OUT)
        if not artifacts:
            raise BuildFailed(f"the build of {recipe.name} left $OUT ({OUT}) empty", where=recipe.at("script"),
                             hint="copy what the build makes into \"$OUT/\" at the end of the script")
        total = sum(source.stat().st_size for source in artifacts.values())
        if total > limits.artifacts:
            raise BuildFailed(f"the artifacts of {recipe.name} come to {total} bytes, past their limit "
                              f"([limits] artifacts = {limits.artifacts})",
                              hint=f"raise [limits] artifacts in {recipe.path} if they are meant to be that big")
        for rel, source in artifacts.items():
            dest = files / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            copy_sparse(source, dest)
            # Executable or not; and what the box kept from other users stays kept from them.
            mode = source.stat().st_mode
            os.chmod(dest, (0o755 if mode & 0o111 else 0o644) & (mode | 0o700))
            os.utime(dest, (EPOCH, EPOCH))
        check_in_box(box, artifacts, user)
        from buildbox import runtime   # pyelftools: imported by a build, not by every start-up
        closure = runtime.collect(box.root, artifacts, entry / runtime.RUNTIME, OUT)
    facts = verify_on_host(recipe, files)
    run_verify_commands(store, recipe, files, logfile)
    digests = {rel: file_sha256(files / rel) for rel in sorted(artifacts)}
    manifest = {
        "recipe": recipe.name,
        # Close to SLSA provenance: what was made (subject), from what (materials), by what, when.
        "provenance": {
            "builder": {"id": "buildbox", "version": __version__, "host_kernel": os.uname().release},
            "started": started, "finished": _now(),
            "subject": [{"name": rel, "digest": {"sha256": digest}} for rel, digest in digests.items()],
            "materials": inputs["materials"],
        },
        "key": inputs["key"],
        "build_key": inputs["key"],   # the same on every machine that builds the recipe with its lock
        "inputs": {k: v for k, v in inputs.items() if k not in ("key", "materials")},
        "isolation": {"user": f"{user.name} ({user.spec})", "network": recipe.network,
                      "namespaces": [*NAMESPACES, *([] if recipe.network else ["net"])],
                      "no_new_privs": True, "capabilities": [], "seccomp": True,
                      "limits": {**recipe.limits.rlimits(), "memory": recipe.limits.memory,
                                 "disk": recipe.limits.disk,
                                 "timeout": recipe.limits.timeout,
                                 "silence": recipe.limits.silence, "log": recipe.limits.log}},
        "artifacts": {rel: {"sha256": digests[rel], "size": (files / rel).stat().st_size,
                            **facts.get(rel, {})}
                      for rel in sorted(artifacts)},
        "from_remote": False,   # built here; a build taken from the remote cache says whose it is
        "runtime": closure,   # what `buildbox install` puts in a runtime root beside the artifacts
    }
    Manifest.write(entry, manifest)


def check_taken(ctx: Context, recipe: Recipe, files: Path) -> None:
    """The checks a build made elsewhere passes here before it is used: the host's (pyelftools)
    and the recipe's [verify] run commands."""
    verify_on_host(recipe, files)
    run_verify_commands(ctx.store, recipe, files, ctx.logfile(recipe.name, "build", "checks of a build from the remote cache"))


def failed_box(store: Store, name: str) -> Path:
    """Where the last failed build of a recipe leaves its box, for `buildbox shell --failed`."""
    return store.root / "failed" / name


# What a build's output says when a limit stopped it, and the limit to name.
LIMIT_SIGNS = [
    ("exit status 152", "cpu", "CPU time"),                       # 128 + SIGXCPU
    ("exit status 153", "file-size", "file size"),                # 128 + SIGXFSZ
    ("File size limit exceeded", "file-size", "file size"),
    ("File too large", "file-size", "file size"),
    ("Cannot allocate memory", "memory", "memory"),
    ("Out of memory", "memory", "memory"),
    ("out of memory", "memory", "memory"),
    ("Resource temporarily unavailable", "processes", "processes"),
    ("Cannot fork", "processes", "processes"),
    ("fork: retry", "processes", "processes"),
    ("Too many open files", "files", "open files"),
    ("No space left on device", "disk", "disk"),
]


def name_the_limit(err: BuildFailed, recipe: Recipe, hit: str | None = None) -> BuildFailed:
    """A failed build that hit a limit says which one, and how to raise it: the box's cgroup
    tells (hit), else the build's output shows it."""
    text = f"{err.message}\n{err.tail}"
    found = next(((key, label) for sign, key, label in LIMIT_SIGNS if sign in text), None) if hit is None else \
        (hit, hit)
    if found is None:
        return err
    key, label = found
    if key == "memory" and hit is None and recipe.limits.address_space:
        key, label = "address-space", "address space"   # ENOMEM from setrlimit's limit, not the cgroup's
    return BuildFailed(f"{err.message}: it hit its {label} limit ([limits] {key} = {recipe.limits.value(key)})",
                       hint=f"raise [limits] {key} in {recipe.path} if the build needs more", tail=err.tail)


@contextlib.contextmanager
def whole_box_limits(recipe: Recipe, logfile: Path) -> Iterator[tuple[Cgroup | None, dict[str, int]]]:
    """The build's cgroup (memory and processes of the whole box) and its per-process rlimits;
    without cgroup controllers, said in the log, memory falls back to a per-process limit."""
    limits = recipe.limits
    if Cgroup.where() is None:
        with open(logfile, "a") as f:
            f.write("buildbox: no memory and pids cgroup controllers on this host: [limits] memory is applied "
                    "per process (address space), not to the whole box\n")
        yield None, {**limits.rlimits(), "address-space": limits.address_space or limits.memory}
        return
    with Cgroup(recipe.name, memory=limits.memory, pids=limits.processes) as group:
        yield group, limits.rlimits()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def collect(root: Path, box_dir: str) -> dict[str, Path]:
    """Every file under box_dir, by path relative to it, each resolved inside the box.

    A symlink is followed as the box would follow it, so a link to /etc/passwd yields the box's
    /etc/passwd, never the host's. Anything but files and directories is refused.
    """
    found: dict[str, Path] = {}
    visited = 0

    def walk(box_path: str, rel: str, depth: int) -> None:
        nonlocal visited
        visited += 1
        if depth > MAX_DEPTH:
            raise BuildFailed(f"$OUT/{log.escaped(rel)} nests deeper than {MAX_DEPTH} levels (a symlink loop?)")
        if visited > MAX_ENTRIES:
            raise BuildFailed(f"$OUT holds more than {MAX_ENTRIES} entries, links followed (a symlink fan-out?)",
                              hint="put fewer, bigger artifacts in $OUT (a tarball of a tree)")
        real = resolve_in_root(root, box_path)
        if real.is_dir():
            for name in sorted(os.listdir(real)):
                walk(f"{box_path}/{name}", f"{rel}/{name}" if rel else name, depth + 1)
        elif real.is_file():
            if rel == MANIFEST:
                raise BuildFailed(f"$OUT/{MANIFEST} is reserved for buildbox's manifest",
                                  hint="name that artifact differently")
            found[rel] = real
        elif not real.exists():
            raise BuildFailed(f"$OUT/{log.escaped(rel)} leads to {log.escaped(str(real.relative_to(root)))}, "
                              "which does not exist in the box",
                              hint="copy the file itself into $OUT")
        else:
            raise BuildFailed(f"$OUT/{log.escaped(rel)} is not a regular file (a device, socket or fifo)")

    walk(box_dir, "", 0)
    return found


def check_in_box(box: Box, artifacts: dict[str, Path], user: BuildUser = BUILDER) -> None:
    """ldd inside the box: every library of every dynamic ELF must resolve there."""
    for rel, real in sorted(artifacts.items()):
        info = elf_facts(rel, real)
        if info is None or info.static:
            continue
        box_path = "/" + str(real.relative_to(box.root))
        out = box.run(["ldd", box_path], what=f"ldd {log.escaped(rel)}", user=user.spec, env=user.login_env(),
                      capture=True, limits=Limits().rlimits(), timeout=600)
        missing = [line.split()[0] for line in out.splitlines() if "not found" in line]
        if missing:
            raise BuildFailed(f"{log.escaped(rel)}: ldd inside the box finds no {', '.join(missing)}",
                              hint="add the package that ships it to [packages] install")


def elf_facts(rel: str, path: Path) -> ElfInfo | None:
    """read_elf, with a damaged ELF file a build failure that names the artifact."""
    from buildbox.elf import MalformedElf, read_elf
    try:
        return read_elf(path)
    except MalformedElf as err:
        raise BuildFailed(f"{log.escaped(rel)} is not a well-formed ELF file ({err})",
                          hint="the build wrote a damaged binary: look at the build log") from None


def verify_on_host(recipe: Recipe, files: Path) -> dict[str, dict[str, Any]]:
    """pyelftools on the host: static or not, the interpreter, and every NEEDED library found."""
    from buildbox.elf import loader_dirs, resolve_needed
    dirs = loader_dirs()
    facts: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in files.rglob("*") if p.is_file()):
        rel = str(path.relative_to(files))
        info = elf_facts(rel, path)
        if info is None:
            continue
        facts[rel] = {"elf": {"static": info.static, "interpreter": info.interpreter,
                              "needed": list(info.needed), "rpath": list(info.rpath),
                              "runpath": list(info.runpath)}}
        if recipe.static and not info.static:
            raise BuildFailed(f"{log.escaped(rel)} is dynamically linked "
                              f"({', '.join(info.needed) or info.interpreter}) but [verify] static = true",
                              hint="link it statically (CGO_ENABLED=0 for Go)")
        lacking = [info.interpreter] if info.interpreter and not os.path.exists(info.interpreter) else []
        lacking += [name for name, where in resolve_needed(info, path.parent, dirs).items() if where is None]
        if lacking and recipe.service:
            # Its runtime root carries them (runtime.py): out/NAME is the one place they lack.
            log.warn(f"{log.escaped(rel)} needs {', '.join(lacking)}, which the host does not have: out/{recipe.name} "
                     f"will not run on this host; `buildbox install {recipe.path}` gives it a root that has them")
        elif lacking and lacking[0] == info.interpreter:
            raise BuildFailed(f"{log.escaped(rel)} needs the loader {info.interpreter}, which the host does not have")
        elif lacking:
            raise BuildFailed(f"{log.escaped(rel)} needs {', '.join(lacking)}, which the host does not have",
                              hint="install it on the host, or build statically ([verify] static = true)")
    return facts


def run_verify_commands(store: Store, recipe: Recipe, files: Path, logfile: Path) -> None:
    """The recipe's [verify] run commands, on the host, with the artifacts first on PATH.

    They run what the build made: on a read-only view of the host (its libraries are what is
    tested), as a uid no host process uses, with no capabilities, no network, and namespaces of
    their own that take everything they started along when each ends (run_on_host), on a copy
    of the artifacts, each within [verify] timeout.
    """
    if not recipe.verify_run:
        return
    place = Path(tempfile.mkdtemp(prefix=f"buildbox-verify-{recipe.name}-"))
    try:
        copy = place / "artifacts"
        for source in sorted(p for p in files.rglob("*") if p.is_file()):
            dest = copy / source.relative_to(files)
            dest.parent.mkdir(parents=True, exist_ok=True)
            copy_sparse(source, dest)
            os.chmod(dest, source.stat().st_mode & 0o777)
        for path in (place, copy, *copy.rglob("*")):
            os.lchown(path, VERIFY_UID, VERIFY_UID)
        at = "/tmp/verify"
        env = {"PATH": f"{at}/artifacts:/usr/local/bin:/usr/bin:/bin", "HOME": at, "LANG": "C.UTF-8", "TZ": "UTC"}
        for command in recipe.verify_run:
            log.note(f"verify: {command}")
            # Bounded as the build is: the recipe's memory and processes for the command and all
            # it starts (a cgroup), its per-process limits.
            with whole_box_limits(recipe, logfile) as (group, rlimits):
                try:
                    run_on_host(store, ["sh", "-ec", command], writable=place, at=at, uid=VERIFY_UID, env=env,
                                what=f"the verify command `{command}`", log=logfile, stream=not log.quiet,
                                timeout=recipe.verify_timeout, limits=rlimits, cgroups=group.procs if group else [])
                except BuildFailed as err:
                    raise name_the_limit(err, recipe, group.hit() if group else None) from None
    finally:
        remove_tree(place)
