"""out/NAME: a build's artifacts put where the user asked, whole, and only over what buildbox made.

What is installed is re-hashed on the way out of the cache (a cached build whose bytes changed
is never shipped), and remembered by each file's stat signature (inode, size, mtime, ctime), so
that a later run tells an untouched out/NAME from one edited since without hashing it again.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from buildbox.errors import BuildFailed, InputError
from buildbox.log import escaped
from buildbox.process import stop_if_interrupted
from buildbox.records import MANIFEST, Manifest
from buildbox.store import copy_sparse, file_sha256, fsync_dir, remove_tree, write_atomically

AT_FDCWD, RENAME_EXCHANGE = -100, 2

_libc = ctypes.CDLL(None, use_errno=True)


class CorruptEntry(BuildFailed):
    """A cached build whose files are not what its manifest says: not to be shipped."""


def made_by_buildbox(dest: Path) -> bool:
    """Whether dest is an out/NAME that buildbox installed: a directory with buildbox's manifest."""
    return is_manifest(dest / MANIFEST)


def is_manifest(path: Path) -> bool:
    """Whether path is a manifest buildbox wrote (a regular file: never a FIFO to hang on)."""
    return Manifest.read(path) is not None


def check_dest(dest: Path) -> None:
    """dest may be written: absent, or an out/NAME that buildbox installed."""
    if os.path.lexists(dest) and (dest.is_symlink() or not dest.is_dir() or not made_by_buildbox(dest)):
        raise InputError(f"{_shown(dest)} exists and was not made by buildbox: move it or pick --out")


def install(entry: Path, dest: Path, stamps: Path) -> dict[str, str]:
    """Put a build entry's artifacts and manifest at dest, each re-hashed against the manifest on
    the way; dest is the old tree or the new one at every moment (the two are exchanged in one
    renameat2). Returns each artifact's sha256, as hashed while copying."""
    check_dest(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_litter(dest)
    manifest = Manifest.read(entry / MANIFEST)
    if manifest is None:
        raise CorruptEntry(f"the cached build {entry.name[:12]} has no readable manifest")
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    remove_tree(tmp)
    tmp.mkdir()
    try:
        digests = {}
        for rel, fact in sorted(manifest.artifacts.items()):
            stop_if_interrupted(f"the copy to {_shown(dest)}")   # Ctrl-C: the old out/NAME stays
            digests[rel] = _copy_checked(entry, rel, tmp, fact.sha256)
        shutil.copy2(entry / MANIFEST, tmp / MANIFEST)
        _fsync_tree(tmp)
        stop_if_interrupted(f"the copy to {_shown(dest)}")
        if os.path.lexists(dest):
            _exchange(tmp, dest)   # tmp now holds the old tree
        else:
            os.rename(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        remove_tree(tmp)
    stamps.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(stamps, json.dumps({"dest": str(dest.absolute()), "key": manifest.key,
                                         "files": {rel: _stamp(dest / rel) for rel in digests}}) + "\n")
    return digests


def is_current(dest: Path, key: str, stamps: Path) -> bool:
    """Whether dest holds the build `key`, every artifact with the content the build made: a file
    whose stat signature is the one recorded at install is taken as untouched, any other re-hashed."""
    manifest = Manifest.read(dest / MANIFEST)
    if manifest is None or manifest.key != key:
        return False
    try:
        recorded: dict[str, Any] = json.loads(stamps.read_text())
    except (OSError, ValueError):
        recorded = {}
    known = recorded.get("files", {}) if recorded.get("key") == key else {}
    for rel, fact in manifest.artifacts.items():
        try:
            if known.get(rel) == _stamp(dest / rel):
                continue
            if file_sha256(dest / rel) != fact.sha256:
                return False
        except OSError:
            return False
    return True


def _shown(path: Path) -> str:
    """path as the user wrote it: relative to the current directory when it lies below it; on one line."""
    try:
        return escaped(str(path.absolute().relative_to(Path.cwd())))
    except ValueError:
        return escaped(str(path))


def remove_litter(dest: Path) -> None:
    """The half-installed trees of runs that died (their pid is gone)."""
    for litter in dest.parent.glob(f".{dest.name}.tmp-*"):
        pid = litter.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_tree(litter)


def _copy_checked(entry: Path, rel: str, into: Path, sha256: str) -> str:
    source, dest = entry / "files" / rel, into / rel
    digest = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        copy_sparse(source, dest, digest)
    except OSError as err:   # a full disk says nothing of where: name the file being written
        raise OSError(err.errno, err.strerror, err.filename or str(dest)) from None
    if digest.hexdigest() != sha256:
        raise CorruptEntry(f"the cached build {entry.name[:12]} is damaged: {escaped(rel)} has sha256 "
                           f"{digest.hexdigest()}, its manifest says {sha256}")
    shutil.copystat(source, dest)
    return sha256


def _stamp(path: Path) -> list[int]:
    st = os.stat(path, follow_symlinks=False)
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def _exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(b))
