"""Why a stage runs: `STAGE NAME: first build` or `STAGE NAME: rebuilding: REASON; REASON`, from
the key document of the entry the recipe's last run stood on (its run record), and the record
each run leaves of what it stood on."""

from __future__ import annotations

from typing import Any

from buildbox import keys, log
from buildbox.keys import Stage
from buildbox.recipe import Recipe
from buildbox.records import FetchRecord, GitRecord, RunRecord
from buildbox.store import Store

# The stages whose entries `list` looks for, in pipeline order: the first one missing says why.
CHECKED = ("base", "essentials", "layer", "source", "build")


def why(store: Store, recipe: Recipe, stage: Stage) -> str:
    """Why the recipe's stage is made, in the fixed words of README's "Why it rebuilt"."""
    assert stage.document is not None
    previous = RunRecord.read(store, recipe.name).stages.get(stage.name)
    if previous is None:
        return f"{stage.name} {recipe.name}: first build"
    if previous == stage.key:
        found = ["cache entry gone"]   # removed by gc, clean or fsck, or found changed
    else:
        old = store.inputs(stage.kind, previous)
        found = (keys.reasons(old, stage.document) if old else []) or \
            ["inputs changed (no record of the previous ones)"]
    return f"{stage.name} {recipe.name}: rebuilding: {'; '.join(found)}"


def announce(store: Store, recipe: Recipe, stage: Stage) -> str:
    """Say why a stage runs, on one line; returned for the stage's log."""
    line = why(store, recipe, stage)
    log.say(line)
    return line


def why_fetch(store: Store, recipe: Recipe, stage: Stage, pinned: str | None) -> str:
    """Why the recipe's fetch runs: its tree is filed by digest, its inputs in its run record."""
    last = RunRecord.read(store, recipe.name).fetch
    if not last:
        return f"fetch {recipe.name}: first build"
    if pinned:
        return f"fetch {recipe.name}: rebuilding: pinned tree {pinned[:12]} not in the cache"
    found = keys.reasons(last.document, stage.document or {})
    return f"fetch {recipe.name}: rebuilding: {'; '.join(found) or 'cache entry gone'}"


def stale(store: Store, recipe: Recipe, stages: dict[str, Stage]) -> str | None:
    """Offline, why the recipe needs a build: the line its first stage not in the cache would
    say, or None when every stage is (or one cannot be known without resolving)."""
    for name in (name for name in CHECKED if name in stages):
        stage = stages[name]
        if not isinstance(stage.key, str):
            return None
        if not store.intact(stage.kind, stage.key):
            return why(store, recipe, stage)
    return None


def remember(store: Store, recipe: Recipe, stages: dict[str, Stage], git: dict[str, Any] | None = None,
             fetch: FetchRecord | None = None) -> None:
    """Record what the recipe stands on now (each made stage's key, the commit its ref named,
    the tree its unpinned fetch gave): the next run says why against it, and `list` works from
    it offline. The cached no-op writes nothing."""
    before = RunRecord.read(store, recipe.name)
    made = dict(before.stages)
    for stage in stages.values():
        if isinstance(stage.key, str) and store.entry(stage.kind, stage.key).is_dir():
            made[stage.name] = stage.key
    after = RunRecord(made, GitRecord(**git) if git else before.git, fetch or before.fetch)
    if after != before:
        after.write(store, recipe.name)


def record_fetch(store: Store, recipe: Recipe, fetch: FetchRecord) -> None:
    """Record which tree the recipe's fetch gave for these inputs, as soon as it has."""
    before = RunRecord.read(store, recipe.name)
    RunRecord(before.stages, before.git, fetch).write(store, recipe.name)
