"""ELF facts read with pyelftools, and where the host's loader would find each library."""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile


@dataclass(frozen=True)
class ElfInfo:
    path: Path
    elfclass: int
    machine: str
    interpreter: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]

    @property
    def static(self) -> bool:
        """Linked statically: no loader, no libraries (a static-pie still has no interpreter)."""
        return self.interpreter is None and not self.needed


def open_regular(path: Path) -> BinaryIO:
    """path opened for reading only if it is a regular file: a FIFO or a device that a binary
    names (its NEEDED, its RPATH) must never block buildbox or be read from."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return os.fdopen(fd, "rb")


def is_elf(path: Path) -> bool:
    try:
        with open_regular(path) as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


class MalformedElf(Exception):
    """A file that starts as ELF and then does not parse."""


def read_elf(path: Path) -> ElfInfo | None:
    """The facts of one ELF file; None when it is not ELF; MalformedElf when it is ELF but damaged.
    Reads segments only: fast on big binaries."""
    if not is_elf(path):
        return None
    try:
        return _read_elf(path)
    except Exception as err:   # pyelftools raises many kinds on a damaged file (its own, struct, index)
        raise MalformedElf(f"{type(err).__name__}: {err}") from None


def _read_elf(path: Path) -> ElfInfo:
    with open_regular(path) as f:
        elf = ELFFile(f)
        interpreter = None
        needed: list[str] = []
        rpath: list[str] = []
        runpath: list[str] = []
        for segment in elf.iter_segments():
            kind = segment.header.p_type
            if kind == "PT_INTERP":
                interpreter = segment.get_interp_name()
            elif kind == "PT_DYNAMIC":
                for tag in segment.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif tag.entry.d_tag == "DT_RPATH":
                        rpath += tag.rpath.split(":")
                    elif tag.entry.d_tag == "DT_RUNPATH":
                        runpath += tag.runpath.split(":")
        return ElfInfo(path, elf.elfclass, elf["e_machine"], interpreter, tuple(needed), tuple(rpath),
                       tuple(runpath))


def loader_dirs(root: Path = Path("/")) -> list[Path]:
    """The directories ld.so searches by default under root: ld.so.conf (with includes), then the
    multiarch and traditional defaults. Another root than / (a box's) is read inside it: its
    links lead nowhere on the host."""
    from buildbox.inroot import Root
    tree = None if root == Path("/") else Root(root)
    dirs: list[Path] = []

    def text(path: str) -> str | None:
        try:
            if tree is not None:
                return tree.read_text(path)
            return Path(path).read_text(errors="replace") if Path(path).is_file() else None
        except (OSError, UnicodeDecodeError):
            return None

    def matching(pattern: str) -> list[str]:
        if tree is None:
            return sorted(glob.glob(pattern))
        directory, name = os.path.split(pattern)
        try:
            fd = tree.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return []
        try:
            return sorted(f"{directory}/{entry}" for entry in os.listdir(fd) if fnmatch.fnmatchcase(entry, name))
        finally:
            os.close(fd)

    def read_conf(conf: str, depth: int = 0) -> None:
        content = text(conf) if depth <= 8 else None
        for line in (content or "").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include "):
                pattern = line.split(None, 1)[1]
                if not pattern.startswith("/"):
                    pattern = os.path.join(os.path.dirname(conf), pattern)
                for included in matching(pattern):
                    read_conf(included, depth + 1)
            else:
                dirs.append(Path(line))

    try:
        read_conf("/etc/ld.so.conf")
    finally:
        if tree is not None:
            tree.close()
    for default in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                    "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"):
        dirs.append(Path(default))
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


Opener = Callable[[Path], BinaryIO]   # opens a path for reading: the host's (open_regular) or a box's


def _matches(candidate: Path, info: ElfInfo, opener: Opener = open_regular) -> bool:
    """A library the loader would take: ELF of the same class and machine."""
    try:
        with opener(candidate) as f:
            elf = ELFFile(f)
            return elf.elfclass == info.elfclass and elf["e_machine"] == info.machine
    except (OSError, ELFError):
        return False


def resolve_needed(info: ElfInfo, origin: Path, dirs: list[Path], *, opener: Opener = open_regular,
                   inherited: tuple[Path, ...] = ()) -> dict[str, Path | None]:
    """Where the loader would find each NEEDED library (None: nowhere), in ld.so's order: RPATH
    (only without RUNPATH; then also `inherited`, the RPATH of the objects that loaded this one),
    then RUNPATH, then the default directories. With an opener for a box's files, in the box."""
    search = ([*expand_origin(info.rpath, origin), *inherited] if not info.runpath else []) + \
        expand_origin(info.runpath, origin) + dirs
    found: dict[str, Path | None] = {}
    for name in info.needed:
        found[name] = None
        if "/" in name:
            found[name] = Path(name) if _matches(Path(name), info, opener) else None
            continue
        for d in search:
            candidate = d / name
            if _matches(candidate, info, opener):
                found[name] = candidate
                break
    return found


def expand_origin(entries: tuple[str, ...], origin: Path) -> list[Path]:
    """RPATH or RUNPATH entries with $ORIGIN (the object's own directory) filled in."""
    return [Path(e.replace("$ORIGIN", str(origin)).replace("${ORIGIN}", str(origin))) for e in entries if e]
