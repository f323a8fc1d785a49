"""Resolving: what a recipe's pins are. A lock's are known at once and cost nothing; an unlocked
recipe's are found by the stages and asked of the world (a git ref's commit now, the packages a
layer's install recorded, the digest a bootstrap came out with, the tree its unpinned fetch gave).
This is the only module that asks; keys.py computes the keys from what it found.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from buildbox import keys, log
from buildbox.errors import BuildboxError
from buildbox.debian import DscSource
from buildbox.pins import GitPin, Known, Packages, SourcePin, TarballPin, Unresolved, source_pin
from buildbox.recipe import BootstrapSet, GitSource, Recipe, Set, TarballSet, UrlSource
from buildbox.records import RunRecord
from buildbox.store import DIGEST_FORMAT, Store, read_meta, tree_sha256


class Resolver:
    """The pins of a run's recipes, as far as they are known, on one cache.

    Offline (`list`): nothing is asked afresh; an unlocked ref's commit is the one the last run
    recorded."""

    def __init__(self, store: Store, *, offline: bool = False) -> None:
        self.store = store
        self.offline = offline
        self._refs: dict[str, str | BuildboxError] = {}   # recipe name -> its ref's commit, or why not
        self._lock = threading.Lock()

    # -- what is known ------------------------------------------------------------------------
    def known(self, recipe: Recipe) -> Known:
        """The recipe's pins as far as they are known now (a locked recipe's: all, from its lock)."""
        lock = recipe.lock
        if lock:
            pins = lock.pins
            fetch = (recipe.fetch.sha256 or pins.fetch) if recipe.fetch else None
            return Known(True, pins.sets, pins.sets, pins.packages, pins.source, fetch)
        known = Known(False, (None,) * len(recipe.base.sets), self._set_digests(recipe), self._packages(recipe),
                      self._source(recipe))
        if recipe.fetch:
            return Known(known.locked, known.lock_sets, known.sets, known.packages, known.source,
                         self._fetch_digest(recipe, known))
        return known

    def stages(self, recipe: Recipe) -> dict[str, keys.Stage]:
        """Every stage of the recipe with its key, as far as the pins are known."""
        return keys.stages(recipe, self.known(recipe))

    def key(self, recipe: Recipe, stage: str) -> str | Unresolved:
        return self.stages(recipe)[stage].key

    def _set_digests(self, recipe: Recipe) -> tuple[str, ...] | Unresolved:
        found = []
        for spec in recipe.base.sets:
            digest = spec.sha256 if isinstance(spec, TarballSet) else self.bootstrap_digest(keys.set_key(spec))
            if isinstance(digest, Unresolved):
                return digest
            found.append(digest)
        return tuple(found)

    def _packages(self, recipe: Recipe) -> Packages | Unresolved:
        layer = self._made(recipe, "layer")
        if layer is None:
            return Unresolved(f"{recipe.name}: its packages are not resolved yet")
        return Packages.from_dict(read_meta(layer)["packages"])

    def _made(self, recipe: Recipe, stage: str) -> Path | None:
        """The entry an unlocked recipe's stage was made as (whose meta holds what it resolved)."""
        key = keys.stages(recipe, Known(False, (None,) * len(recipe.base.sets), Unresolved(""), Unresolved(""),
                                        self._asked_source(recipe)))[stage].key
        if isinstance(key, Unresolved):
            return None
        entry = self.store.entry(keys.STAGE_KINDS[stage], key)
        return entry if entry.is_dir() else None

    def _asked_source(self, recipe: Recipe) -> SourcePin | Unresolved:
        source = recipe.source
        if isinstance(source, UrlSource):
            return TarballPin(source.url, source.sha256)
        if isinstance(source, DscSource):
            return source.pin   # a local .dsc is pinned by its sha256 as soon as it is read
        if isinstance(source, GitSource):
            commit = self.commit(recipe)
            return commit if isinstance(commit, Unresolved) else GitPin(source.url, commit)
        return Unresolved(f"{recipe.name}: its Debian source is not resolved yet")

    def _source(self, recipe: Recipe) -> SourcePin | Unresolved:
        asked = self._asked_source(recipe)
        if not isinstance(asked, Unresolved) or isinstance(recipe.source, (UrlSource, GitSource)):
            return asked
        entry = self._made(recipe, "source")   # an unlocked Debian source: the version it was fetched at
        return source_pin(read_meta(entry)) if entry else asked

    def _fetch_digest(self, recipe: Recipe, known: Known) -> str | Unresolved:
        """The fetched tree the build stands on: the pinned one, or unpinned, the one the fetch's
        inputs gave when it last ran (it runs again only for `lock` and `run --refresh`)."""
        assert recipe.fetch
        if recipe.fetch.sha256:
            return recipe.fetch.sha256
        document = keys.stages(recipe, known)["fetch"].document
        last = RunRecord.read(self.store, recipe.name).fetch
        if document is None or last is None or last.key != keys.key(document):
            return Unresolved(f"{recipe.name}: its [fetch] has not run yet")
        return last.sha256

    # -- asking the world ---------------------------------------------------------------------
    def commit(self, recipe: Recipe) -> str | Unresolved:
        """The commit an unlocked git ref was resolved to in this run (offline: in the last run)."""
        source = recipe.source
        assert isinstance(source, GitSource)
        with self._lock:
            found = self._refs.get(recipe.name)
        if isinstance(found, str):
            return found
        if self.offline:
            last = RunRecord.read(self.store, recipe.name).git
            if last and (last.url, last.ref) == (source.url, source.ref):
                return last.commit
        return Unresolved(f"{recipe.name}: its ref {source.ref} has not been resolved yet")

    def resolve_ref(self, recipe: Recipe, layers: list[Path]) -> str | BuildboxError:
        """Ask the repository, once a run, what an unlocked git ref names now (in a box over
        layers, which hold git); the commit, or the error that says why not, kept as a value so
        that the source stage reports it."""
        from buildbox.source import resolve_git
        with self._lock:
            if recipe.name in self._refs:
                return self._refs[recipe.name]
        assert isinstance(recipe.source, GitSource) and not self.offline
        try:
            found: str | BuildboxError = resolve_git(self.store, layers, recipe.source, where=recipe.at("source"))
        except BuildboxError as err:
            found = err
        with self._lock:
            self._refs.setdefault(recipe.name, found)
            return self._refs[recipe.name]

    def resolved_git(self, recipe: Recipe) -> dict[str, object] | None:
        """What this run resolved the recipe's ref to, for its run record (None if nothing)."""
        found = self._refs.get(recipe.name)
        if isinstance(found, str) and isinstance(recipe.source, GitSource):
            return {"url": recipe.source.url, "ref": recipe.source.ref, "commit": found, "when": int(time.time())}
        return None

    def pin_commit(self, recipe: Recipe, commit: str) -> None:
        """What `lock` resolved the ref to: the recipe's commit for the rest of the run."""
        with self._lock:
            self._refs[recipe.name] = commit

    def bootstrap_digest(self, key: str) -> str | Unresolved:
        """A bootstrap's tree digest, in this digest format: one made before it is hashed again
        once (about a second) and its meta updated, so that an old cache keeps its bootstraps."""
        entry = self.store.entry("bootstraps", key)
        if not entry.is_dir():
            return Unresolved(f"the bootstrap {key[:12]} is not made yet")
        meta = read_meta(entry)
        if meta.get("digest-format") == DIGEST_FORMAT:
            return meta["sha256"]
        # Upgraded only if it still is the tree its old digest names: a damaged one is made again.
        if meta.get("sha256") != tree_sha256(entry / "root", format=1):
            if self.store.read_only:
                return Unresolved(f"the cached bootstrap {key[:12]} changed since it was made")
            log.warn(f"the cached bootstrap {key[:12]} was changed since it was made; removed it, to make it again")
            self.store.remove_entry("bootstraps", key)
            return Unresolved(f"the cached bootstrap {key[:12]} was changed since it was made and is removed")
        digest = tree_sha256(entry / "root")
        if not self.store.read_only:
            self.store.update_meta("bootstraps", key, {"sha256": digest, "digest-format": DIGEST_FORMAT,
                                                       "sha256-v1": meta.get("sha256")})
        return digest


def set_digest(resolver: Resolver, spec: Set, digest: str | None) -> str | Unresolved:
    """A set's digest: a tarball's sha256, the lock's pin, or the made bootstrap's."""
    if isinstance(spec, TarballSet):
        return spec.sha256
    assert isinstance(spec, BootstrapSet)
    return digest or resolver.bootstrap_digest(keys.set_key(spec, digest))
