"""Locks: recipes/NAME.lock beside recipes/NAME.toml, everything that pins a recipe's build (the
sets' sha256, every package in the box with its version and .deb sha256, the source's commit or
digest). Read here into a frozen Lock; written with tomlkit, so that a user's comments survive.

The pins have one form everywhere, the lock file's: {"sets": [sha256, ...], "packages": {name:
{"version", "arch", "sha256"}}, "source": {...}}. A build's key is made of them, so a locked build
and an unlocked one that resolved to the same pins are the same build.
"""

from __future__ import annotations

import hashlib
import json
import re
import dataclasses
from pathlib import Path
from typing import Any

import tomlkit

from buildbox.debian import ARCH_RE, PACKAGE_RE, VERSION_RE, DscSource
from buildbox.errors import InputError
from buildbox.pins import Pins
from buildbox.recipe import (SHA256_RE, BootstrapSet, DebianSource, Doc, GitSource, Lock, Recipe, TarballSet,
                             list_of_tables, read_recipe)
from buildbox.store import write_atomically

# 2: a bootstrap's and a fetched tree's digest are store.tree_sha256's format 2. A format-1 lock
# that pins neither (tarball sets, no [fetch]) is still good: its digests are files' sha256.
LOCK_FORMAT = 2
READ_FORMATS = (1, LOCK_FORMAT)
HEADER = """\
# The lock of {recipe}: what pins its build, down to the sha256 of every package's .deb.
# `buildbox run` builds exactly this; `buildbox lock` (or `buildbox run --refresh`) resolves
# the recipe afresh and rewrites it. Comments you add are kept when it is rewritten.
"""
SOURCE_KEYS = {"git": ("git", "commit"), "url": ("url", "sha256"),
               "debian": ("debian", "version", "dsc", "dsc-sha256")}
# Every value a lock holds is checked at load, as strictly as a recipe's: names and versions reach
# apt-get's command line as NAME=VERSION, run as root in the box, and none may become an option.
HEX = "64 lowercase hex digits"
PIN_FIELDS = {"version": (VERSION_RE, "a Debian version ([epoch:]upstream[-revision])"),
              "arch": (ARCH_RE, "a Debian architecture name"), "sha256": (SHA256_RE, HEX)}
SOURCE_FIELDS = {
    "git": (re.compile(r"[^-].*", re.DOTALL), "a repository (it must not start with '-')"),
    "commit": (re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}"),
               "40 or 64 lowercase hex digits (a SHA-1 or SHA-256 repository's commit)"),
    "url": (re.compile(r"[^-].*", re.DOTALL), "a URL or a path (it must not start with '-')"),
    "sha256": (SHA256_RE, HEX),
    "debian": (PACKAGE_RE, "a Debian source package name"),
    "version": PIN_FIELDS["version"],
    # SOURCE_VERSION.dsc, the epoch left out, as apt-get source names it: a plain file name.
    "dsc": (re.compile(r"[a-z0-9][a-z0-9+.-]+_[0-9][A-Za-z0-9.+~-]*\.dsc"), "the name of a .dsc file"),
    "dsc-sha256": (SHA256_RE, HEX),
}


def load_recipe(path: Path, *, locked: bool = True) -> Recipe:
    """Read and check one recipe file, and its lock if it has one (unless not `locked`: for
    re-locking, when the old lock may no longer fit)."""
    recipe = read_recipe(path)
    return dataclasses.replace(recipe, lock=read_lock(recipe)) if locked else recipe


def lock_path(recipe_path: Path) -> Path:
    return recipe_path.with_suffix(".lock")


def request(recipe: Recipe) -> dict[str, Any]:
    """What the recipe asks for that a lock resolves: a lock is for exactly this."""
    sets = [f"{spec.url} {spec.sha256}" if isinstance(spec, TarballSet) else
            f"mmdebstrap {spec.mirror} {spec.suite} {spec.variant} {' '.join(spec.packages)}".strip()
            for spec in recipe.base.sets]
    source = recipe.source
    described = (f"git {source.url} {source.ref}" if isinstance(source, GitSource) else
                 f"debian {source.package}" if isinstance(source, DebianSource) else
                 f"dsc {source.package} {source.sha256}" if isinstance(source, DscSource) else
                 f"url {source.url} {source.sha256}")
    asked = {"sets": sets, "install": sorted(recipe.install), "build-deps": sorted(recipe.build_deps),
             "source": described}
    if recipe.fetch:   # only then: the locks of recipes without [fetch] stay as they were
        asked["fetch"] = fetch_request(recipe)
    return asked


def fetch_request(recipe: Recipe) -> str:
    """The [fetch] a lock's fetch digest was made by: the sha256 of its script and env."""
    assert recipe.fetch
    text = json.dumps({"script": recipe.fetch.script, "env": [list(kv) for kv in recipe.fetch.env]}, sort_keys=True)
    return f"script and env {hashlib.sha256(text.encode()).hexdigest()}"


