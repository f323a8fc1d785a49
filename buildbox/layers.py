"""The layer stack of a recipe's boxes, from its stages' keys: the base over its bootstraps, the
packages over the base, the source over the packages (top first, as the overlay takes them).
One place for it: the graph, `shell` and `verify` put their boxes together from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildbox.keys import Stage
from buildbox.pins import Pins, Unresolved
from buildbox.recipe import BootstrapSet, Recipe, Set, TarballSet
from buildbox.records import manifest_inputs
from buildbox.store import Store

# What a box can stand on, bottom first ("essentials": the shared layer under a Debian source's own).
TOPS = ("base", "essentials", "layer", "source")


def entry(store: Store, stage: Stage) -> Path:
    """The cache entry of a stage whose key is known."""
    assert isinstance(stage.key, str), stage.key
    return store.entry(stage.kind, stage.key)


def set_path(store: Store, spec: Set, stage: Stage) -> Path:
    """A tarball set's file, or a bootstrap's tree."""
    return entry(store, stage) / ("file" if isinstance(spec, TarballSet) else "root")


def under_base(store: Store, recipe: Recipe, stages: dict[str, Stage]) -> list[Path]:
    """The bootstrap trees a base is layered on, top first: those of its leading bootstrap sets."""
    under: list[Path] = []
    for index, spec in enumerate(recipe.base.sets):
        if not isinstance(spec, BootstrapSet):
            break
        under.insert(0, set_path(store, spec, stages[f"set{index + 1}"]))
    return under


def stack(store: Store, recipe: Recipe, stages: dict[str, Stage], top: str) -> list[Path]:
    """The read-only layers of a box standing on stage `top` (base, essentials, layer or source),
    top first; "essentials" is the base for a recipe that has none."""
    layers = [entry(store, stages["base"]) / "root", *under_base(store, recipe, stages)]
    for name in TOPS[1:TOPS.index(top) + 1]:
        if name in stages:
            layers.insert(0, entry(store, stages[name]) / ("" if name == "source" else "root"))
    return layers


def fetched_tree(store: Store, stages: dict[str, Stage]) -> Path | None:
    """The fetched tree the build sees at $FETCH (None without a [fetch])."""
    return entry(store, stages["fetch"]) / "tree" if "fetch" in stages else None


@dataclass(frozen=True)
class BuildBox:
    """What a recipe's build box is made of: its layers, its fetched tree, and the manifest's inputs."""
    key: str
    layers: list[Path]
    fetched: Path | None
    inputs: dict[str, Any]


def build_box(store: Store, recipe: Recipe, stages: dict[str, Stage], pins: Pins | Unresolved) -> BuildBox:
    """The build box of a recipe whose stages up to the build are made (run, shell, verify)."""
    assert isinstance(pins, Pins) and isinstance(stages["build"].key, str), pins
    return BuildBox(stages["build"].key, stack(store, recipe, stages, "source"), fetched_tree(store, stages),
                    manifest_inputs(recipe, pins, stages))
