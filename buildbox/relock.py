"""Locking: a recipe resolved afresh against its mirrors and repositories, whatever the cache
holds (a new bootstrap, a new apt install, the ref's commit now), and its pins written to its lock.

What is made is filed under the key it has once locked, so the locked run after it reuses it:
locking costs one bootstrap and one install, not one more of each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from buildbox import keys, layers, sets, source
from buildbox.keys import Stage
from buildbox.lock import lock_path, write_lock
from buildbox.pins import GitPin, Known, Packages, Pins, TarballPin, source_pin
from buildbox.debian import DscSource
from buildbox.recipe import DEBIAN_KINDS, GitSource, Recipe, TarballSet, UrlSource
from buildbox.store import Store, read_meta, write_inputs
from buildbox.tasks import Graph


def resolve_afresh(graph: Graph, recipe: Recipe) -> Pins:
    """The pins of a lock for recipe, each stage made (or found) under its locked key."""
    recipe = dataclasses.replace(recipe, lock=None)
    store, ctx = graph.store, graph.ctx
    digests: list[str] = []
    for spec in recipe.base.sets:
        if isinstance(spec, TarballSet):
            sets.ensure_download(store, spec.url, spec.sha256)
            digests.append(spec.sha256)
            continue
        digest = ""

        def bootstrap(tmp: Path, spec=spec) -> str:
            nonlocal digest
            digest = sets.make(ctx, spec, tmp)
            document = keys.set_document(spec, digest)
            write_inputs(tmp, document)
            return keys.key(document)
        store.add("bootstraps", bootstrap)
        digests.append(digest)
    # From here on, the recipe as if locked at what was found so far.
    found = Known(True, tuple(digests), tuple(digests), Packages(()), TarballPin("", ""))
    stages = _stages(recipe, found)
    graph.store.ensure("bases", stages["base"].key, lambda tmp: _base(graph, recipe, stages, digests, tmp),
                       inputs=stages["base"].document)
    base = layers.stack(store, recipe, stages, "base")

    # An unlocked Debian source's layer stands on the shared build essentials (keys.ESSENTIALS):
    # its lock pins them too, so that locking it keeps its packages, and its build key with them.
    # Installed here in one layer over the base, as the locked run's layer is.
    with_essentials = dataclasses.replace(recipe, install=recipe.install + tuple(
        name for name in keys.ESSENTIALS if name not in recipe.install)) if isinstance(recipe.source, DEBIAN_KINDS) \
        else recipe

    def install(tmp: Path) -> str:
        from buildbox import packages
        packages.make(ctx, with_essentials, base, tmp)
        document = keys.layer_document(stages["base"].key, packages=Packages.from_dict(read_meta(tmp)["packages"]))
        write_inputs(tmp, document)
        return keys.key(document)
    layer = store.entry("layers", store.add("layers", install))
    installed = Packages.from_dict(read_meta(layer)["packages"])
    under = [layer / "root", *base]
    asked = recipe.source
    if isinstance(asked, UrlSource):
        pin = TarballPin(asked.url, asked.sha256)
    elif isinstance(asked, DscSource):
        pin = asked.pin
    elif isinstance(asked, GitSource):
        pin = GitPin(asked.url, source.resolve_git(store, under, asked, where=recipe.at("source")))
        graph.resolver.pin_commit(recipe, pin.commit)
    else:
        def fetch(tmp: Path) -> str:
            source.make(ctx, recipe, under, tmp)
            document = keys.source_document(source_pin(read_meta(tmp)))
            write_inputs(tmp, document)
            return keys.key(document)
        pin = source_pin(read_meta(store.entry("sources", store.add("sources", fetch))))
    pins = Pins(tuple(digests), installed, pin)
    if recipe.fetch:
        # Afresh, over the source this lock pins: lock runs the fetch and writes what it gave.
        stages = _stages(recipe, Known(True, pins.sets, pins.sets, installed, pin))
        document = stages["source"].document
        store.ensure("sources", stages["source"].key, lambda tmp: source.make(
            ctx, recipe, under, tmp, commit=getattr(pin, "commit", None)), inputs=document)
        digest = graph.fetch_afresh(recipe, stages, recipe.fetch.sha256, "the recipe pins")
        pins = dataclasses.replace(pins, fetch=digest)
    return pins


def _stages(recipe: Recipe, known: Known) -> dict[str, Stage]:
    return keys.stages(recipe, known)


def _base(graph: Graph, recipe: Recipe, stages: dict[str, Stage], digests: list[str], tmp: Path) -> None:
    from buildbox import base
    under = layers.under_base(graph.store, recipe, stages)
    rest = [(f"{spec.where}: set {i + 1}", layers.set_path(graph.store, spec, stages[f"set{i + 1}"]))
            for i, spec in enumerate(recipe.base.sets)][len(under):]
    base.make(graph.ctx, recipe.base, under, rest, digests, tmp)


def relock(store: Store, recipes: list[Recipe]) -> Iterator[tuple[Path, Pins, list[str] | None]]:
    """Resolve each recipe afresh and write its lock; yield its path, pins and what changed
    (None for a lock that did not exist)."""
    graph = Graph(store, recipes, Path("out"), stream=False)
    graph.reap()
    with store.in_use():
        for recipe in recipes:
            existed = lock_path(recipe.path).exists()
            pins = resolve_afresh(graph, recipe)
            changed = write_lock(recipe, pins)
            yield lock_path(recipe.path), pins, changed if existed else None