def read_lock(recipe: Recipe) -> Lock | None:
    """The recipe's lock, checked against what the recipe asks for now; None if it has none."""
    path = lock_path(recipe.path)
    if not path.exists():
        return None
    doc = Doc(path)
    data = doc.data
    relock = f"run `buildbox lock {recipe.path}` to rewrite it"
    doc.check_keys(data, (), {"format": int, "recipe": str, "request": dict, "set": list_of_tables, "source": dict,
                              "packages": dict, "fetch": dict})
    if data.get("format") not in READ_FORMATS:
        doc.fail((), "format", f"lock format {data.get('format')!r} is unknown (this buildbox writes {LOCK_FORMAT})",
                 relock)
    for key in ("request", "set", "source", "packages"):
        if key not in data:
            doc.fail((), None, f"the lock has no {'[[set]]' if key == 'set' else f'[{key}]'}", relock)
    asked = request(recipe)
    for key in sorted(set(asked) | set(data["request"])):
        value = asked.get(key)
        if data["request"].get(key) != value:
            part = {"sets": "the base's sets", "source": "[source]", "fetch": "[fetch]"}.get(key, f"[packages] {key}")
            raise InputError(f"{part} changed since {path.name} was written "
                             f"(locked for {data['request'].get(key)!r}, now {value!r})",
                             where=recipe.at(key if key in ("source", "fetch") else "packages"),
                             hint=f"run `buildbox lock {recipe.path}` to lock what it asks for now")
    lines: dict[str, int] = {}
    sets = []
    for index, entry in enumerate(data["set"]):
        if not isinstance(entry, dict) or not SHA256_RE.fullmatch(str(entry.get("sha256", ""))):
            doc.fail(("set",), "sha256", f"a locked set needs sha256 = {HEX}", relock, index)
        sets.append(entry["sha256"])
        lines[f"set.{index}"] = doc.line_of(("set",), "sha256", index)
    if len(sets) != len(recipe.base.sets):
        doc.fail((), None, f"the lock pins {len(sets)} set(s), the base has {len(recipe.base.sets)}", relock)
    if data["format"] != LOCK_FORMAT:
        _refuse_old_tree_digests(doc, recipe, relock)
    kind = next((k for k in SOURCE_KEYS if k in data["source"]), None)
    if kind is None or set(data["source"]) != set(SOURCE_KEYS[kind]) or \
            not all(isinstance(v, str) and v for v in data["source"].values()):
        doc.fail(("source",), None, f"[source] must hold exactly one of: "
                 f"{'; '.join(', '.join(keys) for keys in SOURCE_KEYS.values())}", relock)
    for key, value in data["source"].items():
        pattern, what = SOURCE_FIELDS[key]
        if not pattern.fullmatch(value):
            doc.fail(("source",), key, f"[source] {key} {value!r} is not {what}", relock)
    lines["source"] = doc.line_of(("source",))
    packages = {}
    for name, pin in data["packages"].items():
        if not (isinstance(pin, dict) and {"version", "arch"} <= set(pin) <= set(PIN_FIELDS)
                and all(isinstance(value, str) for value in pin.values())):
            doc.fail(("packages",), name, f"package {name!r} must be {{ version = \"...\", arch = \"...\", "
                     "sha256 = \"...\" }", relock)
        # NAME, or NAME:ARCH for a package of a foreign architecture (packages._installed).
        package, colon, arch = name.partition(":")
        if not PACKAGE_RE.fullmatch(package) or (colon and not ARCH_RE.fullmatch(arch)):
            doc.fail(("packages",), name, f"{name!r} is not a Debian package name (NAME or NAME:ARCH)", relock)
        for key, value in pin.items():
            pattern, what = PIN_FIELDS[key]
            if not pattern.fullmatch(value):
                doc.fail(("packages",), name, f"package {name!r}: {key} {value!r} is not {what}", relock)
        packages[name] = dict(pin)
        lines[name] = doc.line_of(("packages",), name)
    pins = {"sets": sets, "packages": packages, "source": dict(data["source"])}
    if recipe.fetch:
        fetch = data.get("fetch", {})
        if set(fetch) != {"sha256"} or not SHA256_RE.fullmatch(str(fetch["sha256"])):
            doc.fail(("fetch",) if "fetch" in data else (), "sha256" if "fetch" in data else None,
                     f"the lock's [fetch] needs sha256 = {HEX} (the fetched tree's)", relock)
        pins["fetch"] = fetch["sha256"]
        lines["fetch"] = doc.line_of(("fetch",), "sha256")
    return Lock(path, Pins.from_dict(pins), lines)


