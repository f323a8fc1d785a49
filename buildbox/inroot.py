"""Paths inside a root tree that the tree's own links cannot lead out of.

A tree buildbox writes into (a set being unpacked, a base, a box) holds links that a tarball, a
package or a build put there. Every path buildbox opens in such a tree is resolved by the kernel
as if the tree were `/`: openat2(2) with RESOLVE_IN_ROOT, so an absolute link restarts at the
tree's root and `..` stops there. The last component is never followed: buildbox replaces a link
rather than writing, chowning or chmodding through it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

SYS_OPENAT2 = 437          # the same number on every architecture (Linux 5.6+)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x04, 0x08
MAX_LINKS = 40

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_beneath(folder: Path, path: str, flags: int) -> int:
    """path below folder, opened with no link anywhere on the way (openat2 RESOLVE_BENEATH and
    RESOLVE_NO_SYMLINKS): a folder that changes after it was checked cannot lead elsewhere."""
    dirfd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        while True:
            fd = _libc.syscall(SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            if err not in (errno.EINTR, errno.EAGAIN):
                raise OSError(err, os.strerror(err), path)
    finally:
        os.close(dirfd)


class Root:
    """A directory taken as `/`: every method's path is resolved inside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def open(self, path: str, flags: int, mode: int = 0) -> int:
        """openat2 below the root; links (the last one too, unless O_NOFOLLOW) stay inside it."""
        how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0,
                       RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        for _ in range(100):
            fd = _libc.syscall(SYS_OPENAT2, self.fd, os.fsencode(path.lstrip("/") or "."),
                               ctypes.byref(how), ctypes.sizeof(how))
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            if err not in (errno.EINTR, errno.EAGAIN):   # EAGAIN: a rename raced the lookup; try again
                break
        raise OSError(err, os.strerror(err), path)

    def parent(self, path: str) -> tuple[int, str]:
        """An O_PATH descriptor of path's directory (resolved inside the root) and its last name."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts or parts[-1] == "..":
            raise OSError(errno.EINVAL, "not a name inside the root", path)
        return self.open("/".join(parts[:-1]), os.O_PATH | os.O_DIRECTORY), parts[-1]

    def lstat(self, path: str) -> os.stat_result | None:
        """The entry itself (a link is not followed), or None when there is none."""
        try:
            dirfd, name = self.parent(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(dirfd)

    def read_text(self, path: str) -> str | None:
        """A regular file's text (links followed inside the root), or None when there is none."""
        try:
            fd = self.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            return f.read().decode()

    def write(self, path: str, data: bytes | str, *, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
        """Make path a new regular file holding data: whatever was there (a link) is replaced, not written through."""
        dirfd, name = self.parent(path)
        try:
            _remove_entry(dirfd, name)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dirfd)
        finally:
            os.close(dirfd)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            set_attributes(fd, mode, owner)

    def makedirs(self, path: str, *, mode: int = 0o755, owner: tuple[int, int] | None = None,
                 replace: bool = False) -> None:
        """Make path and the directories above it that are missing (those made get mode and owner).
        With replace, path itself must end up a directory: a link or a file in its place is removed."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        for depth in range(1, len(parts) + 1):
            here = "/".join(parts[:depth])
            dirfd, name = self.parent(here)
            try:
                if replace and depth == len(parts):
                    _remove_entry(dirfd, name, keep_directory=True)
                os.mkdir(name, 0o700, dir_fd=dirfd)
            except FileExistsError:
                continue
            finally:
                os.close(dirfd)
            self.set(here, mode=mode, owner=owner)

    def set(self, path: str, *, mode: int | None = None, owner: tuple[int, int] | None = None,
            mtime: float | None = None) -> None:
        """Mode, owner and mtime of a file or directory; a link there is an error, never followed."""
        dirfd, name = self.parent(path)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                         dir_fd=dirfd)
        finally:
            os.close(dirfd)
        try:
            set_attributes(fd, mode, owner, mtime)
        finally:
            os.close(fd)

    def lchown(self, path: str, uid: int, gid: int) -> None:
        """The owner of the entry itself, a link included (its target is untouched)."""
        dirfd, name = self.parent(path)
        try:
            os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
        finally:
            os.close(dirfd)

    def symlink(self, target: str, path: str) -> None:
        dirfd, name = self.parent(path)
        try:
            _remove_entry(dirfd, name)
            os.symlink(target, name, dir_fd=dirfd)
        finally:
            os.close(dirfd)

    def remove(self, path: str) -> None:
        """Remove a file or link (or an empty directory), if there is one."""
        dirfd, name = self.parent(path)
        try:
            _remove_entry(dirfd, name, directories=True)
        finally:
            os.close(dirfd)

    def escapes(self, path: str, target: str, *, absolute_ok: bool = False) -> bool:
        """Whether a link at path pointing to target leads up past the root, counting the links
        already in the tree on the way. An absolute link leads out too, unless absolute_ok: in a
        root filesystem (a set) it means the same place inside the root, as the box reads it."""
        if target.startswith("/") and not absolute_ok:
            return True
        pending = ([] if target.startswith("/") else path.split("/")[:-1]) + target.split("/")
        where: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not where:
                    return True
                where.pop()
                continue
            where.append(part)
            found = self.lstat("/".join(where))
            if found and stat.S_ISLNK(found.st_mode):
                hops += 1
                dirfd, name = self.parent("/".join(where))
                try:
                    link = os.readlink(name, dir_fd=dirfd)
                finally:
                    os.close(dirfd)
                if (link.startswith("/") and not absolute_ok) or hops > MAX_LINKS:
                    return True
                where = [] if link.startswith("/") else where[:-1]
                pending[:0] = link.split("/")
        return False


def set_attributes(fd: int, mode: int | None, owner: tuple[int, int] | None, mtime: float | None = None) -> None:
    """Owner first: chown clears the setuid and setgid bits that the mode then puts back."""
    if owner is not None:
        os.fchown(fd, *owner)
    if mode is not None:
        os.fchmod(fd, mode)
    if mtime is not None:
        os.utime(fd, (mtime, mtime))


def _remove_entry(dirfd: int, name: str, *, directories: bool = False, keep_directory: bool = False) -> None:
    try:
        found = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(found.st_mode) and keep_directory:
        return
    if stat.S_ISDIR(found.st_mode):
        if not directories:
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", name)
        os.rmdir(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)
