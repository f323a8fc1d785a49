"""The doit task graph that ties the stages together, for the buildbox command and for dodo.py.

Stages: set -> base -> layer -> source -> build -> out. Each task is up to date exactly when the
cache holds the entry for its content key; doit brings the graph, the order and the parallel runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain
from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter

from buildbox import keys, log
from buildbox.base import make_base
from buildbox.errors import BuildboxError, BuildFailed, InputError, Interrupted, os_failure
from buildbox.lock import lock_path, write_lock
from buildbox.recipe import Base, BootstrapSet, DebianSource, GitSource, Recipe, Set, TarballSet, UrlSource
from buildbox.store import DIGEST_FORMAT, Store, read_meta, remove_tree, tree_sha256, write_inputs, write_meta


# The cache kind of each stage's entry (a set's is its own: a download or a bootstrap).
STAGE_KINDS = {"base": "bases", "layer": "layers", "source": "sources", "fetch": "fetches", "build": "builds"}


class Planner:
    """Content keys and stage actions for a set of recipes, sharing one cache.

    Keys are computed lazily and remembered: a git source's key needs its ref resolved, which
    needs the package layer, so it can only be known once the stages before it are done.
    """

    def __init__(self, store: Store, recipes: list[Recipe], out_root: Path, *, keep: bool = False,
                 stream: bool = True, report_failures: bool = False, offline: bool = False) -> None:
        self.store = store
        # Offline (`list`): nothing is resolved; an unlocked ref's commit is the one last recorded.
        self.offline = offline
        self.report_failures = report_failures   # under plain doit, nobody else will say what failed
        self.recipes = recipes
        self.out_root = out_root.absolute()
        self.keep = keep
        self.stream = stream
        self.failures: list[tuple[str, BuildboxError]] = []
        self._memo: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    # -- keys -------------------------------------------------------------------------------
    def _remember(self, kind: str, name: str, compute: Callable[[], str]) -> str:
        with self._lock:
            if (kind, name) in self._memo:
                return self._memo[(kind, name)]
        value = compute()
        with self._lock:
            self._memo[(kind, name)] = value
        return value

    def set_key(self, spec: Set, digest: str | None = None) -> str:
        return keys.set_key(spec, digest)

    def sets(self, recipe: Recipe) -> list[tuple[Set, str | None]]:
        """The recipe's sets, each with the digest its lock pins (None without a lock)."""
        pinned = recipe.lock.pins["sets"] if recipe.lock else [None] * len(recipe.base.sets)
        return list(zip(recipe.base.sets, pinned))

    def base_document(self, recipe: Recipe) -> dict[str, Any]:
        return keys.base_document([keys.set_key(s, d) for s, d in self.sets(recipe)])

    def base_key(self, recipe: Recipe) -> str:
        return keys.key(self.base_document(recipe))

    def layer_document(self, recipe: Recipe) -> dict[str, Any]:
        if recipe.lock:
            return keys.layer_document(self.base_key(recipe), packages=recipe.lock.pins["packages"])
        return keys.layer_document(self.base_key(recipe), install=recipe.layer_install, build_deps=recipe.build_deps)

    def layer_key(self, recipe: Recipe) -> str:
        return keys.key(self.layer_document(recipe))

    def commit(self, recipe: Recipe) -> str | None:
        """The commit a git source's ref names now, or the one its lock pins (None for other sources)."""
        source = recipe.source
        if not isinstance(source, GitSource):
            return None
        if recipe.lock:
            return recipe.lock.pins["source"]["commit"]
        with self._lock:
            if ("commit", recipe.name) in self._memo:
                return self._memo[("commit", recipe.name)]
        if self.offline:
            last = self.store.last_run(recipe.name).get("git", {})
            if (last.get("url"), last.get("ref")) != (source.url, source.ref):
                raise BuildboxError(f"{recipe.name}: its ref {source.ref} has not been resolved yet")
            return last["commit"]
        from buildbox.source import resolve_git
        return self._remember("commit", recipe.name,
                              lambda: resolve_git(self.store, self.lower_layers(recipe), source,
                                                  where=recipe.at("source")))

    def source_pin(self, recipe: Recipe) -> dict[str, str]:
        """The source as its key knows it: the lock's pin, or what the recipe asks for now."""
        source = recipe.source
        if isinstance(source, UrlSource):
            return {"url": source.url, "sha256": source.sha256}
        if isinstance(source, GitSource):
            return {"git": source.url, "commit": self.commit(recipe)}
        return recipe.lock.pins["source"] if recipe.lock else {"debian": source.package}

    def source_document(self, recipe: Recipe) -> dict[str, Any]:
        pin = self.source_pin(recipe)
        # An unlocked Debian source: its version is the one the layer's package lists name.
        return keys.source_document(pin, layer=None if "version" in pin or "debian" not in pin
                                    else self.layer_key(recipe))

    def source_key(self, recipe: Recipe) -> str:
        return keys.key(self.source_document(recipe))

    def pins(self, recipe: Recipe) -> dict[str, Any]:
        """What the build stands on, in the lock's form: the lock's own pins, or without a lock
        those of the entries the recipe resolved to (so they must have been made)."""
        fetched = {"fetch": self.fetch_digest(recipe)} if recipe.fetch else {}
        if recipe.lock:
            return {**recipe.lock.pins, **fetched}
        layer = self.store.entry("layers", self.layer_key(recipe))
        source = self.store.entry("sources", self.source_key(recipe))
        if not (layer.is_dir() and source.is_dir()):
            raise BuildboxError(f"{recipe.name}: its packages and source are not resolved yet")
        return {"sets": [self.set_digest(s) for s in recipe.base.sets],
                "packages": read_meta(layer)["packages"], "source": read_meta(source), **fetched}

    # -- the fetch --------------------------------------------------------------------------
    def fetch_pin(self, recipe: Recipe) -> tuple[str | None, str]:
        """The digest the fetched tree must have, and who says so: the recipe, the lock, or none."""
        assert recipe.fetch
        if recipe.fetch.sha256:
            return recipe.fetch.sha256, "the recipe pins"
        if recipe.lock and "fetch" in recipe.lock.pins:
            return recipe.lock.pins["fetch"], "the lock pins"
        return None, ""

    def fetch_document(self, recipe: Recipe) -> dict[str, Any]:
        assert recipe.fetch
        return keys.fetch_document(self.layer_key(recipe), self.source_pin(recipe), recipe.fetch)

    def fetch_digest(self, recipe: Recipe) -> str:
        """The fetched tree the build stands on: the pinned one, or unpinned, the one the fetch's
        inputs gave when it last ran (it runs again only for `lock` and `run --refresh`)."""
        pinned, _ = self.fetch_pin(recipe)
        if pinned:
            return pinned
        last = self.store.last_run(recipe.name).get("fetch", {})
        if last.get("key") != keys.key(self.fetch_document(recipe)):
            raise BuildboxError(f"{recipe.name}: its [fetch] has not run yet")
        return last["sha256"]

    def fetched(self, recipe: Recipe) -> bool:
        try:
            return self.store.intact("fetches", self.fetch_digest(recipe))
        except BuildboxError:
            return False

    def make_fetch(self, recipe: Recipe) -> None:
        """Run the fetch unless its tree is cached; a pinned fetch must give the pinned digest."""
        if self.fetched(recipe):
            return
        pinned, by = self.fetch_pin(recipe)
        last = self.store.last_run(recipe.name).get("fetch")
        if not last:
            why = f"fetch {recipe.name}: first build"
        elif pinned:
            why = f"fetch {recipe.name}: rebuilding: pinned tree {pinned[:12]} not in the cache"
        else:
            found = keys.reasons(last.get("document", {}), self.fetch_document(recipe))
            why = f"fetch {recipe.name}: rebuilding: {'; '.join(found) or 'cache entry gone'}"
        log.say(why)
        digest = self.fetch_afresh(recipe, self.build_layers(recipe), pinned, by, why)
        if not pinned:
            log.say(f"fetch {recipe.name}: sha256 {digest}")
            log.say(f"fetch {recipe.name}: unpinned fetch: pin it with buildbox lock")

    def fetch_afresh(self, recipe: Recipe, layers: list[Path], pinned: str | None = None, by: str = "",
                     why: str = "") -> str:
        """Run the fetch, file its tree under its digest (nothing is kept if a pin says otherwise),
        and record it as the recipe's fetch for these inputs; return the digest."""
        from buildbox import fetch
        logfile = self.logfile(recipe.name, "fetch", why)
        last = self.store.dir("recipes") / f"{recipe.name}.fetch-listing"   # not NAME.json: no recipe's record

        def make(tmp: Path) -> str:
            with log.step(f"Fetching what {recipe.name}'s build needs ([fetch], with the network)"):
                got = fetch.run_fetch(self.store, recipe, layers, tmp / "tree", logfile, stream=self.stream)
            if pinned and got != pinned:
                raise fetch.mismatch(recipe, got, pinned, by, tmp / "tree", last)
            fetch.save_listing(tmp / fetch.LISTING, tmp / "tree")
            write_meta(tmp, {"sha256": got})
            return got
        digest = self.store.add("fetches", make)
        shutil.copyfile(self.store.entry("fetches", digest) / fetch.LISTING, last)
        record = self.store.last_run(recipe.name)
        document = self.fetch_document(recipe)
        record["fetch"] = {"key": keys.key(document), "sha256": digest, "document": document}
        self.store.record_run(recipe.name, record)
        return digest

    def build_document(self, recipe: Recipe) -> dict[str, Any]:
        return keys.build_document(self.pins(recipe), recipe)

    def build_key(self, recipe: Recipe) -> str:
        return self._remember("build", recipe.name, lambda: keys.key(self.build_document(recipe)))

    def stage_keys(self, recipe: Recipe) -> Iterator[tuple[str, str | None]]:
        """Every stage's key for the recipe, in pipeline order (`buildbox list --keys`); None for
        one that stands on what is not resolved yet."""
        stages: list[tuple[str, Callable[[], str]]] = [
            *((f"set{i + 1}", lambda s=s, d=d: keys.set_key(s, d)) for i, (s, d) in enumerate(self.sets(recipe))),
            ("base", lambda: self.base_key(recipe)), ("layer", lambda: self.layer_key(recipe)),
            ("source", lambda: self.source_key(recipe)),
            *([("fetch", lambda: self.fetch_digest(recipe))] if recipe.fetch else []),
            ("build", lambda: self.build_key(recipe))]
        for stage, compute in stages:
            try:
                yield stage, compute()
            except BuildboxError:
                yield stage, None

    # -- paths ------------------------------------------------------------------------------
    def set_kind(self, spec: Set) -> str:
        return "downloads" if isinstance(spec, TarballSet) else "bootstraps"

    def base_layers(self, recipe: Recipe) -> list[Path]:
        """The read-only layers of the recipe's base, top first: the base over its bootstraps."""
        return [self.store.entry("bases", self.base_key(recipe)) / "root", *self._under_base(self.sets(recipe))]

    def lower_layers(self, recipe: Recipe) -> list[Path]:
        """The read-only layers of a box for this recipe, top first: packages over the base."""
        return [self.store.entry("layers", self.layer_key(recipe)) / "root", *self.base_layers(recipe)]

    def last_stage_before_build(self, recipe: Recipe) -> str:
        """What must be done before the build's box can be made (for verify and shell)."""
        return "fetch" if recipe.fetch else "source"

    def fetched_tree(self, recipe: Recipe) -> Path | None:
        """The fetched tree the build sees at $FETCH (None without a [fetch])."""
        return self.store.entry("fetches", self.fetch_digest(recipe)) / "tree" if recipe.fetch else None

    def build_layers(self, recipe: Recipe) -> list[Path]:
        """The read-only layers of the recipe's build box (and its shell), top first: the source
        over the packages over the base."""
        return [self.store.entry("sources", self.source_key(recipe)), *self.lower_layers(recipe)]

    def out_dir(self, recipe: Recipe) -> Path:
        return self.out_root / recipe.name

    def logfile(self, recipe_or_stage: str, stage: str, why: str = "") -> Path:
        """A stage's log, new, its first line saying why the stage runs."""
        path = self.store.dir("logs") / recipe_or_stage / f"{stage}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"buildbox: {why}\n" if why else "")
        return path

    # -- why a stage runs ---------------------------------------------------------------------
    def why(self, stage: str, recipe: Recipe, kind: str, document: dict[str, Any]) -> str:
        """Why the recipe's stage is made: `STAGE NAME: first build` or `STAGE NAME: rebuilding:
        REASON; REASON`, from the key document of the entry its last run stood on."""
        previous = self.store.last_run(recipe.name).get("stages", {}).get(stage)
        if previous is None:
            return f"{stage} {recipe.name}: first build"
        if previous == keys.key(document):
            found = ["cache entry gone"]   # removed by gc, clean or fsck, or found changed
        else:
            old = self.store.inputs(kind, previous)
            found = (keys.reasons(old, document) if old else []) or ["inputs changed (no record of the previous ones)"]
        return f"{stage} {recipe.name}: rebuilding: {'; '.join(found)}"

    def stale(self, recipe: Recipe) -> str | None:
        """Offline, why the recipe needs a build: the line its first stage not in the cache would
        say, or None when every stage is (or one cannot be known without resolving)."""
        kinds = (("base", "bases", self.base_document), ("layer", "layers", self.layer_document),
                 ("source", "sources", self.source_document), ("build", "builds", self.build_document))
        try:
            for stage, kind, document in kinds:
                doc = document(recipe)
                if not self.store.intact(kind, keys.key(doc)):
                    return self.why(stage, recipe, kind, doc)
        except BuildboxError:
            return None
        return None

    def announce(self, stage: str, recipe: Recipe, kind: str, document: dict[str, Any]) -> str:
        """Say why a stage runs, on one line; returned for the stage's log."""
        line = self.why(stage, recipe, kind, document)
        log.say(line)
        return line

    def remember(self, recipe: Recipe) -> None:
        """Record what the recipe stands on now (each made stage's key, and the commit its ref
        named): the next run says why against it, and `list` works from it offline."""
        before = self.store.last_run(recipe.name)
        record = dict(before)
        stages = dict(record.get("stages", {}))
        offline, self.offline = self.offline, True   # only what this run resolved; nothing afresh
        try:
            kinds = {**STAGE_KINDS, **{f"set{i + 1}": self.set_kind(s) for i, (s, _) in enumerate(self.sets(recipe))}}
            for stage, key in self.stage_keys(recipe):
                if key and self.store.entry(kinds[stage], key).is_dir():
                    stages[stage] = key
        finally:
            self.offline = offline
        record["stages"] = stages
        commit = self._memo.get(("commit", recipe.name))
        if commit and isinstance(recipe.source, GitSource):
            record["git"] = {"url": recipe.source.url, "ref": recipe.source.ref, "commit": commit,
                             "when": int(time.time())}
        if record != before:   # the cached no-op writes nothing
            self.store.record_run(recipe.name, record)

    # -- stages -----------------------------------------------------------------------------
    def make_set(self, spec: Set, digest: str | None = None, where: str = "", recipe: Recipe | None = None,
                 stage: str = "") -> None:
        if isinstance(spec, TarballSet):
            from buildbox.source import ensure_download
            ensure_download(self.store, spec.url, spec.sha256)
            return
        document = keys.set_document(spec, digest)
        self.store.ensure("bootstraps", keys.key(document), lambda tmp: self._bootstrap(
            spec, tmp, digest, where, self.announce(stage, recipe, "bootstraps", document) if recipe else ""),
            inputs=document)

    def _bootstrap(self, spec: BootstrapSet, tmp: Path, digest: str | None = None, where: str = "",
                   why: str = "") -> str:
        """mmdebstrap into tmp/root; a locked bootstrap must come out with its pinned digest."""
        from buildbox.sets import make_bootstrap
        with log.step(f"Bootstrapping Debian {spec.suite} ({spec.variant}) with mmdebstrap"):
            try:
                make_bootstrap(self.store, spec, tmp / "root", self.logfile("bootstrap", self.set_key(spec)[:12], why))
            except BuildFailed as err:
                from buildbox.packages import explain_apt_failure
                raise explain_apt_failure(err, spec.where) from None
        got = tree_sha256(tmp / "root")
        if digest and got != digest:
            raise InputError(f"mmdebstrap now makes {spec.suite} with sha256 {got[:12]}…, not the locked "
                             f"{digest[:12]}…: {spec.mirror} has changed since the lock was written", where=where,
                             hint="`buildbox run --refresh RECIPE` locks what the archive has now; to rebuild "
                             "the locked bits, use a cache that holds them or a snapshot.debian.org mirror")
        write_meta(tmp, {"sha256": got, "digest-format": DIGEST_FORMAT, "suite": spec.suite, "mirror": spec.mirror, "variant": spec.variant,
                         "packages": list(spec.packages)})
        return got

    def set_path(self, spec: Set, digest: str | None = None) -> Path:
        """A tarball set's file, or a bootstrap's tree."""
        return self.store.entry(self.set_kind(spec), self.set_key(spec, digest)) / (
            "file" if isinstance(spec, TarballSet) else "root")

    def set_digest(self, spec: Set, digest: str | None = None) -> str:
        if isinstance(spec, TarballSet):
            return spec.sha256
        return digest or self.bootstrap_digest(self.set_key(spec))

    def bootstrap_digest(self, key: str) -> str:
        """A bootstrap's tree digest, in this digest format: one made before it is hashed again
        once (about a second) and its meta updated, so that an old cache keeps its bootstraps."""
        entry = self.store.entry("bootstraps", key)
        meta = read_meta(entry)
        if meta.get("digest-format") == DIGEST_FORMAT:
            return meta["sha256"]
        # Upgraded only if it still is the tree its old digest names: a damaged one is made again.
        if meta.get("sha256") != tree_sha256(entry / "root", format=1):
            if self.store.read_only:
                raise BuildboxError(f"the cached bootstrap {key[:12]} changed since it was made")
            log.warn(f"the cached bootstrap {key[:12]} was changed since it was made; removed it, to make it again")
            self.store.remove_entry("bootstraps", key)
            raise BuildboxError(f"the cached bootstrap {key[:12]} was changed since it was made and is removed",
                                hint="run again: it is made afresh")
        digest = tree_sha256(entry / "root")
        if not self.store.read_only:
            self.store.update_meta("bootstraps", key, {"sha256": digest, "digest-format": DIGEST_FORMAT,
                                                       "sha256-v1": meta.get("sha256")})
        return digest

    def make_base(self, recipe: Recipe) -> None:
        self._make_base(recipe.base, self.sets(recipe), recipe)

    def _make_base(self, base: Base, sets: list[tuple[Set, str | None]], recipe: Recipe | None = None) -> str:
        """The base: an overlay layer over its leading bootstrap sets (nothing of them copied),
        holding the sets after them and buildbox's own /etc, /dev and build user."""
        from buildbox.box import Box
        document = keys.base_document([keys.set_key(s, d) for s, d in sets])
        key = keys.key(document)
        under = self._under_base(sets)
        rest = [(f"{s.where}: set {i + 1}", self.set_path(s, d)) for i, (s, d) in enumerate(sets)][len(under):]

        def make(tmp: Path) -> None:
            if recipe:
                self.announce("base", recipe, "bases", document)
            with log.step(f"Making the base {base.name} from {len(sets)} set(s)"):
                if under:
                    # Host code fills this overlay and nothing runs in it: no ids of its own.
                    with Box(self.store, under, label="base", upper=tmp / "root", ids=False) as box:
                        make_base(box.root, rest, base.unpack)
                else:
                    make_base(tmp / "root", rest, base.unpack)
            write_meta(tmp, {"base": base.name, "sets": [self.set_digest(s, d) for s, d in sets]})
        self.store.ensure("bases", key, make, inputs=document)
        return key

    def _under_base(self, sets: list[tuple[Set, str | None]]) -> list[Path]:
        """The bootstrap trees a base is layered on, top first: those of its leading bootstrap sets."""
        under = []
        for spec, digest in sets:
            if not isinstance(spec, BootstrapSet):
                break
            under.insert(0, self.set_path(spec, digest))
        return under

    def make_layer(self, recipe: Recipe) -> None:
        document = self.layer_document(recipe)
        self.store.ensure("layers", keys.key(document), lambda tmp: self._install(
            recipe, tmp, self.base_layers(recipe), self.announce("layer", recipe, "layers", document)),
            inputs=document)

    def _install(self, recipe: Recipe, tmp: Path, base: list[Path], why: str = "") -> None:
        from buildbox.packages import explain_apt_failure, make_layer
        if recipe.lock:
            what = f"the {len(recipe.lock.pins['packages'])} packages of {recipe.lock.path.name}"
        else:
            what = ", ".join(recipe.layer_install + tuple(f"build-deps of {p}" for p in recipe.build_deps)) or "nothing"
        if recipe.implicit and not recipe.lock:
            implicit = (f"layer {recipe.name}: also installing {', '.join(recipe.implicit)}, which a Debian source "
                        "needs (as sbuild does)")
            log.say(implicit)
            why = f"{why}\nbuildbox: {implicit}" if why else implicit
        with log.step(f"Installing packages into a layer ({what})"):
            try:
                make_layer(self.store, base, recipe.layer_install, recipe.build_deps, tmp,
                           self.logfile(recipe.name, "packages", why), lock=recipe.lock)
            except BuildFailed as err:
                raise explain_apt_failure(err, recipe.at("packages"), recipe.lock) from None

    def make_source(self, recipe: Recipe) -> None:
        document = self.source_document(recipe)
        self.store.ensure("sources", keys.key(document), lambda tmp: self._fetch(
            recipe, tmp, self.lower_layers(recipe), self.announce("source", recipe, "sources", document)),
            inputs=document)

    def _fetch(self, recipe: Recipe, tmp: Path, layers: list[Path], why: str = "") -> None:
        from buildbox.packages import explain_apt_failure
        from buildbox.source import make_source
        pin = recipe.lock.pins["source"] if recipe.lock and isinstance(recipe.source, DebianSource) else None
        with log.step(f"Fetching the source of {recipe.name}"):
            try:
                make_source(self.store, layers, recipe.source, self.commit(recipe), tmp,
                            self.logfile(recipe.name, "source", why), pin=pin, limits=recipe.unpack)
            except BuildFailed as err:
                raise explain_apt_failure(err, recipe.at("source"), recipe.lock) from None

    def make_build(self, recipe: Recipe) -> None:
        from buildbox.build import make_build
        key = self.build_key(recipe)
        document = self.build_document(recipe)

        def make(tmp: Path) -> None:
            why = self.announce("build", recipe, "builds", document)
            with log.step(f"Building {recipe.name}"):
                make_build(self.store, recipe, self.build_layers(recipe), tmp, self.inputs(recipe, key),
                           self.logfile(recipe.name, "build", why), stream=self.stream, keep=self.keep,
                           fetched=self.fetched_tree(recipe))
        self.store.ensure("builds", key, make, inputs=document)

    def resolve(self, recipe: Recipe) -> dict[str, Any]:
        """The pins of a lock for recipe, resolved afresh against its mirrors and repositories,
        whatever the cache holds: a new bootstrap, a new apt install, the ref's commit now.

        What is made is filed under the key it has once locked, so the locked run after it
        reuses it: locking costs one bootstrap and one install, not one more of each.
        """
        recipe = dataclasses.replace(recipe, lock=None)
        sets: list[tuple[Set, str | None]] = []
        for spec in recipe.base.sets:
            if isinstance(spec, TarballSet):
                self.make_set(spec)
                sets.append((spec, spec.sha256))
            else:
                digest = ""

                def bootstrap(tmp: Path, spec: BootstrapSet = spec) -> str:
                    nonlocal digest
                    digest = self._bootstrap(spec, tmp)
                    document = keys.set_document(spec, digest)
                    write_inputs(tmp, document)
                    return keys.key(document)
                self.store.add("bootstraps", bootstrap)
                sets.append((spec, digest))
        base_key = self._make_base(recipe.base, sets)
        base = [self.store.entry("bases", base_key) / "root", *self._under_base(sets)]

        def install(tmp: Path) -> str:
            self._install(recipe, tmp, base)
            document = keys.layer_document(base_key, packages=read_meta(tmp)["packages"])
            write_inputs(tmp, document)
            return keys.key(document)
        layer = self.store.entry("layers", self.store.add("layers", install))
        packages = read_meta(layer)["packages"]
        layers = [layer / "root", *base]
        source = recipe.source
        if isinstance(source, UrlSource):
            pin = {"url": source.url, "sha256": source.sha256}
        elif isinstance(source, GitSource):
            from buildbox.source import resolve_git
            pin = {"git": source.url, "commit": resolve_git(self.store, layers, source, where=recipe.at("source"))}
        else:
            def fetch(tmp: Path) -> str:
                self._fetch(recipe, tmp, layers)
                document = keys.source_document(read_meta(tmp))
                write_inputs(tmp, document)
                return keys.key(document)
            pin = read_meta(self.store.entry("sources", self.store.add("sources", fetch)))
        pins = {"sets": [self.set_digest(s, d) for s, d in sets], "packages": packages, "source": pin}
        if recipe.fetch:
            # Afresh, over the source this lock pins: lock runs the fetch and writes what it gave.
            if "commit" in pin:
                with self._lock:
                    self._memo[("commit", recipe.name)] = pin["commit"]
            document = keys.source_document(pin)
            source = self.store.ensure("sources", keys.key(document), lambda tmp: self._fetch(recipe, tmp, layers),
                                       inputs=document)
            pins["fetch"] = self.fetch_afresh(recipe, [source, *layers], recipe.fetch.sha256, "the recipe pins")
        return pins

    def inputs(self, recipe: Recipe, key: str) -> dict[str, Any]:
        """What the manifest records as the build's inputs."""
        pins = self.pins(recipe)
        return {"key": key, "base": recipe.base.name, "sets": pins["sets"], "packages": pins["packages"],
                "source": pins["source"], "lock": str(recipe.lock.path) if recipe.lock else None,
                **({"fetch": {"sha256": pins["fetch"], "pinned": self.fetch_pin(recipe)[1] or "unpinned"}}
                   if recipe.fetch else {}),
                "materials": self.materials(recipe, pins),
                # What this build stands on, by cache entry: gc keeps these while it keeps the build.
                "entries": {"builds": [key], "layers": [self.layer_key(recipe)],
                            "sources": [self.source_key(recipe)], "bases": [self.base_key(recipe)],
                            "downloads": [self.set_key(s) for s in recipe.base.sets if isinstance(s, TarballSet)]
                            + ([recipe.source.sha256] if isinstance(recipe.source, UrlSource) else []),
                            "bootstraps": [self.set_key(s, d) for s, d in self.sets(recipe)
                                           if isinstance(s, BootstrapSet)],
                            **({"fetches": [pins["fetch"]]} if "fetch" in pins else {})}}

    def materials(self, recipe: Recipe, pins: dict[str, Any]) -> list[dict[str, Any]]:
        """The build's inputs by location and digest, as SLSA provenance lists materials."""
        found = []
        source = pins["source"]
        for spec, digest in zip(recipe.base.sets, pins["sets"]):
            uri = spec.url if isinstance(spec, TarballSet) else f"mmdebstrap:{spec.mirror}?suite={spec.suite}&variant={spec.variant}"
            found.append({"uri": uri, "digest": {"sha256": digest}})
        if "commit" in source:
            found.append({"uri": f"git+{source['git']}", "digest": {"gitCommit": source["commit"]}})
        elif "sha256" in source:
            found.append({"uri": source["url"], "digest": {"sha256": source["sha256"]}})
        else:
            found.append({"uri": f"deb-src:{source['debian']}/{source['dsc']}", "digest": {"sha256": source["dsc-sha256"]}})
        if "fetch" in pins:
            found.append({"uri": f"buildbox-fetch:{recipe.name}", "digest": {"sha256": pins["fetch"]}})
        return found

    def install_out(self, recipe: Recipe) -> None:
        from buildbox import out
        key = self.build_key(recipe)
        try:
            out.install(self.store.entry("builds", key), self.out_dir(recipe), self.stamps(recipe))
        except out.CorruptEntry as err:
            # Never shipped: the damaged entry goes, and the build runs again.
            log.warn(f"{err}; removed it, building {recipe.name} again")
            remove_tree(self.store.entry("builds", key))
            self.make_build(recipe)
            out.install(self.store.entry("builds", key), self.out_dir(recipe), self.stamps(recipe))

    def out_current(self, recipe: Recipe) -> bool:
        from buildbox import out
        return out.is_current(self.out_dir(recipe), self.build_key(recipe), self.stamps(recipe))

    def stamps(self, recipe: Recipe) -> Path:
        """Where the stat signatures of what was installed at out/NAME are kept (by its path)."""
        where = hashlib.sha256(str(self.out_dir(recipe).absolute()).encode()).hexdigest()
        return self.store.root / "installed" / f"{where}.json"

    # -- doit -------------------------------------------------------------------------------
    def _action(self, name: str, work: Callable[[], None]) -> Callable[[], Any]:
        def action() -> Any:
            try:
                work()
            except (BuildboxError, OSError) as err:
                failure = os_failure(err, self.store.root) if isinstance(err, OSError) else err
                self.failures.append((name, failure))
                if self.report_failures:
                    log.error(failure)
                return TaskFailed(str(failure), report=False)
            return True
        return action

    def _cached(self, check: Callable[[], bool]) -> Callable[[], bool]:
        """An uptodate check; a key that can't be computed yet means "run", and the action will say why."""
        def uptodate() -> bool:
            try:
                return check()
            except BuildboxError:
                return False
        return uptodate

    def namespace(self) -> dict[str, Any]:
        """Task generators in doit's dodo form: task_set, task_base, ... and DOIT_CONFIG."""
        sets: dict[str, tuple[Set, str | None, str, Recipe, str]] = {}
        for recipe in self.recipes:
            for index, (spec, digest) in enumerate(self.sets(recipe)):
                where = recipe.lock.at(f"set.{index}") if recipe.lock else spec.where
                sets.setdefault(self.set_key(spec, digest), (spec, digest, where, recipe, f"set{index + 1}"))
        bases = {self.base_key(r): r for r in self.recipes}
        layers = {self.layer_key(r): r for r in self.recipes}

        def base_task(recipe: Recipe) -> str:
            # A locked base is named by its key too: recipes may lock one base differently.
            return recipe.base.name + (f"@{self.base_key(recipe)[:8]}" if recipe.lock else "")

        def task_set() -> Iterator[dict[str, Any]]:
            """Sets: tarballs checked by sha256, Debian bootstraps."""
            for key, (spec, digest, where, recipe, stage) in sets.items():
                yield {"name": key[:12],
                       "actions": [self._action(f"set:{key[:12]}", lambda s=spec, d=digest, w=where, r=recipe,
                                                stage=stage: self.make_set(s, d, w, r, stage))],
                       "uptodate": [lambda s=spec, k=key: self.store.intact(self.set_kind(s), k)],
                       "doc": f"set {getattr(spec, 'url', None) or getattr(spec, 'suite', '')}"}

        def task_base() -> Iterator[dict[str, Any]]:
            """Base roots unpacked from sets, with /etc, /dev and the build user."""
            for key, recipe in bases.items():
                yield {"name": base_task(recipe),
                       "actions": [self._action(f"base:{base_task(recipe)}", lambda r=recipe: self.make_base(r))],
                       "task_dep": [f"set:{self.set_key(s, d)[:12]}" for s, d in self.sets(recipe)],
                       "uptodate": [lambda k=key: self.store.intact("bases", k)],
                       "doc": f"base root {recipe.base.name}"}

        def task_layer() -> Iterator[dict[str, Any]]:
            """Package layers: apt installs kept as overlay layers."""
            for key, recipe in layers.items():
                yield {"name": key[:12], "actions": [self._action(f"layer:{key[:12]}", lambda r=recipe: self.make_layer(r))],
                       "task_dep": [f"base:{base_task(recipe)}"],
                       "uptodate": [lambda k=key: self.store.intact("layers", k)],
                       "doc": f"packages for {recipe.name}"}

        def per_recipe(stage: str, work: Callable[[Recipe], None], check: Callable[[Recipe], bool],
                       dep: Callable[[Recipe], str]) -> Iterator[dict[str, Any]]:
            for recipe in self.recipes:
                yield {"name": recipe.name,
                       "actions": [self._action(f"{stage}:{recipe.name}", lambda r=recipe: work(r))],
                       "task_dep": [dep(recipe)],
                       "uptodate": [self._cached(lambda r=recipe: check(r))],
                       "doc": f"{stage} of {recipe.path}"}

        def task_source() -> Iterator[dict[str, Any]]:
            """Sources: a git commit, a tarball or a Debian source package in /build/src."""
            yield from per_recipe("source", self.make_source,
                                  lambda r: self.store.intact("sources", self.source_key(r)),
                                  lambda r: f"layer:{self.layer_key(r)[:12]}")

        def task_fetch() -> Iterator[dict[str, Any]]:
            """Fetches: a [fetch] script with the network, its $FETCH tree pinned by digest."""
            for recipe in self.recipes:
                if recipe.fetch:
                    yield {"name": recipe.name,
                           "actions": [self._action(f"fetch:{recipe.name}", lambda r=recipe: self.make_fetch(r))],
                           "task_dep": [f"source:{recipe.name}"],
                           "uptodate": [lambda r=recipe: self.fetched(r)],
                           "doc": f"fetch of {recipe.path}"}

        def task_build() -> Iterator[dict[str, Any]]:
            """Builds: the recipe's script as the build user, checked, cached."""
            yield from per_recipe("build", self.make_build,
                                  lambda r: self.store.intact("builds", self.build_key(r)),
                                  lambda r: f"{'fetch' if r.fetch else 'source'}:{r.name}")

        def task_out() -> Iterator[dict[str, Any]]:
            """Artifacts and manifest put at out/NAME/."""
            yield from per_recipe("out", self.install_out, self.out_current, lambda r: f"build:{r.name}")

        return {"task_set": task_set, "task_base": task_base, "task_layer": task_layer,
                "task_source": task_source, "task_fetch": task_fetch, "task_build": task_build, "task_out": task_out,
                # doit's dependency file in memory: every task's uptodate is the cache itself, so the
                # file held nothing buildbox reads, and writing it after the work could fail on a full
                # disk (sqlite's "database or disk is full") as a traceback from inside doit, exit 3.
                "DOIT_CONFIG": {"backend": "sqlite3", "dep_file": ":memory:",
                                "verbosity": 2, "reporter": Reporter, "continue": True,
                                "default_tasks": [f"out:{r.name}" for r in self.recipes]}}

    def reap(self) -> None:
        """Remove the boxes and half-made entries of runs that died (in a buildbox cache only)."""
        self.store.claim(create=True)
        from buildbox.box import reap_dead_boxes
        from buildbox.cgroup import reap_dead_groups
        reap_dead_groups()
        for path in [*reap_dead_boxes(self.store), *self.store.remove_stale_tmp()]:
            log.say(f"buildbox: removed {path}, left by a run that died")

    def run(self, jobs: int = 1, stage: str = "out") -> None:
        """Bring every recipe's stage (out/, by default) up to date; raise the first failure."""
        self.reap()
        argv = ["run", "--continue", "-n", str(jobs), "-P", "thread", *(f"{stage}:{r.name}" for r in self.recipes)]
        with self.store.in_use():
            code = DoitMain(ModuleTaskLoader(self.namespace()), config_filenames=()).run(argv)
            for recipe in self.recipes:
                self.remember(recipe)
        if self.failures:
            interrupted = [err for _, err in self.failures if isinstance(err, Interrupted)]
            raise interrupted[0] if interrupted else self.failures[0][1]
        if code != 0:
            raise BuildboxError(f"doit stopped with status {code}")


