"""A cgroup of the build's own: [limits] memory and processes for the whole box, not per process.

cgroup v2 (memory.max, pids.max) where the host has those controllers, else the v1 memory and
pids hierarchies; each build's group is made below buildbox's own, so that limits set on buildbox
itself (a systemd unit's MemoryMax=) still hold. enter.py puts the box's first process in it
before it starts anything, so every process of the box is counted.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


class Cgroup:
    """The group of one build: made on entry, emptied and removed on exit."""

    def __init__(self, name: str, *, memory: int, pids: int) -> None:
        from buildbox.box import owner
        # The owner's pid and start time in the name: a later run can tell the group of a dead run.
        self.name = f"buildbox-{owner()}-{name}-{uuid.uuid4().hex[:8]}"
        self.memory, self.pids = memory, pids
        self.dirs: dict[str, Path] = {}   # controller -> its directory of this group

    @staticmethod
    def where() -> dict[str, Path] | None:
        """Where a build's group goes for each controller (memory, pids), or None without them."""
        own = _own_groups()
        if "" in own and (ROOT / "cgroup.controllers").exists():   # cgroup v2 mounted at /sys/fs/cgroup
            parent = ROOT / own[""].lstrip("/")
            if {"memory", "pids"} <= set((parent / "cgroup.subtree_control").read_text().split()):
                return {"memory": parent, "pids": parent}
        found = {c: ROOT / c / own[c].lstrip("/") for c in ("memory", "pids") if c in own and (ROOT / c).is_dir()}
        return found if len(found) == 2 else None

    @property
    def procs(self) -> list[str]:
        """The cgroup.procs files the box's first process writes itself into."""
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    def __enter__(self) -> Cgroup:
        where = self.where()
        if where is None:
            raise OSError("no memory and pids cgroup controllers")
        try:
            for controller, parent in where.items():
                path = parent / self.name
                if path not in self.dirs.values():
                    path.mkdir()
                self.dirs[controller] = path
            memory, pids = self.dirs["memory"], self.dirs["pids"]
            if (memory / "memory.max").exists():   # v2
                (memory / "memory.max").write_text(str(self.memory))
                if (memory / "memory.swap.max").exists():
                    (memory / "memory.swap.max").write_text("0")
            else:
                (memory / "memory.limit_in_bytes").write_text(str(self.memory))
                if (memory / "memory.memsw.limit_in_bytes").exists():   # swap does not widen it
                    (memory / "memory.memsw.limit_in_bytes").write_text(str(self.memory))
            (pids / "pids.max").write_text(str(self.pids))
        except BaseException:
            self.__exit__()
            raise
        return self

    def hit(self) -> str | None:
        """The limit the box ran into, if any: "memory" (a process was killed for it) or "processes"."""
        memory, pids = self.dirs.get("memory"), self.dirs.get("pids")
        if memory and _counter(memory / "memory.events", "oom_kill") + _counter(memory / "memory.oom_control",
                                                                                 "oom_kill"):
            return "memory"
        if pids and _counter(pids / "pids.events", "max"):
            return "processes"
        return None

    def __exit__(self, *exc: object) -> None:
        for path in set(self.dirs.values()):
            for attempt in range(50):   # the box's processes are dying with its PID namespace
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    for pid in (path / "cgroup.procs").read_text().split():
                        try:
                            os.kill(int(pid), 9)
                        except ProcessLookupError:
                            pass
                    time.sleep(0.1)


def reap_dead_groups() -> list[Path]:
    """Remove the (empty) groups of runs that died: their box's processes died with them."""
    from buildbox.box import alive
    reaped = []
    for parent in set((Cgroup.where() or {}).values()):
        for path in sorted(parent.glob("buildbox-*")):
            made_by = path.name.split("-")[1]
            if not alive(made_by):   # rmdir takes only an empty group
                try:
                    path.rmdir()
                    reaped.append(path)
                except OSError:
                    pass
    return reaped


def _own_groups() -> dict[str, str]:
    """This process's group in each hierarchy: controller (or "" for v2) -> path."""
    found = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def _counter(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
