"""The content keys of the stages: pure functions of pins and recipe fields, the same on every machine.

No filesystem, no network, no mounts, no host facts. A key document holds what a stage stands on
and nothing of where or when it is made: no host path (a local git repository or tarball is
keyed by its commit or sha256, not by where it lies), no cache path, host name, host uid or time.
So two machines, or two checkouts at different paths with different caches, compute the same keys
for the same recipe and lock: what a shared cache needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from buildbox.constants import BUILDER, EPOCH
from buildbox.pins import DebianAsked, Known, Packages, Pins, SourcePin, Unresolved
from buildbox.debian import DscSource
from buildbox.recipe import (DEBIAN_KINDS, DEBIAN_SOURCE_NEEDS, BootstrapSet, DebianSource, Fetch, GitSource, Recipe, Set, Source,
                             TarballSet)

# The buildd's build-essential set: one layer of them per base, which the layer of every unlocked
# recipe of a Debian source stands on (its own layer installs only its own dependencies then). A
# locked recipe's layer holds every package its lock pins, over the base, as before.
ESSENTIALS = ("build-essential", "debhelper", *DEBIAN_SOURCE_NEEDS)

# Bump on purpose when a key document changes shape: every cache entry is then made again once.
FORMAT = 4
# Part of every build's key: a change to what the box does makes every build run again.
SANDBOX_VERSION = 3   # 3: the seccomp filter from libseccomp, with io_uring, AF_VSOCK, TIOCSTI refused


def document(kind: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """A stage's key document: what it stands on, with the key format; kept beside its entry as
    inputs.json, so that the next run can say what changed."""
    return {"format": FORMAT, "kind": kind, "inputs": inputs}


def canonical(doc: dict[str, Any]) -> bytes:
    """A document's canonical JSON: keys sorted, no spaces (what keys and signatures are made of)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def key(doc: dict[str, Any]) -> str:
    """The key of a stage: the sha256 of the canonical JSON of its key document."""
    return hashlib.sha256(canonical(doc)).hexdigest()


def content_key(kind: str, inputs: dict[str, Any]) -> str:
    return key(document(kind, inputs))


def set_document(spec: BootstrapSet, digest: str | None = None) -> dict[str, Any]:
    """A bootstrap's parameters, and the digest its lock pins (a locked bootstrap is its own
    entry, made only if mmdebstrap still gives that digest)."""
    inputs = {"suite": spec.suite, "mirror": spec.mirror, "variant": spec.variant,
              "packages": list(spec.packages), "epoch": EPOCH}
    return document("bootstrap", {**inputs, "sha256": digest} if digest else inputs)


def set_key(spec: Set, digest: str | None = None) -> str:
    """A set's entry: a tarball's sha256 (its download is filed by it); a bootstrap's document's key."""
    return spec.sha256 if isinstance(spec, TarballSet) else key(set_document(spec, digest))


def base_document(set_keys: list[str]) -> dict[str, Any]:
    return document("base", {"sets": set_keys, "user": dataclasses.asdict(BUILDER)})


def base_key(set_keys: list[str]) -> str:
    return key(base_document(set_keys))


def layer_document(base: str, *, install: tuple[str, ...] = (), build_deps: tuple[str, ...] = (),
                   depends: tuple[tuple[str, str], ...] = (), packages: Packages | None = None) -> dict[str, Any]:
    """A package layer: its base and the packages asked for (with a .dsc's Build-Depends fields,
    which it installs), or (locked) every pinned package."""
    if packages is not None:
        return document("layer", {"base": base, "packages": packages.as_dict()})
    return document("layer", {"base": base, "install": sorted(install), "build-deps": sorted(build_deps),
                              **({"build-depends": dict(depends)} if depends else {})})


def layer_key(base: str, **asked: Any) -> str:
    return key(layer_document(base, **asked))


def source_document(source: SourcePin | DebianAsked, *, layer: str | None = None) -> dict[str, Any]:
    """A source tree: a git commit, a tarball's sha256, a Debian source's version and .dsc sha256;
    or, for an unlocked Debian source, its package name over the layer whose lists name its version."""
    if isinstance(source, DebianAsked):
        return document("source", {"layer": layer, "debian": source.package})
    return document("source", source.portable())


def source_key(source: SourcePin | DebianAsked, *, layer: str | None = None) -> str:
    return key(source_document(source, layer=layer))


def fetch_document(layer: str, source: SourcePin, fetch: Fetch) -> dict[str, Any]:
    """What an unpinned fetch stands on (its tree is filed by its digest; this keys the record of
    which digest these inputs gave, so that the fetch is not run again on every build)."""
    return document("fetch", {"layer": layer, "source": source.portable(), "script": fetch.script,
                              "env": [list(kv) for kv in fetch.env], "user": dataclasses.asdict(BUILDER)})


