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
from typing import Any

from buildbox.base import BUILDER, EPOCH
from buildbox.recipe import Recipe, Set, TarballSet

# Bump on purpose when a key document changes shape: every cache entry is then made again once.
FORMAT = 4
# Part of every build's key: a change to what the box does makes every build run again.
SANDBOX_VERSION = 3   # 3: the seccomp filter from libseccomp, with io_uring, AF_VSOCK, TIOCSTI refused


def content_key(kind: str, inputs: dict[str, Any]) -> str:
    """The key of a stage: the sha256 of the canonical JSON of its key document."""
    blob = json.dumps({"format": FORMAT, "kind": kind, "inputs": inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def set_key(spec: Set, digest: str | None = None) -> str:
    """A set's entry: a tarball's sha256; a bootstrap's parameters, and the digest its lock pins
    (a locked bootstrap is its own entry, made only if mmdebstrap still gives that digest)."""
    if isinstance(spec, TarballSet):
        return spec.sha256
    inputs = {"suite": spec.suite, "mirror": spec.mirror, "variant": spec.variant,
              "packages": list(spec.packages), "epoch": EPOCH}
    return content_key("bootstrap", {**inputs, "sha256": digest} if digest else inputs)


def base_key(set_keys: list[str]) -> str:
    return content_key("base", {"sets": set_keys, "user": dataclasses.asdict(BUILDER)})


def layer_key(base: str, *, install: tuple[str, ...] = (), build_deps: tuple[str, ...] = (),
              packages: dict[str, Any] | None = None) -> str:
    """A package layer: its base and the packages asked for, or (locked) every pinned package."""
    if packages is not None:
        return content_key("layer", {"base": base, "packages": packages})
    return content_key("layer", {"base": base, "install": sorted(install), "build-deps": sorted(build_deps)})


def source_key(pin: dict[str, str], *, layer: str | None = None) -> str:
    """A source tree: a git commit, a tarball's sha256, a Debian source's version and .dsc sha256;
    or, for an unlocked Debian source, its package name over the layer whose lists name its version."""
    if "debian" in pin and "version" not in pin:
        return content_key("source", {"layer": layer, "debian": pin["debian"]})
    return content_key("source", portable_source(pin))


def portable_source(pin: dict[str, str]) -> dict[str, str]:
    """What identifies a source's content, without where it was fetched from (a path on one host)."""
    if "commit" in pin:
        return {"commit": pin["commit"]}
    if "url" in pin:
        return {"url-sha256": pin["sha256"]}
    return dict(pin)


def build_document(pins: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """What a build stands on: the pins (not the stages' keys: a locked build and an unlocked one
    that resolved to the same sets, packages and source are one build) and the recipe's build."""
    return {
        "pins": {"sets": list(pins["sets"]), "packages": pins["packages"], "source": portable_source(pins["source"])},
        "user": dataclasses.asdict(BUILDER), "script": recipe.script, "env": [list(kv) for kv in recipe.env],
        "static": recipe.static, "verify": list(recipe.verify_run), "network": recipe.network,
        "limits": dataclasses.asdict(recipe.limits), "sandbox": SANDBOX_VERSION,
        # The secrets' names, never their values: a new token is not a new build.
        **({"secret-env": list(recipe.secret_env)} if recipe.secret_env else {}),
    }


def build_key(pins: dict[str, Any], recipe: Recipe) -> str:
    return content_key("build", build_document(pins, recipe))
