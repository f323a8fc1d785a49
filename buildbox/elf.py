"""ELF facts read with pyelftools, and where the host's loader would find each library."""

from __future__ import annotations

import errno
import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path
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
    multiarch and traditional defaults."""
    dirs: list[Path] = []

    def read_conf(conf: Path, depth: int = 0) -> None:
        if depth > 8 or not conf.is_file():
            return
        for line in conf.read_text(errors="replace").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include "):
                pattern = line.split(None, 1)[1]
                if not pattern.startswith("/"):
                    pattern = str(conf.parent / pattern)
                for included in sorted(glob.glob(str(root) + pattern if str(root) != "/" else pattern)):
                    read_conf(Path(included), depth + 1)
            else:
                dirs.append(Path(line))

    read_conf(root / "etc/ld.so.conf")
    for default in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                    "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"):
        dirs.append(Path(default))
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def _matches(candidate: Path, info: ElfInfo) -> bool:
    """A library the loader would take: ELF of the same class and machine."""
    try:
        with open_regular(candidate) as f:
            elf = ELFFile(f)
            return elf.elfclass == info.elfclass and elf["e_machine"] == info.machine
    except (OSError, ELFError):
        return False


def resolve_needed(info: ElfInfo, origin: Path, dirs: list[Path]) -> dict[str, Path | None]:
    """Where the host's loader would find each NEEDED library (None: nowhere), in ld.so's order:
    RPATH (only without RUNPATH), then RUNPATH, then the default directories."""
    def expand(entries: tuple[str, ...]) -> list[Path]:
        return [Path(e.replace("$ORIGIN", str(origin)).replace("${ORIGIN}", str(origin)))
                for e in entries if e]

    search = (expand(info.rpath) if not info.runpath else []) + expand(info.runpath) + dirs
    found: dict[str, Path | None] = {}
    for name in info.needed:
        found[name] = None
        if "/" in name:
            found[name] = Path(name) if _matches(Path(name), info) else None
            continue
        for d in search:
            candidate = d / name
            if os.path.exists(candidate) and _matches(candidate, info):
                found[name] = candidate
                break
    return found
