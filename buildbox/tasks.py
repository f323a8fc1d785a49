"""The doit task graph that ties the stages together, for the buildbox command and for dodo.py.

Stages: set -> base -> layer -> source [-> fetch] -> build -> out. Each task is up to date exactly
when the cache holds the entry for its content key (keys.py, from the pins resolve.py knows);
its action calls the stage's module; doit brings the graph, the order and the parallel runs.
Nothing else lives here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain
from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter

from buildbox import base, build, fetch, keys, layers, log, out, packages, sets, source
from buildbox.constants import RUNTIME_MAX_BYTES
from buildbox.context import Context
from buildbox.errors import BuildboxError, Interrupted, failure_of
from buildbox.keys import Stage
from buildbox.pins import Unresolved
from buildbox.recipe import BootstrapSet, GitSource, Recipe, Set, TarballSet
from buildbox.records import MANIFEST, FetchRecord, Manifest
from buildbox.resolve import Resolver, set_digest
from buildbox.store import Store, remove_tree
from buildbox.why import announce, record_fetch, remember, why_fetch


if TYPE_CHECKING:   # the remote cache's code is imported only by a run that has one
    from buildbox.remote import RemoteCache, Wanted

# A test's way to provoke a fault no check expects in one stage (tests/test_exit_codes.py):
# the path every unexpected exception takes.
FAULT_VARIABLE = "BUILDBOX_TEST_FAULT"
FAULT = os.environ.get(FAULT_VARIABLE, "")


class Graph:
    """The stage tasks of a set of recipes, sharing one cache."""

    def __init__(self, store: Store, recipes: list[Recipe], out_root: Path, *, keep: bool = False,
                 stream: bool = True, report_failures: bool = False, offline: bool = False,
                 remote: RemoteCache | None = None) -> None:
        self.ctx = Context(store, stream=stream, keep=keep)
        self.store = store
        self.remote = remote
        self.resolver = Resolver(store, offline=offline)
        self.report_failures = report_failures   # under plain doit, nobody else will say what failed
        self.recipes = recipes
        self.out_root = out_root.absolute()
        self.failures: list[tuple[str, BaseException]] = []
        self._stages: dict[tuple[str, object], dict[str, Stage]] = {}

    def stages(self, recipe: Recipe) -> dict[str, Stage]:
        """The recipe's stages with their keys, from its pins as far as they are known now (the
        keys of the same pins computed once: every task's uptodate asks for them)."""
        known = self.resolver.known(recipe)
        memo = (recipe.name, known)
        found = self._stages.get(memo)
        if found is None:
            found = self._stages[memo] = keys.stages(recipe, known)
        return found

    def out_dir(self, recipe: Recipe) -> Path:
        return self.out_root / recipe.name

    def stamps(self, recipe: Recipe) -> Path:
        """Where the stat signatures of what was installed at out/NAME are kept (by its path)."""
        where = hashlib.sha256(str(self.out_dir(recipe).absolute()).encode()).hexdigest()
        return self.store.root / "installed" / f"{where}.json"

    def _intact(self, recipe: Recipe, stage: str) -> bool:
        found = self.stages(recipe)[stage]
        return isinstance(found.key, str) and self.store.intact(found.kind, found.key)

    # -- the stages' actions: each calls its stage's module ------------------------------------
    def make_set(self, spec: Set, stage: Stage, pinned: str | None, where: str, recipe: Recipe) -> None:
        if isinstance(spec, TarballSet):
            sets.ensure_download(self.store, spec.url, spec.sha256)
            return
        assert isinstance(spec, BootstrapSet) and isinstance(stage.key, str)
        self.store.ensure(stage.kind, stage.key, lambda tmp: sets.make(
            self.ctx, spec, tmp, pinned=pinned, where=where, why=announce(self.store, recipe, stage)),
            inputs=stage.document)

    def make_base(self, recipe: Recipe) -> None:
        stages = self.stages(recipe)
        stage = stages["base"]
        under = layers.under_base(self.store, recipe, stages)
        rest = [(f"{spec.where}: set {i + 1}", layers.set_path(self.store, spec, stages[f"set{i + 1}"]))
                for i, spec in enumerate(recipe.base.sets)][len(under):]

        def make(tmp: Path) -> None:
            announce(self.store, recipe, stage)
            digests = [set_digest(self.resolver, spec, pinned) for spec, pinned in
                       zip(recipe.base.sets, self.resolver.known(recipe).lock_sets)]
            unknown = next((d for d in digests if isinstance(d, Unresolved)), None)
            if unknown:
                raise BuildboxError(unknown.why, hint="run again: it is made afresh")
            base.make(self.ctx, recipe.base, under, rest, digests, tmp)   # type: ignore[arg-type]
        self.store.ensure(stage.kind, stage.key, make, inputs=stage.document)   # type: ignore[arg-type]

    def make_layer(self, recipe: Recipe) -> None:
        stages = self.stages(recipe)
        stage = stages["layer"]
        self.store.ensure(stage.kind, stage.key, lambda tmp: packages.make(   # type: ignore[arg-type]
            self.ctx, recipe, layers.stack(self.store, recipe, stages, "essentials"), tmp,
            announce(self.store, recipe, stage)), inputs=stage.document)

    def make_essentials(self, recipe: Recipe) -> None:
        stages = self.stages(recipe)
        stage = stages["essentials"]
        self.store.ensure(stage.kind, stage.key, lambda tmp: packages.make_essentials(   # type: ignore[arg-type]
            self.ctx, recipe, layers.stack(self.store, recipe, stages, "base"), tmp,
            announce(self.store, recipe, stage)), inputs=stage.document)

    def resolve_ref(self, recipe: Recipe) -> str | BuildboxError | None:
        """An unlocked git ref's commit, asked of its repository once a run (None for other sources)."""
        if not isinstance(recipe.source, GitSource) or recipe.lock or self.resolver.offline:
            return None
        under = layers.stack(self.store, recipe, self.stages(recipe), "layer")
        return self.resolver.resolve_ref(recipe, under)

    def make_source(self, recipe: Recipe) -> None:
        found = self.resolve_ref(recipe)
        if isinstance(found, BuildboxError):
            raise found
        stages = self.stages(recipe)
        stage = stages["source"]
        known = self.resolver.known(recipe).source
        commit = getattr(known, "commit", None)
        self.store.ensure(stage.kind, stage.key, lambda tmp: source.make(   # type: ignore[arg-type]
            self.ctx, recipe, layers.stack(self.store, recipe, stages, "layer"), tmp,
            announce(self.store, recipe, stage), commit=commit), inputs=stage.document)

    def source_current(self, recipe: Recipe) -> bool:
        # The one uptodate that asks the world: an unlocked ref's commit names the entry. A ref
        # that cannot be resolved is not current; the action says why.
        self.resolve_ref(recipe)
        return self._intact(recipe, "source")

    def make_fetch(self, recipe: Recipe) -> None:
        """Run the fetch unless its tree is cached; a pinned fetch must give the pinned digest."""
        assert recipe.fetch
        if self._intact(recipe, "fetch"):
            return
        stages = self.stages(recipe)
        pinned, by = fetch_pin(recipe)
        if pinned and self.remote and self.remote.take_fetch(self.store, recipe.name, pinned, lambda tar, tmp: fetch.unpack(
                recipe, tar, tmp, pinned), limit=recipe.unpack.unpacked):
            log.say(f"fetch {recipe.name}: from remote cache (sha256 {pinned[:12]}, digested again)")
            self.file_fetch(recipe, stages, pinned)
            return
        line = why_fetch(self.store, recipe, stages["fetch"], pinned)
        log.say(line)
        digest = self.fetch_afresh(recipe, stages, pinned, by, line)
        if not pinned:
            log.say(f"fetch {recipe.name}: sha256 {digest}")
            log.say(f"fetch {recipe.name}: unpinned fetch: pin it with buildbox lock")

    def fetch_afresh(self, recipe: Recipe, stages: dict[str, Stage], pinned: str | None, by: str,
                     why: str = "") -> str:
        """Run the fetch, file its tree under its digest (nothing is kept if a pin says otherwise),
        and record it as the recipe's fetch for these inputs; return the digest."""
        digest = ""

        def make(tmp: Path) -> str:
            nonlocal digest
            digest = fetch.make(self.ctx, recipe, layers.stack(self.store, recipe, stages, "source"), tmp,
                                pinned=pinned, by=by, why=why)
            return digest
        self.store.add("fetches", make)
        self.file_fetch(recipe, stages, digest)
        return digest

    def file_fetch(self, recipe: Recipe, stages: dict[str, Stage], digest: str) -> None:
        """Record the fetched tree `digest` as the recipe's fetch for these inputs."""
        fetch.keep_listing(self.store, recipe, digest)
        document = stages["fetch"].document
        assert document is not None
        record_fetch(self.store, recipe, FetchRecord(keys.key(document), digest, document))

    def make_build(self, recipe: Recipe) -> None:
        if self.take(recipe):
            return
        stages = self.stages(recipe)
        stage = stages["build"]
        box = layers.build_box(self.store, recipe, stages, self.resolver.known(recipe).pins())
        made_here = not self.store.intact(stage.kind, box.key)
        self.store.ensure(stage.kind, box.key, lambda tmp: build.make(
            self.ctx, recipe, box.layers, tmp, box.inputs, announce(self.store, recipe, stage), fetched=box.fetched),
            inputs=stage.document)
        if made_here and self.remote and self.remote.config.push:
            self.remote.push(self.store, recipe.name, box.key, fetched=self.fetched_digest(recipe))

    def fetched_digest(self, recipe: Recipe) -> str | None:
        """The digest of the tree the recipe's build stands on (None without a [fetch])."""
        key = self.stages(recipe)["fetch"].key if recipe.fetch else None
        return key if isinstance(key, str) else None

    # -- the remote cache -------------------------------------------------------------------
    def wanted(self, recipe: Recipe) -> Wanted | None:
        """The recipe's build entry, if its key is known and the local cache lacks it."""
        found = self.wanted_of(recipe)
        return None if found is None or self.store.intact("builds", found.key) else found

    def wanted_of(self, recipe: Recipe) -> Wanted | None:
        """The recipe's build entry as the remote is asked for it, if its key is known."""
        from buildbox.remote import Wanted
        stage = self.stages(recipe)["build"]
        if not isinstance(stage.key, str) or stage.document is None:
            return None
        # Its files: the artifacts, their runtime closure, and room for the rest of the entry.
        return Wanted(recipe.name, stage.key, stage.document, recipe.limits.artifacts + RUNTIME_MAX_BYTES + (1 << 20))

    def take(self, recipe: Recipe) -> bool:
        """The recipe's build entry from the remote cache, if it has one this machine takes."""
        wanted = self.wanted(recipe) if self.remote else None
        if wanted is None:
            return False
        assert self.remote
        found = self.remote.take(self.store, wanted, lambda files: build.check_taken(self.ctx, recipe, files))
        if found:
            log.say(f"build {recipe.name}: from remote cache ({found.said()})")
        return found is not None

    def take_locked(self) -> None:
        """Before the graph runs: the locked recipes' build keys need nothing made here, so their
        entries are looked up in one batch, and a hit leaves the stages below it out."""
        if self.remote is None:
            return
        wanted = [w for w in (self.wanted(r) for r in self.recipes if r.lock) if w]
        if wanted:
            self.remote.look_up(wanted)
            for recipe in self.recipes:
                if recipe.lock:
                    self.take(recipe)

    def needs_stages_below(self, recipe: Recipe) -> bool:
        """Whether the build stage stands on the stages below it this run: not for a locked
        recipe whose build entry was taken from the remote cache, as its key needs none of them.
        A build made here keeps them: a locked run still fetches again what is gone, and so
        finds an upstream that changed under the lock."""
        stage = self.stages(recipe)["build"]
        if not (recipe.lock and isinstance(stage.key, str) and self.store.intact("builds", stage.key)):
            return True
        manifest = Manifest.read(layers.entry(self.store, stage) / MANIFEST)
        return manifest is None or not manifest.from_remote

    def install_out(self, recipe: Recipe) -> None:
        stage = self.stages(recipe)["build"]
        entry = layers.entry(self.store, stage)
        try:
            out.install(entry, self.out_dir(recipe), self.stamps(recipe))
        except out.CorruptEntry as err:
            # Never shipped: the damaged entry goes, and the build runs again.
            log.warn(f"{err}; removed it, building {recipe.name} again")
            remove_tree(entry)
            self.make_build(recipe)
            out.install(entry, self.out_dir(recipe), self.stamps(recipe))

    def out_current(self, recipe: Recipe) -> bool:
        key = self.stages(recipe)["build"].key
        return isinstance(key, str) and out.is_current(self.out_dir(recipe), key, self.stamps(recipe))

    # -- doit -------------------------------------------------------------------------------
    def _action(self, name: str, work: Callable[[], None]) -> Callable[[], Any]:
        def action() -> Any:
            try:
                if FAULT and FAULT == name.split(":")[0]:
                    raise RuntimeError(f"{FAULT_VARIABLE} asked for a fault in the {FAULT} stage")
                work()
            except Exception as err:   # every failure is said once, by the one map (errors.failure_of)
                self.failures.append((name, err))
                if self.report_failures:
                    log.error(failure_of(err, self.store.root))
                return TaskFailed(str(err), report=False)
            return True
        return action

    def namespace(self) -> dict[str, Any]:
        """Task generators in doit's dodo form: task_set, task_base, ... and DOIT_CONFIG."""
        every = {recipe.name: self.stages(recipe) for recipe in self.recipes}
        sets_: dict[str, tuple[Set, Stage, str | None, str, Recipe]] = {}
        for recipe in self.recipes:
            pinned = self.resolver.known(recipe).lock_sets
            for index, spec in enumerate(recipe.base.sets):
                stage = every[recipe.name][f"set{index + 1}"]
                where = recipe.lock.at(f"set.{index}") if recipe.lock else spec.where
                sets_.setdefault(stage.key, (spec, stage, pinned[index], where, recipe))   # type: ignore[arg-type]
        bases = {every[r.name]["base"].key: r for r in self.recipes}
        layer_tasks = {every[r.name]["layer"].key: r for r in self.recipes}
        # A recipe's own layer may be the very layer of essentials (a git recipe that installs just
        # those four): one task makes it then.
        shared = {every[r.name]["essentials"].key: r for r in self.recipes
                  if "essentials" in every[r.name] and every[r.name]["essentials"].key not in layer_tasks}
        below = {r.name: self.needs_stages_below(r) for r in self.recipes}

        def base_task(recipe: Recipe) -> str:
            # A locked base is named by its key too: recipes may lock one base differently.
            return recipe.base.name + (f"@{every[recipe.name]['base'].key[:8]}" if recipe.lock else "")

        def task_set() -> Iterator[dict[str, Any]]:
            """Sets: tarballs checked by sha256, Debian bootstraps."""
            for key, (spec, stage, pinned, where, recipe) in sets_.items():
                yield {"name": key[:12],
                       "actions": [self._action(f"set:{key[:12]}", lambda s=spec, st=stage, p=pinned, w=where,
                                                r=recipe: self.make_set(s, st, p, w, r))],
                       "uptodate": [lambda st=stage: self.store.intact(st.kind, st.key)],
                       "doc": f"set {getattr(spec, 'url', None) or getattr(spec, 'suite', '')}"}

        def task_base() -> Iterator[dict[str, Any]]:
            """Base roots unpacked from sets, with /etc, /dev and the build user."""
            for key, recipe in bases.items():
                yield {"name": base_task(recipe),
                       "actions": [self._action(f"base:{base_task(recipe)}", lambda r=recipe: self.make_base(r))],
                       "task_dep": [f"set:{every[recipe.name][f'set{i + 1}'].key[:12]}"   # type: ignore[index]
                                    for i in range(len(recipe.base.sets))],
                       "uptodate": [lambda k=key: self.store.intact("bases", k)],
                       "doc": f"base root {recipe.base.name}"}

        def task_layer() -> Iterator[dict[str, Any]]:
            """Package layers: apt installs kept as overlay layers (a Debian source's over the shared
            layer of build essentials)."""
            for key, recipe in shared.items():
                yield {"name": key[:12], "actions": [self._action(f"layer:{key[:12]}",
                                                                  lambda r=recipe: self.make_essentials(r))],
                       "task_dep": [f"base:{base_task(recipe)}"],
                       "uptodate": [lambda k=key: self.store.intact("layers", k)],
                       "doc": f"build essentials on {recipe.base.name}"}
            for key, recipe in layer_tasks.items():
                under = every[recipe.name].get("essentials")
                yield {"name": key[:12], "actions": [self._action(f"layer:{key[:12]}",
                                                                  lambda r=recipe: self.make_layer(r))],
                       "task_dep": [f"layer:{under.key[:12]}" if under else f"base:{base_task(recipe)}"],
                       "uptodate": [lambda k=key: self.store.intact("layers", k)],
                       "doc": f"packages for {recipe.name}"}

        def per_recipe(stage: str, work: Callable[[Recipe], None], check: Callable[[Recipe], bool],
                       dep: Callable[[Recipe], str | None], recipes: list[Recipe] | None = None) -> Iterator[dict[str, Any]]:
            for recipe in self.recipes if recipes is None else recipes:
                below = dep(recipe)
                yield {"name": recipe.name,
                       "actions": [self._action(f"{stage}:{recipe.name}", lambda r=recipe: work(r))],
                       "task_dep": [below] if below else [],
                       "uptodate": [lambda r=recipe: check(r)],
                       "doc": f"{stage} of {recipe.path}"}

        def task_source() -> Iterator[dict[str, Any]]:
            """Sources: a git commit, a tarball or a Debian source package in /build/src."""
            yield from per_recipe("source", self.make_source, self.source_current,
                                  lambda r: f"layer:{every[r.name]['layer'].key[:12]}")   # type: ignore[index]

        def task_fetch() -> Iterator[dict[str, Any]]:
            """Fetches: a [fetch] script with the network, its $FETCH tree pinned by digest."""
            yield from per_recipe("fetch", self.make_fetch, lambda r: self._intact(r, "fetch"),
                                  lambda r: f"source:{r.name}", [r for r in self.recipes if r.fetch])

        def task_build() -> Iterator[dict[str, Any]]:
            """Builds: the recipe's script as the build user, checked, cached."""
            yield from per_recipe("build", self.make_build, lambda r: self._intact(r, "build"),
                                  lambda r: f"{'fetch' if r.fetch else 'source'}:{r.name}" if below[r.name] else None)

        def task_out() -> Iterator[dict[str, Any]]:
            """Artifacts and manifest put at out/NAME/."""
            yield from per_recipe("out", self.install_out, self.out_current, lambda r: f"build:{r.name}")

        return {"task_set": task_set, "task_base": task_base, "task_layer": task_layer,
                "task_source": task_source, "task_fetch": task_fetch, "task_build": task_build, "task_out": task_out,
                # doit's dependency file in memory: every task's uptodate is the cache itself, so the
                # file held nothing buildbox reads, and writing it after the work could fail on a full
                # disk (sqlite's "database or disk is full") as a traceback from inside doit, exit 3.
                "DOIT_CONFIG": {"backend": "sqlite3", "dep_file": ":memory:",
                                "verbosity": 2, "reporter": self._reporter(), "continue": True,
                                "default_tasks": [f"out:{r.name}" for r in self.recipes]}}

    def _reporter(self) -> type:
        graph = self

        class GraphReporter(Reporter):
            def complete_run(self) -> None:
                super().complete_run()
                # Under plain doit (dodo.py), the run's exit status is buildbox's, from its one map:
                # a failed build 1, bad input 2, an internal error 70, Ctrl-C 130.
                if graph.report_failures and graph.failures:
                    raise SystemExit(failure_of(graph.first_failure(), graph.store.root).exit_code)
        return GraphReporter

    def first_failure(self) -> BaseException:
        interrupted = [err for _, err in self.failures if isinstance(err, Interrupted)]
        return interrupted[0] if interrupted else self.failures[0][1]

    def reap(self) -> None:
        """Remove the boxes and half-made entries of runs that died (in a buildbox cache only)."""
        self.store.claim(create=True)
        from buildbox.box import reap_dead_boxes
        from buildbox.cgroup import reap_dead_groups
        reap_dead_groups()
        for path in [*reap_dead_boxes(self.store), *self.store.remove_stale_tmp()]:
            log.say(f"buildbox: removed {path}, left by a run that died")

    def remember(self, recipe: Recipe) -> None:
        """Record what the recipe stands on now, for the next run's why and an offline `list`."""
        offline, self.resolver.offline = self.resolver.offline, True   # only what this run resolved
        try:
            remember(self.store, recipe, self.stages(recipe), self.resolver.resolved_git(recipe))
        finally:
            self.resolver.offline = offline

    def run(self, jobs: int = 1, stage: str = "out") -> None:
        """Bring every recipe's stage (out/, by default) up to date; raise the first failure."""
        self.reap()
        argv = ["run", "--continue", "-n", str(jobs), "-P", "thread", *(f"{stage}:{r.name}" for r in self.recipes)]
        with self.store.in_use():
            if stage == "out":
                self.take_locked()
            code = DoitMain(ModuleTaskLoader(self.namespace()), config_filenames=()).run(argv)
            for recipe in self.recipes:
                self.remember(recipe)
        if self.failures:
            raise self.first_failure()
        if code != 0:
            raise BuildboxError(f"doit stopped with status {code}")

    def stack(self, recipe: Recipe, top: str) -> list[Path]:
        """The layers of a box of the recipe standing on stage top (base, layer or source)."""
        return layers.stack(self.store, recipe, self.stages(recipe), top)

    def build_box(self, recipe: Recipe) -> layers.BuildBox:
        """What the recipe's build box is made of, once the stages before the build are done."""
        return layers.build_box(self.store, recipe, self.stages(recipe), self.resolver.known(recipe).pins())


def fetch_pin(recipe: Recipe) -> tuple[str | None, str]:
    """The digest the fetched tree must have, and who says so: the recipe, the lock, or none."""
    assert recipe.fetch
    if recipe.fetch.sha256:
        return recipe.fetch.sha256, "the recipe pins"
    if recipe.lock and recipe.lock.pins.fetch:
        return recipe.lock.pins.fetch, "the lock pins"
    return None, ""


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