def relock(store: Store, recipes: list[Recipe]) -> Iterator[tuple[Path, dict[str, Any], list[str] | None]]:
    """Resolve each recipe afresh and write its lock; yield its path, pins and what changed
    (None for a lock that did not exist)."""
    planner = Planner(store, recipes, Path("out"), stream=False)
    planner.reap()
    with store.in_use():
        for recipe in recipes:
            existed = lock_path(recipe.path).exists()
            pins = planner.resolve(recipe)
            changed = write_lock(recipe, pins)
            yield lock_path(recipe.path), pins, changed if existed else None


class Reporter(ConsoleReporter):
    """doit's report, in buildbox's words: which stages ran and which were up to date."""

    def execute_task(self, task: Any) -> None:
        log.say(f"--> {task.name}")

    def skip_uptodate(self, task: Any) -> None:
        if not log.quiet:
            log.say(f"    up to date: {task.name}")

    def add_failure(self, task: Any, fail: Any) -> None:
        # buildbox reports its own errors; a stage skipped because the one below it failed says
        # nothing new. What is left is doit's own trouble (an exception in buildbox's code).
        message = fail.get_msg().strip()
        if getattr(fail, "report", True) and message not in task.task_dep:
            log.say(f"buildbox: {task.name}: {message.splitlines()[-1] if message else fail}")

    def complete_run(self) -> None:
        if self.runtime_errors:
            for error in self.runtime_errors:
                log.say(f"buildbox: {error}")
