"""The kernel's primitives for boxes whose root is not host root: a user namespace holding a
cache's id range, idmapped mounts onto it, and host-side work done as the box's root.

A cache's trees keep the ids a box sees (builder's files are uid 1000 on disk). A box runs in a
user namespace that maps box ids 0-65535 onto the cache's host range (store.Ids), and sees its
layers through idmapped mounts (mount_setattr(2) with MOUNT_ATTR_IDMAP) with that same mapping:
on-disk 1000 is host id base+1000 to the kernel, which is builder inside the box. No host
account owns anything a box runs as, and box root holds capabilities over its own namespace only.

box.py is the caller: it decides what is mounted where; this module only speaks to the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from buildbox.errors import BuildFailed
from buildbox.store import Ids

# The mount API's syscalls have one number on every architecture (Linux 5.2+, mount_setattr 5.12+).
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 0x1, os.O_CLOEXEC
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_IDMAP = 0x1, 0x2, 0x4, 0x100000
CLONE_NEWUSER = 0x10000000
PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP = 28, 0x4
MS_NOSUID, MS_NODEV = 0x2, 0x4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_namespaces: dict[Ids, int] = {}   # one user namespace per range for the life of buildbox
T = TypeVar("T")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def userns(ids: Ids) -> int:
    """A descriptor of a user namespace mapping box ids 0..count-1 onto ids' host range (uids and
    gids alike): what idmapped mounts take, and what host-side work for a box enters."""
    if ids in _namespaces:
        return _namespaces[ids]
    # A process that unshares its user namespace and waits; root writes the maps itself (util-linux's
    # --map-users would call newuidmap, which wants an /etc/subuid line for root).
    holder = subprocess.Popen(["unshare", "--user", "--", "sleep", "60"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        mine = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/user") == mine:
            if holder.poll() is not None or time.monotonic() > deadline:
                raise BuildFailed("cannot make the boxes' user namespace (unshare --user did not start)",
                                  hint="buildbox needs a kernel with user namespaces (CONFIG_USER_NS)")
            time.sleep(0.001)
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{holder.pid}/{name}", "w") as f:
                f.write(ids.map_line())
        fd = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise BuildFailed(f"cannot map the boxes' ids {ids.host}-{ids.host + ids.count - 1}: {err.strerror}",
                          hint="run buildbox as root on the host") from None
    finally:
        holder.kill()
        holder.wait()
    _namespaces[ids] = fd
    return fd


def mount_idmapped(source: Path, target: Path, ids: Ids, *, readonly: bool) -> None:
    """Mount a clone of source (not what is mounted below it) at target, its ids seen through ids'
    mapping, nosuid and nodev (and read-only): the mount a box sees a cache tree through."""
    fd = _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
    if fd < 0:
        _fail("open_tree", source)
    try:
        flags = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if readonly else 0)
        attr = _MountAttr(flags, 0, 0, userns(ids))
        if _libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL or not readonly:
                _fail("idmapping", source, err,
                      hint=f"keep the cache on a filesystem with idmapped mounts (ext4, xfs, btrfs, tmpfs)")
            # A host file on a filesystem without idmapped mounts (bound read-only, as /etc/resolv.conf
            # is): seen with its host owners, which a box maps to nobody.
            attr = _MountAttr(flags & ~MOUNT_ATTR_IDMAP, 0, 0, 0)
            if _libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
                _fail("mount_setattr", source)
        if _libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH) != 0:
            _fail("move_mount", target)
    finally:
        os.close(fd)


def mount_overlay(target: Path, options: str, *, cwd: Path, ids: Ids) -> None:
    """Mount an overlay at target, its layers named in options relative to cwd, by a child whose
    filesystem ids are box root's: overlayfs makes its work directory and copies files up with its
    mounter's credentials, and through idmapped layers host root's ids have no owner on disk
    (EOVERFLOW). The child keeps host root's capabilities (SECBIT_NO_SETUID_FIXUP)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: its errno, if any, goes back through the pipe
        err = errno.EIO
        try:
            os.close(read)
            os.chdir(cwd)
            if _libc.prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) != 0:
                err = ctypes.get_errno()
            else:
                _libc.setfsgid(ids.host)
                _libc.setfsuid(ids.host)
                ok = _libc.mount(b"overlay", os.fsencode(target), b"overlay", MS_NOSUID | MS_NODEV,
                                 options.encode()) == 0
                err = 0 if ok else ctypes.get_errno()
        finally:
            os.write(write, str(err).encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        said = answer.read()
    os.waitpid(pid, 0)
    err = int(said) if said.isdigit() else errno.EIO
    if err:
        raise BuildFailed(f"mounting the box's overlay at {target}: {os.strerror(err)}",
                          hint="buildbox needs overlayfs with idmapped layers (Linux 5.19 or later), as root")
    if os.statvfs(target).f_flag & os.ST_RDONLY:   # overlayfs mounts read-only what it cannot write
        from buildbox.process import run
        run(["umount", target], what=f"umount {target}", capture=True, cleanup=True)
        raise BuildFailed(f"the box's overlay at {target} came up read-only (see dmesg)",
                          hint="keep the cache on a filesystem with idmapped mounts (ext4, xfs, btrfs, tmpfs)")


def as_box_root(ids: Ids, root: Path, work: Callable[[Path], T]) -> T:
    """work(Path(".")) run with the current directory at root, as the box's root: in a child
    process that has entered the boxes' user namespace, so that what it makes in the box belongs
    to the box's ids (host root's files would have no owner a box can see: the kernel refuses to
    make them on an idmapped layer). The child cannot reach anything of the host through the tree:
    it holds capabilities in that namespace only. Returns what work returns; raises what it raised."""
    fd = userns(ids)
    here = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: one thread, as setns(CLONE_NEWUSER) requires
        os.close(read)
        try:
            os.fchdir(here)
            if _libc.setns(fd, CLONE_NEWUSER) != 0:
                raise OSError(ctypes.get_errno(), f"setns: {os.strerror(ctypes.get_errno())}")
            os.setgroups([])
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            result: tuple[bool, Any] = (True, work(Path(".")))
        except BaseException as err:   # handed to the parent, raised there
            result = (False, err)
        try:
            data = pickle.dumps(result)
        except Exception as err:
            data = pickle.dumps((False, BuildFailed(f"host-side work in the box failed: {err!r}")))
        with os.fdopen(write, "wb") as out:
            out.write(data)
        os._exit(0)
    os.close(write)
    os.close(here)
    with os.fdopen(read, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    try:
        ok, value = pickle.loads(data)
    except Exception:   # nothing, or half of it: the child died
        ok, value = False, BuildFailed("host-side work in the box died before it said how it went")
    if not ok:
        raise value
    return value


def _fail(what: str, path: Path, err: int | None = None, *, hint: str | None = None) -> None:
    err = err if err is not None else ctypes.get_errno()
    raise BuildFailed(f"{what} {path}: {os.strerror(err)}", hint=hint or "run buildbox as root on the host")
