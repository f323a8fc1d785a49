"""Room on a filesystem, asked before a stage fills it: a full disk said up front, with both
numbers, instead of a write that fails halfway (and fills the disk for everyone else too)."""

from __future__ import annotations

import os
from pathlib import Path

from buildbox.errors import BuildFailed, mount_point

RESERVE = 256 << 20


def free_bytes(path: Path) -> int:
    """Bytes free for writing on the filesystem that holds path (or would hold it, if it does not
    exist yet): what statvfs says an unprivileged writer may use (f_bavail), so that root's
    reserved blocks stay for the rest of the host."""
    here = os.path.abspath(path)
    while not os.path.exists(here):
        here = os.path.dirname(here)
    st = os.statvfs(here)
    return st.f_bavail * st.f_frsize


def reserve(path: Path) -> int:
    """What buildbox leaves free on path's filesystem when it sizes a box's disk or an unpack:
    5% of the filesystem, at most 256M."""
    here = os.path.abspath(path)
    while not os.path.exists(here):
        here = os.path.dirname(here)
    st = os.statvfs(here)
    return min(RESERVE, st.f_blocks * st.f_frsize // 20)


def require_room(path: Path, needed: int, what: str, hint: str) -> None:
    """Raise BuildFailed (exit status 1) unless the filesystem that holds path has `needed` bytes
    free. `what` says what needs them ("unpacking x.tar.gz (its [limits] unpacked)"); the error
    names both numbers and the filesystem, and tells to free space on it or, `hint`, what else
    lowers the need ("lower [limits] unpacked in the recipe")."""
    free = free_bytes(path)
    if free < needed:
        where = mount_point(path)
        raise BuildFailed(f"{what} needs {size(needed)}, and the filesystem at {where} has {size(free)} free",
                          hint=f"free space on {where} (`buildbox gc --max-size SIZE` trims the cache), or {hint}")


def size(amount: int) -> str:
    """A number of bytes for people, as [limits] writes them: 512B, 3.5M, 20.0G."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if amount >= 1 << shift:
            return f"{amount / (1 << shift):.1f}{unit}"
    return f"{amount}B"