# Where a build's SOURCE_DATE_EPOCH comes from, by its kind of source (epoch.of_build reads it).
EPOCH_FROM_CHANGELOG, EPOCH_FROM_COMMIT = "debian/changelog", "git committer time"


def epoch_rule(source: Source) -> str | int:
    """The rule of a build's SOURCE_DATE_EPOCH, as its key holds it: its kind of source's (whose
    value the source's pin keys already), or the fixed epoch itself."""
    if isinstance(source, DEBIAN_KINDS):
        return EPOCH_FROM_CHANGELOG
    if isinstance(source, GitSource):
        return EPOCH_FROM_COMMIT
    return EPOCH


def build_document(pins: Pins, recipe: Recipe) -> dict[str, Any]:
    """What a build stands on: the pins (not the stages' keys: a locked build and an unlocked one
    that resolved to the same sets, packages and source are one build) and the recipe's build.
    A fetched tree counts by its digest, not by the script that fetched it."""
    return document("build", {
        "pins": {"sets": list(pins.sets), "packages": pins.packages.as_dict(), "source": pins.source.portable(),
                 **({"fetch": pins.fetch} if pins.fetch else {})},
        "user": dataclasses.asdict(BUILDER), "script": recipe.script, "env": [list(kv) for kv in recipe.env],
        "static": recipe.static, "verify": list(recipe.verify_run), "network": recipe.network,
        "limits": dataclasses.asdict(recipe.limits), "sandbox": SANDBOX_VERSION,
        "epoch": epoch_rule(recipe.source),
        # The secrets' names, never their values: a new token is not a new build.
        **({"secret-env": list(recipe.secret_env)} if recipe.secret_env else {}),
    })


def build_key(pins: Pins, recipe: Recipe) -> str:
    return key(build_document(pins, recipe))


# -- every stage's key document, from what is known ----------------------------------------------
# The cache kind each stage's entry is filed under (a set's is its own: a download or a bootstrap).
STAGE_KINDS = {"base": "bases", "essentials": "layers", "layer": "layers", "source": "sources", "fetch": "fetches", "build": "builds"}
SET_KINDS = {TarballSet: "downloads", BootstrapSet: "bootstraps"}

@dataclass(frozen=True)
class Stage:
    """One stage of a recipe as its key knows it: its name (set1, base, layer, source, fetch,
    build), the cache kind its entry is filed under, and its key document and key, or Unresolved."""
    name: str
    kind: str
    document: dict[str, Any] | None
    key: str | Unresolved


def stages(recipe: Recipe, known: Known) -> dict[str, Stage]:
    """Every stage of the recipe, in pipeline order (an unlocked Debian source's shared layer of
    ESSENTIALS, "essentials", under its own), from its pins as far as they are known:
    a pure function (no cache, no process, no network; resolve.py finds the pins)."""
    found: dict[str, Stage] = {}
    set_keys = []
    for index, (spec, digest) in enumerate(zip(recipe.base.sets, known.lock_sets)):
        if isinstance(spec, TarballSet):
            found[f"set{index + 1}"] = Stage(f"set{index + 1}", SET_KINDS[TarballSet], None, spec.sha256)
        else:
            doc = set_document(spec, digest)
            found[f"set{index + 1}"] = Stage(f"set{index + 1}", SET_KINDS[BootstrapSet], doc, key(doc))
        set_keys.append(found[f"set{index + 1}"].key)
    doc = base_document(set_keys)
    base = found["base"] = Stage("base", STAGE_KINDS["base"], doc, key(doc))
    if known.locked:
        assert not isinstance(known.packages, Unresolved)
        doc = layer_document(base.key, packages=known.packages)
    else:
        under = base
        if isinstance(recipe.source, DEBIAN_KINDS):
            doc = layer_document(base.key, install=ESSENTIALS)
            under = found["essentials"] = Stage("essentials", STAGE_KINDS["essentials"], doc, key(doc))
        doc = layer_document(under.key, install=recipe.layer_install, build_deps=recipe.build_deps,
                             depends=recipe.source.depends if isinstance(recipe.source, DscSource) else ())
    layer = found["layer"] = Stage("layer", STAGE_KINDS["layer"], doc, key(doc))
    source: SourcePin | DebianAsked | Unresolved = known.source
    if isinstance(recipe.source, DebianSource) and not known.locked:
        source = DebianAsked(recipe.source.package)   # its entry is filed by what was asked
    if isinstance(source, Unresolved):
        found["source"] = Stage("source", STAGE_KINDS["source"], None, source)
    else:
        doc = source_document(source, layer=layer.key)
        found["source"] = Stage("source", STAGE_KINDS["source"], doc, key(doc))
    if recipe.fetch:
        # Filed by the tree's digest; its document (what an unpinned fetch stands on) needs the
        # source's pin.
        doc = None if isinstance(known.source, Unresolved) else fetch_document(layer.key, known.source, recipe.fetch)
        fetched = known.fetch if known.fetch is not None else Unresolved(f"{recipe.name}: its [fetch] has not run yet")
        found["fetch"] = Stage("fetch", STAGE_KINDS["fetch"], doc, fetched)
    pins = known.pins()
    if isinstance(pins, Unresolved):
        found["build"] = Stage("build", STAGE_KINDS["build"], None, pins)
    else:
        doc = build_document(pins, recipe)
        found["build"] = Stage("build", STAGE_KINDS["build"], doc, key(doc))
    return found