def _refuse_old_tree_digests(doc: Doc, recipe: Recipe, relock: str) -> None:
    """An older lock's tree digests (a bootstrap's, a fetched tree's) are of a format buildbox no
    longer computes: no tree made now matches one, and a locked run would fail late, as if the
    archive had changed. Refused on their line instead. A tarball set's sha256 is its file's, and
    stays good."""
    found = doc.data["format"]
    for index, spec in enumerate(recipe.base.sets):
        if isinstance(spec, BootstrapSet):
            doc.fail(("set",), "sha256", f"lock format {found} pins set {index + 1} (a bootstrap) by a tree "
                     "digest buildbox no longer computes", relock, index)
    if "fetch" in doc.data:
        doc.fail(("fetch",), "sha256", f"lock format {found} pins [fetch] by a tree digest buildbox no longer "
                 "computes", relock)


def write_lock(recipe: Recipe, resolved: Pins) -> list[str]:
    """Write the recipe's lock with these pins, keeping the comments of the file it replaces;
    return a line per pin that changed (all of them, for a new lock)."""
    pins = resolved.as_dict()
    path = lock_path(recipe.path)
    old = tomlkit.parse(path.read_text()) if path.exists() else None
    if old is None or old.get("format") not in READ_FORMATS:   # format 1 is format 2's shape: kept, comments too
        doc = tomlkit.parse(HEADER.format(recipe=recipe.path.name))
        for key in ("format", "recipe", "request", "set", "source", "packages"):
            doc.add(key, tomlkit.table() if key in ("request", "source", "packages") else
                    tomlkit.aot() if key == "set" else "")
        before: dict[str, Any] = {"sets": [], "packages": {}, "source": {}}
    else:
        doc = old
        unwrapped = old.unwrap()
        before = {"sets": [s.get("sha256") for s in unwrapped.get("set", [])],
                  "packages": unwrapped.get("packages", {}), "source": unwrapped.get("source", {}),
                  **({"fetch": unwrapped["fetch"].get("sha256")} if "fetch" in unwrapped else {})}
    doc["format"] = LOCK_FORMAT
    doc["recipe"] = recipe.name
    _update(doc["request"], request(recipe))
    sets = doc["set"]
    while len(sets) > len(pins["sets"]):
        sets.pop()
    for index, digest in enumerate(pins["sets"]):
        if index < len(sets):
            sets[index]["sha256"] = digest
        else:
            sets.append(tomlkit.table().add("sha256", digest))
    _update(doc["source"], pins["source"])
    if "fetch" in pins:
        if "fetch" not in doc:
            doc.add("fetch", tomlkit.table())
        _update(doc["fetch"], {"sha256": pins["fetch"]})
    elif "fetch" in doc:
        del doc["fetch"]
    table = doc["packages"]
    for name in [n for n in table if n not in pins["packages"]]:
        del table[name]
    for name, pin in sorted(pins["packages"].items()):
        if name in table:
            _update(table[name], pin)
        else:
            item = tomlkit.inline_table()
            item.update({key: pin[key] for key in ("version", "arch", "sha256") if key in pin})
            table[name] = item
    write_atomically(path, tomlkit.dumps(doc))
    return changes(before, pins)


def _update(table: Any, values: dict[str, Any]) -> None:
    """Set table's keys to values in place (a key's comment stays), dropping keys not in values."""
    for key in [k for k in table if k not in values]:
        del table[key]
    for key, value in values.items():
        if table.get(key) != value:
            table[key] = value


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What a rewrite changed, one line per pin, in words a reviewer reads."""
    lines = []
    for index, digest in enumerate(after["sets"]):
        old = before["sets"][index] if index < len(before["sets"]) else None
        if old != digest:
            lines.append(f"set {index + 1}: {_short(old)} -> {_short(digest)}")
    if before["source"] != after["source"]:
        pin = after["source"]
        lines.append(f"source: {describe_source(before['source'], short=True)} -> {describe_source(pin, short=True)}")
    if before.get("fetch") != after.get("fetch"):
        lines.append(f"fetch: sha256 {_short(before.get('fetch'))} -> {_short(after.get('fetch'))}")
    old_packages, new_packages = before["packages"], after["packages"]
    for name in sorted(set(old_packages) | set(new_packages)):
        old, new = old_packages.get(name), new_packages.get(name)
        if old is None:
            lines.append(f"package {name}: added at {new['version']}")
        elif new is None:
            lines.append(f"package {name}: removed (was {old['version']})")
        elif old != new:
            lines.append(f"package {name}: {old.get('version')} -> {new['version']}")
    return lines


def _short(digest: str | None) -> str:
    return f"{digest[:12]}…" if digest else "none"


def describe_source(source: dict[str, Any], *, short: bool = False) -> str:
    if not source:
        return "none"
    if "commit" in source:
        return f"commit {source['commit'][:12] if short else source['commit']}"
    if "version" in source:
        return f"{source['debian']} {source['version']}"
    return f"sha256 {_short(source.get('sha256')) if short else source['sha256']}"
