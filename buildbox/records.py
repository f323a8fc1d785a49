"""The records buildbox keeps beside its cache entries and outputs, each read and written here
only: a recipe's run record (cache/recipes/NAME.json), a build's manifest (manifest.json), and a
failed build's box (cache/failed/NAME/failed.json). A record that cannot be read is absent."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildbox.pins import Pins
from buildbox.recipe import BootstrapSet, Recipe, TarballSet, UrlSource
from buildbox.store import Store, write_atomically

if TYPE_CHECKING:
    from buildbox.keys import Stage

MANIFEST = "manifest.json"
FAILED = "failed.json"


# -- what each recipe last stood on: for "why it rebuilt" and an offline `list` ---------------
@dataclass(frozen=True)
class GitRecord:
    """The commit an unlocked ref named when a run last resolved it."""
    url: str
    ref: str
    commit: str
    when: int


@dataclass(frozen=True)
class FetchRecord:
    """Which tree an unpinned fetch gave for the inputs its key document names."""
    key: str
    sha256: str
    document: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class RunRecord:
    """What a recipe's last run stood on: each made stage's key, its ref's commit, its fetch."""
    stages: dict[str, str] = field(default_factory=dict)
    git: GitRecord | None = None
    fetch: FetchRecord | None = None

    @staticmethod
    def path(store: Store, name: str) -> Path:
        return store.root / "recipes" / f"{name}.json"

    @classmethod
    def read(cls, store: Store, name: str) -> RunRecord:
        try:
            data = json.loads(cls.path(store, name).read_text())
            git, fetch = data.get("git"), data.get("fetch")
            return cls(dict(data.get("stages", {})), GitRecord(**git) if git else None,
                       FetchRecord(**fetch) if fetch else None)
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()

    def write(self, store: Store, name: str) -> None:
        data: dict[str, Any] = {"stages": self.stages}
        if self.git:
            data["git"] = vars(self.git)
        if self.fetch:
            data["fetch"] = {"key": self.fetch.key, "sha256": self.fetch.sha256, "document": self.fetch.document}
        (store.root / "recipes").mkdir(exist_ok=True)
        write_atomically(self.path(store, name), json.dumps(data, indent=1, sort_keys=True) + "\n")


# -- a build's manifest -------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A build's manifest: the recipe, the build's key, its artifacts (by path under out/NAME)
    and the cache entries the build stands on (gc keeps them while it keeps the build)."""
    recipe: str
    key: str
    artifacts: dict[str, Artifact]
    entries: dict[str, list[str]]
    from_remote: bool = False   # taken from the remote cache, not built here

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        """The manifest at path, or None if it is not one buildbox wrote (a FIFO is never opened)."""
        try:
            if not path.is_file():
                return None
            return cls.read_document(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None

    @classmethod
    def read_document(cls, data: Any) -> Manifest | None:
        """A manifest's parsed JSON as a Manifest, or None if it is not one buildbox wrote."""
        try:
            return cls(str(data["recipe"]), str(data["key"]),
                       {str(rel): Artifact(str(fact["sha256"]), int(fact.get("size", 0)))
                        for rel, fact in data["artifacts"].items()},
                       dict(data.get("inputs", {}).get("entries", {})), bool(data.get("from_remote")))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    @staticmethod
    def write(entry: Path, document: dict[str, Any]) -> None:
        """Write a build's manifest (build.py assembles its document) atomically in entry/."""
        write_atomically(entry / MANIFEST, json.dumps(document, indent=2, sort_keys=True) + "\n")

    def digests(self) -> dict[str, str]:
        return {rel: fact.sha256 for rel, fact in self.artifacts.items()}


# -- a failed build's box -----------------------------------------------------------------------
@dataclass(frozen=True)
class FailedBox:
    """What a failed build left for `buildbox shell --failed`: its changes (an upper layer or the
    disk image holding it) over the layers it was made of, and when."""
    top: Path
    layers: tuple[Path, ...]
    when: float

    @classmethod
    def read(cls, saved: Path) -> FailedBox | None:
        try:
            data = json.loads((saved / FAILED).read_text())
            return cls(Path(data.get("top", saved / "upper")), tuple(map(Path, data["layers"])), float(data["when"]))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def write(self, saved: Path) -> None:
        (saved / FAILED).write_text(json.dumps({"top": str(self.top), "layers": [str(p) for p in self.layers],
                                                "when": self.when}, indent=2) + "\n")

    def layers_present(self) -> bool:
        return all(os.path.exists(layer) for layer in (self.top, *self.layers))

    def age_minutes(self) -> float:
        return (time.time() - self.when) / 60


def manifest_inputs(recipe: Recipe, pins: Pins, stages: dict[str, Stage]) -> dict[str, Any]:
    """What a build's manifest records as its inputs: the pins, the lock, the materials, and
    every cache entry the build stands on (gc keeps these while it keeps the build)."""
    fetch = recipe.fetch
    by = "the recipe pins" if fetch and fetch.sha256 else "the lock pins" if recipe.lock else "unpinned"
    key = lambda stage: stages[stage].key   # noqa: E731
    return {"key": key("build"), "base": recipe.base.name, "sets": list(pins.sets),
            "packages": pins.packages.as_dict(), "source": pins.source.as_dict(),
            "lock": str(recipe.lock.path) if recipe.lock else None,
            **({"fetch": {"sha256": pins.fetch, "pinned": by}} if fetch else {}),
            "materials": materials(recipe, pins),
            "entries": {"builds": [key("build")], "layers": [key("layer"), *([key("essentials")] if "essentials" in stages else [])], "sources": [key("source")],
                        "bases": [key("base")],
                        "downloads": [s.sha256 for s in recipe.base.sets if isinstance(s, TarballSet)]
                        + ([recipe.source.sha256] if isinstance(recipe.source, UrlSource) else []),
                        "bootstraps": [key(f"set{i + 1}") for i, s in enumerate(recipe.base.sets)
                                       if isinstance(s, BootstrapSet)],
                        **({"fetches": [pins.fetch]} if pins.fetch else {})}}


def materials(recipe: Recipe, pins: Pins) -> list[dict[str, Any]]:
    """The build's inputs by location and digest, as SLSA provenance lists materials."""
    found = []
    for spec, digest in zip(recipe.base.sets, pins.sets):
        uri = spec.url if isinstance(spec, TarballSet) else \
            f"mmdebstrap:{spec.mirror}?suite={spec.suite}&variant={spec.variant}"
        found.append({"uri": uri, "digest": {"sha256": digest}})
    found.append(pins.source.material())
    if pins.fetch:
        found.append({"uri": f"buildbox-fetch:{recipe.name}", "digest": {"sha256": pins.fetch}})
    return found
