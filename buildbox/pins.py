"""Pins: what a build stands on, as values. A lock holds them; an unlocked recipe has them once
the stages that find them have run (the layer's packages, the source's commit or version, the
fetched tree's digest). Read from and written to their one dict form (the lock file's, the key
documents') here and nowhere else: other modules use the fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Unresolved:
    """A pin (or a key standing on it) not known yet: why, in words for `list`."""
    why: str


@dataclass(frozen=True)
class PackagePin:
    """One installed package: its version, architecture and, where known, its .deb's sha256."""
    name: str
    version: str
    arch: str
    sha256: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {"version": self.version, "arch": self.arch, **({"sha256": self.sha256} if self.sha256 else {})}


@dataclass(frozen=True)
class Packages:
    """Every package of a layer, by name (NAME, or NAME:ARCH for a foreign architecture's)."""
    pins: tuple[PackagePin, ...]

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, str]]) -> Packages:
        return cls(tuple(PackagePin(name, pin["version"], pin["arch"], pin.get("sha256"))
                         for name, pin in sorted(data.items())))

    def as_dict(self) -> dict[str, dict[str, str]]:
        return {pin.name: pin.as_dict() for pin in self.pins}

    def get(self, name: str) -> PackagePin | None:
        return next((pin for pin in self.pins if pin.name == name), None)

    def __len__(self) -> int:
        return len(self.pins)

    def __iter__(self):
        return iter(self.pins)


@dataclass(frozen=True)
class GitPin:
    url: str
    commit: str

    def as_dict(self) -> dict[str, str]:
        return {"git": self.url, "commit": self.commit}

    def portable(self) -> dict[str, str]:
        return {"commit": self.commit}

    def material(self) -> dict[str, Any]:
        return {"uri": f"git+{self.url}", "digest": {"gitCommit": self.commit}}

    def describe(self, *, short: bool = False) -> str:
        return f"commit {self.commit[:12] if short else self.commit}"


@dataclass(frozen=True)
class TarballPin:
    url: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"url": self.url, "sha256": self.sha256}

    def portable(self) -> dict[str, str]:
        return {"url-sha256": self.sha256}

    def material(self) -> dict[str, Any]:
        return {"uri": self.url, "digest": {"sha256": self.sha256}}

    def describe(self, *, short: bool = False) -> str:
        return f"sha256 {f'{self.sha256[:12]}…' if short else self.sha256}"


@dataclass(frozen=True)
class DebianPin:
    package: str
    version: str
    dsc: str
    dsc_sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"debian": self.package, "version": self.version, "dsc": self.dsc, "dsc-sha256": self.dsc_sha256}

    def portable(self) -> dict[str, str]:
        return self.as_dict()

    def material(self) -> dict[str, Any]:
        return {"uri": f"deb-src:{self.package}/{self.dsc}", "digest": {"sha256": self.dsc_sha256}}

    def describe(self, *, short: bool = False) -> str:
        return f"{self.package} {self.version}"


SourcePin = Union[GitPin, TarballPin, DebianPin]


@dataclass(frozen=True)
class DebianAsked:
    """An unlocked Debian source as its key knows it: a package name, whose version is the one
    the package lists of the layer under it name."""
    package: str


def source_pin(data: dict[str, str]) -> SourcePin:
    """A source pin from its dict form (a lock's [source], checked by lock.py; a source entry's meta)."""
    if "commit" in data:
        return GitPin(data["git"], data["commit"])
    if "url" in data:
        return TarballPin(data["url"], data["sha256"])
    return DebianPin(data["debian"], data["version"], data["dsc"], data["dsc-sha256"])


@dataclass(frozen=True)
class Pins:
    """Everything a build stands on: the sets' digests, every package, the source, the fetched tree."""
    sets: tuple[str, ...]
    packages: Packages
    source: SourcePin
    fetch: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pins:
        """Pins from the lock's form (checked by lock.py when it is read from a file)."""
        return cls(tuple(data["sets"]), Packages.from_dict(data["packages"]), source_pin(data["source"]),
                   data.get("fetch"))

    def as_dict(self) -> dict[str, Any]:
        """The lock's form: {"sets": [...], "packages": {...}, "source": {...}, "fetch": ...}."""
        return {"sets": list(self.sets), "packages": self.packages.as_dict(), "source": self.source.as_dict(),
                **({"fetch": self.fetch} if self.fetch else {})}


@dataclass(frozen=True)
class Known:
    """A recipe's pins as far as they are known now: a lock's, all at once; an unlocked recipe's,
    each once the stage that finds it has run (or Unresolved)."""
    locked: bool
    lock_sets: tuple[str | None, ...]          # the digest a lock pins for each set (None: unlocked)
    sets: tuple[str, ...] | Unresolved         # every set's tree or file digest
    packages: Packages | Unresolved            # the layer's packages
    source: SourcePin | Unresolved             # the source as fetched (a git ref's commit, ...)
    fetch: str | None | Unresolved = None      # the fetched tree's digest (None without [fetch])

    def pins(self) -> Pins | Unresolved:
        """The whole of the pins, or the first that is not known yet."""
        for part in (self.sets, self.packages, self.source, self.fetch):
            if isinstance(part, Unresolved):
                return part
        return Pins(self.sets, self.packages, self.source, self.fetch)  # type: ignore[arg-type]
