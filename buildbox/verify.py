"""Rebuild and compare: the same recipe built twice in fresh boxes under conditions that must not
matter, or once against a manifest from elsewhere; what differs is named, down to ELF sections."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

from buildbox import log
from buildbox.base import BUILDER, BuildUser
from buildbox.build import MANIFEST, make_build
from buildbox.recipe import Recipe
from buildbox.store import remove_tree
from buildbox.tasks import Planner

# What the second build changes outside the box, and the build user's uid inside it; none of it
# may change a byte of the artifacts. (The box path changes on every build.)
VARIATIONS = [
    {"umask": 0o022, "env": {}, "hostname": None, "user": BUILDER},
    {"umask": 0o077, "env": {"LANG": "fr_FR.UTF-8", "LC_ALL": "fr_FR.UTF-8", "TZ": "Pacific/Kiritimati",
                             "HOME": "/nonexistent", "BUILDBOX_VARIATION": "2"},
     "hostname": "elsewhere.invalid", "user": BuildUser(BUILDER.name, 2000, 2000)},
]
CLONE_NEWUTS = 0x04000000


def describe(variation: dict) -> str:
    env = ", ".join(f"{k}={v}" for k, v in variation["env"].items())
    return (f"host umask {variation['umask']:03o}, host environment {env or 'unchanged'}, host name "
            f"{variation['hostname'] or 'unchanged'}, build user uid {variation['user'].uid}")


@contextmanager
def host_conditions(variation: dict) -> Iterator[None]:
    """The host as the build sees it from outside: umask, environment and, in a UTS namespace
    of this thread's own (undone after), another host name."""
    old_umask, old_env = os.umask(variation["umask"]), dict(os.environ)
    os.environ.update(variation["env"])
    libc = ctypes.CDLL(None, use_errno=True)
    home_uts = os.open("/proc/thread-self/ns/uts", os.O_RDONLY) if variation["hostname"] else None
    try:
        if home_uts is not None:
            if libc.unshare(CLONE_NEWUTS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUTS)")
            socket.sethostname(variation["hostname"])
        yield
    finally:
        if home_uts is not None:
            libc.setns(home_uts, CLONE_NEWUTS)
            os.close(home_uts)
        os.umask(old_umask)
        os.environ.clear()
        os.environ.update(old_env)


def build_fresh(planner: Planner, recipe: Recipe, label: str, places: list[Path], user: BuildUser) -> Path:
    """One build of recipe in a fresh box, outside the cache's build entries; returns its folder
    (listed in places first, so that it is removed whatever happens)."""
    key = planner.build_key(recipe)
    layers = [planner.store.entry("sources", planner.source_key(recipe)), *planner.lower_layers(recipe)]
    place = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=planner.store.dir("verify")))
    places.append(place)
    with log.step(f"Building {recipe.name} ({label})"):
        make_build(planner.store, recipe, layers, place, planner.inputs(recipe, key),
                   planner.logfile(recipe.name, f"verify-{label}"), stream=False, keep=False, user=user)
    return place


def digests(manifest: dict) -> dict[str, str]:
    return {rel: fact["sha256"] for rel, fact in manifest["artifacts"].items()}


def compare(recipe: Recipe, planner: Planner, against: Path | None) -> list[str]:
    """Build (twice, or once against a manifest) and return a line per difference; [] if identical."""
    planner.run(stage="source")
    builds = []
    try:
        if against:
            theirs = digests(json.loads(against.read_text()))
            first = None
        else:
            with host_conditions(VARIATIONS[0]):
                first = build_fresh(planner, recipe, "first", builds, VARIATIONS[0]["user"])
            theirs = digests(json.loads((first / MANIFEST).read_text()))
        log.say(f"verify: the second build runs with {describe(VARIATIONS[1])}")
        with host_conditions(VARIATIONS[1]):
            second = build_fresh(planner, recipe, "second", builds, VARIATIONS[1]["user"])
        ours = digests(json.loads((second / MANIFEST).read_text()))
        lines = []
        for rel in sorted(set(theirs) | set(ours)):
            if rel not in ours or rel not in theirs:
                lines.append(f"{rel}: only in the {'first' if rel in theirs else 'second'} build")
            elif ours[rel] != theirs[rel]:
                detail = explain(first / "files" / rel, second / "files" / rel) if first else ""
                lines.append(f"{rel}: sha256 {theirs[rel][:16]}… vs {ours[rel][:16]}…{detail}")
        return lines
    finally:
        for place in builds:
            remove_tree(place)


def explain(a: Path, b: Path) -> str:
    """diffoscope's summary where it is installed; without it, which ELF sections differ."""
    if shutil.which("diffoscope"):
        out = subprocess.run(["diffoscope", "--text", "-", str(a), str(b)], capture_output=True, text=True).stdout
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
