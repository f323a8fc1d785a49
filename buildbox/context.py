"""What every stage is given besides its inputs: the cache, where its log goes, and the run's flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from buildbox.store import Store


@dataclass(frozen=True)
class Context:
    """A run's cache and flags: stream the build's output, keep the build box."""
    store: Store
    stream: bool = True
    keep: bool = False

    def logfile(self, owner: str, stage: str, why: str = "") -> Path:
        """A stage's log, new, its first line saying why the stage runs."""
        path = self.store.dir("logs") / owner / f"{stage}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"buildbox: {why}\n" if why else "")
        return path