# -- why a stage runs again ---------------------------------------------------------------------
# The words of the reasons are fixed (README, "Why it rebuilt"): scripts and people grep them.
WORDS = {"script": "script changed", "env": "env changed", "limits": "limits changed",
         "network": "network changed", "verify": "verify commands changed", "static": "static changed",
         "secret-env": "secret-env changed", "user": "build user changed", "sandbox": "buildbox's sandbox changed",
         "base": "base changed", "layer": "layer changed", "install": "install changed",
         "build-deps": "build-deps changed",
         "build-depends": "the .dsc's Build-Depends changed", "suite": "suite changed", "mirror": "mirror changed",
         "variant": "variant changed", "epoch": "epoch changed", "sha256": "pinned sha256 changed"}


def reasons(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why a stage whose key document was old is made again with new: one phrase per difference,
    the pins first (sets, packages, source, fetched tree), then the other fields by name."""
    if old.get("format") != new.get("format") or old.get("kind") != new.get("kind"):
        return [f"key format {old.get('format')} -> {new.get('format')}"]
    before, after = _pinned_view(old), _pinned_view(new)
    found = _pin_reasons(before, after)
    for name in sorted((set(before) | set(after)) - set(PINS)):
        if before.get(name) != after.get(name):
            found.append(WORDS.get(name, f"{name} changed"))
    return found


PINS = ("sets", "packages", "source", "fetch")


def _pinned_view(doc: dict[str, Any]) -> dict[str, Any]:
    """A document's inputs with its pins at the top: a build's `pins` spread out, a pinned source
    document as the `source` it is."""
    inputs = doc.get("inputs", {})
    if doc.get("kind") == "source" and "layer" not in inputs:
        return {"source": inputs}
    return {**{k: v for k, v in inputs.items() if k != "pins"}, **inputs.get("pins", {})}


def _pin_reasons(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    found = []
    old_sets, new_sets = before.get("sets") or [], after.get("sets") or []
    for index in range(max(len(old_sets), len(new_sets))):
        if old_sets[index:index + 1] != new_sets[index:index + 1]:
            found.append(f"set {index + 1} changed")
    old, new = before.get("packages") or {}, after.get("packages") or {}
    if isinstance(old, list) or isinstance(new, list):   # a bootstrap's extra packages: names only
        return found + (["packages changed"] if old != new else [])
    for name in sorted(set(old) | set(new)):
        if name not in old:
            found.append(f"package {name} added {new[name]['version']}")
        elif name not in new:
            found.append(f"package {name} removed (was {old[name]['version']})")
        elif old[name] != new[name]:
            if old[name].get("version") == new[name].get("version"):
                found.append(f"package {name} {new[name]['version']} rebuilt (its .deb sha256 changed)")
            else:
                found.append(f"package {name} {old[name]['version']} -> {new[name]['version']}")
    if "source" in after and before.get("source") != after["source"]:
        found += _source_reasons(before.get("source") or {}, after["source"])
    if before.get("fetch") != after.get("fetch"):
        was = f" (was {before['fetch'][:12]})" if before.get("fetch") else ""
        found.append(f"fetched tree sha256 {after['fetch'][:12]}{was}" if after.get("fetch") else "no fetch now")
    return found


def _source_reasons(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    if before == after:
        return []
    if "commit" in after:
        was = f" (was {before['commit'][:7]})" if "commit" in before else ""
        return [f"commit {after['commit'][:7]}{was}"]
    if "url-sha256" in after:
        was = f" (was {before['url-sha256'][:12]})" if "url-sha256" in before else ""
        return [f"tarball sha256 {after['url-sha256'][:12]}{was}"]
    if "version" in after:
        was = f" (was {before['version']})" if "version" in before else ""
        return [f"debian source {after.get('debian')} {after['version']}{was}"]
    return ["source changed"]
