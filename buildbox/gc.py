"""Cache upkeep: gc (unreferenced and old entries, least recently used first), clean, and fsck
(every entry's content against what was recorded when it was made)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from buildbox.box import reap_dead_boxes
from buildbox.keys import STAGE_KINDS
from buildbox.records import FAILED, MANIFEST, FailedBox, Manifest, RunRecord
from buildbox.store import KINDS, Store, remove_tree, tree_size


@dataclass
class Entry:
    kind: str
    path: Path
    used: float        # last use (the entry's mtime, touched on every cache hit)
    size: int


def entries(store: Store) -> list[Entry]:
    found = []
    for kind in KINDS:
        folder = store.root / kind
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.is_dir() and not path.name.startswith("."):
                found.append(Entry(kind, path, path.stat().st_mtime, tree_size(path)))
    return found


def referenced(store: Store) -> set[Path]:
    """The newest build of each recipe, and every entry it stands on."""
    newest: dict[str, tuple[float, Manifest]] = {}
    for path in (store.root / "builds").glob(f"*/{MANIFEST}"):
        manifest = Manifest.read(path)
        if manifest is None:
            continue
        used = path.parent.stat().st_mtime
        if manifest.recipe not in newest or used > newest[manifest.recipe][0]:
            newest[manifest.recipe] = (used, manifest)
    keep = set()
    for _, manifest in newest.values():
        for kind, keys in manifest.entries.items():
            keep.update(store.entry(kind, key) for key in keys)
    # And what each recipe's last run stood on: a layer made again under a new key (the shared
    # layer of essentials) while its build, keyed by packages, stayed the one made before.
    for record in sorted((store.root / "recipes").glob("*.json")):
        for stage, key in RunRecord.read(store, record.stem).stages.items():
            if stage in STAGE_KINDS:
                keep.add(store.entry(STAGE_KINDS[stage], key))
    return keep


def gc(store: Store, *, max_size: int | None = None, older_than: float | None = None) -> list[Entry]:
    """Remove what no newest build uses, then what is older than older_than, then the least
    recently used until the cache fits max_size. Waits for running builds first."""
    removed: list[Entry] = []
    with store.in_use(exclusive=True):
        reap_dead_boxes(store)
        store.remove_stale_tmp()
        keep = referenced(store)
        alive = []
        for entry in entries(store):
            # A set nobody references may still be wanted soon (a tarball set is slow to fetch):
            # unreferenced sets go only by age or size, like everything else.
            if entry.path not in keep and entry.kind not in ("downloads", "bootstraps"):
                removed.append(entry)
            elif older_than is not None and time.time() - entry.used > older_than:
                removed.append(entry)
            else:
                alive.append(entry)
        if max_size is not None:
            alive.sort(key=lambda e: e.used)
            total = sum(e.size for e in alive)
            while alive and total > max_size:
                entry = alive.pop(0)
                total -= entry.size
                removed.append(entry)
        for entry in removed:
            store.remove_entry(entry.kind, entry.path.name)
        # A failed build's box is kept for `shell --failed` only while the layers under it are.
        for saved in sorted((store.root / "failed").glob(f"*/{FAILED}")):
            failed = FailedBox.read(saved.parent)
            if failed is None or not all(layer.is_dir() for layer in failed.layers):
                remove_tree(saved.parent)
    return removed


def clean(store: Store) -> None:
    """Remove everything but the downloaded and bootstrapped sets."""
    with store.in_use(exclusive=True):
        reap_dead_boxes(store)
        for name in ("bases", "layers", "sources", "fetches", "builds", "failed", "debs", "logs", "verify",
                     "installed", "recipes", "doit.sqlite3", "records/bases", "records/layers", "records/sources",
                     "records/fetches", "records/builds", "tmp"):
            remove_tree(store.root / name)
        store.remove_stale_tmp()


def fsck(store: Store, *, repair: bool) -> tuple[int, list[tuple[Entry, str, bool]]]:
    """Check every entry's content against its record, as `nix-store --verify --check-contents`
    does; with repair, remove the damaged ones (their stage makes them again when next needed).
    Returns how many entries were checked, and (entry, what is wrong, whether it is damaged) for
    each that is not as recorded."""
    found = []
    with store.in_use(exclusive=repair, create=False):
        checked = entries(store)
        for entry in checked:
            problem = store.check(entry.kind, entry.path.name)
            if problem is None:
                continue
            damaged = problem.startswith("content differs")
            if damaged and repair:
                store.remove_entry(entry.kind, entry.path.name)
            found.append((entry, problem, damaged))
    return len(checked), found
