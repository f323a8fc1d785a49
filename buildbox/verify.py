"""Rebuild and compare: the same recipe built twice in fresh boxes under conditions that must not
matter, or once against a manifest from elsewhere; what differs is named, down to ELF sections."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from buildbox import log
from buildbox.constants import BUILDER, BuildUser
from buildbox.box import Box, host_name
from buildbox.build import make_build
from buildbox.context import Context
from buildbox.errors import BuildFailed
from buildbox.process import run
from buildbox.recipe import Recipe
from buildbox.records import MANIFEST, Manifest
from buildbox.store import remove_tree

if TYPE_CHECKING:
    from typing import Any

# What the second build changes outside the box, and the build user's uid and the clock inside
# it; none of it may change a byte of the artifacts. (The box path changes on every build.)
VARIATIONS = [
    {"umask": 0o022, "env": {}, "hostname": None, "user": BUILDER, "days_ahead": 0},
    {"umask": 0o077, "env": {"LANG": "fr_FR.UTF-8", "LC_ALL": "fr_FR.UTF-8", "TZ": "Pacific/Kiritimati",
                             "HOME": "/nonexistent", "BUILDBOX_VARIATION": "2"},
     # 373 days, as reprotest does: another year, month, day of the month and weekday.
     "hostname": "elsewhere.invalid", "user": BuildUser(BUILDER.name, 2000, 2000), "days_ahead": 373},
]
DAY = 86400
# libfaketime where distributions put it, and where the second build finds it in its box.
FAKETIME_LIBRARIES = ["/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
                      "/usr/local/lib/faketime/libfaketime.so.1"]
FAKETIME_IN_BOX = "/usr/lib/buildbox/libfaketime.so.1"


def describe(variation: dict) -> str:
    env = ", ".join(f"{k}={v}" for k, v in variation["env"].items())
    return (f"host umask {variation['umask']:03o}, host environment {env or 'unchanged'}, host name "
            f"{variation['hostname'] or 'unchanged'}, build user uid {variation['user'].uid}, "
            f"the clock {variation['days_ahead']} days ahead")


def faketime_library() -> Path | None:
    for pattern in FAKETIME_LIBRARIES:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


def clock_ahead(days: int, user: BuildUser) -> Callable[[Box, dict[str, str]], dict[str, str]] | None:
    """Set the build's clock `days` ahead: the host's libfaketime, bound into the box and preloaded
    into every dynamically linked program of the build, once a probe in the box, as the build
    user, shows it takes.
    (The kernel's time namespaces shift only the monotonic clocks, never the wall clock. Go's
    runtime reads the clock without libc and keeps the real time; the Go toolchain embeds none.)"""
    if not days:
        return None

    def vary(box: Box, env: dict[str, str]) -> dict[str, str]:
        library = faketime_library()
        if library is None:
            log.say("verify: the clock is not varied: libfaketime is not installed on this host "
                    "(apt-get install libfaketime)")
            return env
        box.bind(library, FAKETIME_IN_BOX)
        ahead = {**env, "LD_PRELOAD": ":".join(filter(None, [FAKETIME_IN_BOX, env.get("LD_PRELOAD")])),
                 "FAKETIME": f"+{days}d", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"}
        try:
            seen = box.run(["sh", "-c", "date +%s 2>&1"], what="the clock check", user=user.spec,
                           env=ahead, capture=True)
        except BuildFailed as err:
            seen = str(err)
        wanted = time.time() + days * DAY
        if not seen.strip().isdigit() or abs(int(seen) - wanted) > DAY:
            first = (seen.strip().splitlines() or ["no output"])[0]
            log.say(f"verify: the clock is not varied: libfaketime does not take in this box ({first})")
            return env
        return ahead
    return vary


@contextmanager
def host_conditions(variation: dict) -> Iterator[None]:
    """The host as the build sees it from outside: umask, environment and another host name (the
    box's own stays `buildbox`: this shows the host's name reaches nothing the build makes)."""
    old_umask, old_env = os.umask(variation["umask"]), dict(os.environ)
    os.environ.update(variation["env"])
    try:
        with host_name(variation["hostname"]) if variation["hostname"] else nullcontext():
            yield
    finally:
        os.umask(old_umask)
        os.environ.clear()
        os.environ.update(old_env)


def build_fresh(ctx: Context, recipe: Recipe, box: Any, label: str, places: list[Path],
                variation: dict, *, stream: bool = False, keep: bool = False) -> Path:
    """One build of recipe in a fresh box, outside the cache's build entries; returns its folder
    (listed in places first, so that it is removed whatever happens). Its start and its end,
    with the time it took, are said on a line each, -q or not."""
    place = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=ctx.store.dir("verify")))
    places.append(place)
    log.say(f"verify: {recipe.name}: the {label} build starts")
    started, ended = time.monotonic(), "failed after"
    try:
        make_build(ctx.store, recipe, box.layers, place, box.inputs, ctx.logfile(recipe.name, f"verify-{label}"),
                   stream=stream, keep=keep, user=variation["user"],
                   vary=clock_ahead(variation["days_ahead"], variation["user"]), fetched=box.fetched)
        ended = "took"
    finally:
        log.say(f"verify: {recipe.name}: the {label} build {ended} {time.monotonic() - started:.1f}s")
    return place


def digests(path: Path) -> dict[str, str]:
    manifest = Manifest.read(path)
    if manifest is None:
        raise BuildFailed(f"{path} is not a buildbox manifest")
    return manifest.digests()


def compare(ctx: Context, recipe: Recipe, box: Any, against: Path | dict[str, str] | None,
            built: dict[str, str] | None = None, *, stream: bool = False, keep: bool = False,
            deliver: Callable[[Path], None] | None = None) -> list[str]:
    """Build (twice, or once against a manifest or another machine's digests) over the recipe's
    build box (layers.BuildBox: its layers, fetched tree and manifest inputs; its stages made),
    and return a line per difference; [] if identical. `built` gets the last build's digests;
    `deliver` gets the last build's folder (its files and manifest) when they are identical.
    With `keep`, the boxes and both builds stay for inspection."""
    builds: list[Path] = []
    try:
        if isinstance(against, dict):
            theirs, first = against, None
        elif against:
            theirs = digests(against)
            first = None
        else:
            with host_conditions(VARIATIONS[0]):
                first = build_fresh(ctx, recipe, box, "first", builds, VARIATIONS[0], stream=stream, keep=keep)
            theirs = digests(first / MANIFEST)
        log.say(f"verify: the second build runs with {describe(VARIATIONS[1])}")
        with host_conditions(VARIATIONS[1]):
            second = build_fresh(ctx, recipe, box, "second", builds, VARIATIONS[1], stream=stream, keep=keep)
        ours = digests(second / MANIFEST)
        if built is not None:
            built.update(ours)
        lines = []
        for rel in sorted(set(theirs) | set(ours)):
            if rel not in ours or rel not in theirs:
                lines.append(f"{log.escaped(rel)}: only in the {'first' if rel in theirs else 'second'} build")
            elif ours[rel] != theirs[rel]:
                detail = explain(first / "files" / rel, second / "files" / rel) if first else ""
                lines.append(f"{log.escaped(rel)}: sha256 {theirs[rel][:16]}… vs {ours[rel][:16]}…{detail}")
        if deliver and not lines:
            deliver(second)
        return lines
    finally:
        for place in builds:
            if keep:
                log.say(f"verify: kept the {place.name.split('-')[0]} build's files and manifest at {place}")
            else:
                remove_tree(place)


def explain(a: Path, b: Path) -> str:
    """diffoscope's summary where it is installed; without it, which ELF sections differ."""
    if shutil.which("diffoscope"):
        # Exit status 1: the files differ, which is what is asked.
        out = run(["diffoscope", "--text", "-", a, b], what="diffoscope", capture=True, ok=(0, 1))
        return "\n" + "\n".join(out.splitlines()[:40])
    sections = elf_sections(a), elf_sections(b)
    if not all(sections):
        return ""
    differing = sorted(n for n in set(sections[0]) | set(sections[1]) if sections[0].get(n) != sections[1].get(n))
    return f"; ELF sections that differ: {', '.join(differing) or 'none (headers only)'}"


def elf_sections(path: Path) -> dict[str, str] | None:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        with open(path, "rb") as f:
            return {s.name: hashlib.sha256(s.data()).hexdigest() for s in ELFFile(f).iter_sections()
                    if s.header.sh_type != "SHT_NOBITS"}
    except (ELFError, OSError):
        return None
