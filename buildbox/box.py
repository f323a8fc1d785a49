"""One sandbox: an overlay clone of read-only layers, its mounts, and commands run inside it.

This is the only module that mounts. Every mount is undone by the box's ExitStack, in reverse
order, on every way out of the `with` block: return, exception, Ctrl-C.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import json
import os
import shlex
import shutil
import socket
import stat
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from buildbox import idmap, log, process, space
from buildbox.errors import BuildFailed, InputError
from buildbox.inroot import Root
from buildbox.log import debug
from buildbox.process import run
from buildbox.sandbox import (Bind, Capabilities, Cgroups, Command, Devices, DiskImage, DropCapabilities, Hostname,
                              HostView, IdMap, LayerImage, Namespaces, NetnsFile, Network, NoNewPrivs, Op, Overlay,
                              Plan, PivotRoot, Proc, Rlimits, RuntimeRoot, Seccomp, SharedOverlay, User)
from buildbox.records import FailedBox
from buildbox.store import Ids, Store, mounts_under, remove_tree

# The device nodes a build needs and nothing else (no disks, no consoles, no host ttys): bound
# from the host into the tmpfs /dev each box gets of its own.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PLAN = "plan.txt"   # beside a failed box's failed.json: the plan of its last command

ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_SYMLINKS = 40
ENTER = Path(__file__).with_name("enter.py")
HOSTNAME = "buildbox"
CLONE_NEWUTS = 0x04000000
MNT_DETACH = 0x2
# Every command in a box gets its own user, mount, UTS, IPC and PID namespaces (its ids mapped
# onto the cache's range, its own /proc, its own hostname, no host processes in sight), and its
# own network namespace unless it fetches.
NAMESPACES = ("user", "mount", "uts", "ipc", "pid")
KEPT = "kept"   # a box left with --keep, for the user: never reaped
IMAGE = "disk.img"   # a box's disk, where its upper layer lives when [limits] disk bounds it
T = TypeVar("T")
MIN_DISK = 16 << 20   # the least a box's disk can be (ext4 and a build need room), as [limits] disk's least


def resolve_in_root(root: Path, path: str) -> Path:
    """Where `path` leads inside the box whose / is `root`, following symlinks as the box would.

    An absolute symlink restarts at root and '..' stops at root, so a link to /etc/shadow
    in the box names the box's /etc/shadow, never the host's.
    """
    parts = collections.deque(path.split("/"))
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                raise BuildFailed(f"too many levels of symlinks resolving {path} in the box")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts.extendleft(reversed(target.split("/")))
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


class Box:
    """A writable clone of `layers` (top first), mounted at self.root for the life of the block.

    The overlay's layers are idmapped mounts onto the cache's id range (idmap.py), and every
    command runs in a user namespace of that range: box root is not host root. With ids=False,
    a plain overlay in which nothing may run (the base stage: host code fills it)."""

    def __init__(self, store: Store, layers: Sequence[Path], *, label: str,
                 upper: Path | None = None, keep: bool = False, log: Path | None = None,
                 save_failed: Path | None = None, disk: int | None = None, ids: bool = True,
                 rerun: str | None = None) -> None:
        self.store = store
        self.ids: Ids | None = store.ids() if ids else None
        self.disk = disk   # bytes the box may write: its upper layer on an ext4 image of that size
        self.save_failed = save_failed   # where the box's changes go if its block fails
        # What a user types to get this box back once it failed (`buildbox shell --failed RECIPE`),
        # to run its failed command again: the hint of a failed command says so.
        self.rerun = rerun
        self._failed = False
        self.log = log
        self.layers = list(layers)
        self.label = label
        self.keep = keep
        # The owner's pid and start time in the name: a later run can tell a box of a dead run.
        self.dir = store.dir("boxes") / f"{label}-{owner()}-{uuid.uuid4().hex[:8]}"
        self.upper = upper or self.dir / "upper"
        self.root = self.dir / "root"
        self._stack = contextlib.ExitStack()
        self._done: list[Op] = []   # the host-side operations, as they are done
        self.last_plan: Plan | None = None   # the plan of the last command run, kept if the box fails

    @property
    def plan(self) -> Plan:
        """What the box is made of so far: its host-side operations (Box.run adds each command's half)."""
        return Plan(tuple(self._done))

    def __enter__(self) -> Box:
        for path in (*self.layers, self.dir):
            if any(c in str(path) for c in ":,\n"):
                raise InputError(f"the cache path {path} holds ':' or ','", hint="use a cache path without them")
        self.dir.mkdir(parents=True)
        # Box root enters its root from here (enter.py): searchable whatever the host's umask
        # (verify runs under 077); cache/boxes above it is host root's alone.
        os.chmod(self.dir, 0o711)
        self._stack.callback(self._remove)
        try:
            # The work directory beside the upper one: overlayfs wants both on one mount.
            work = self.upper.parent / f".{self.upper.name}.work"
            if self.disk:
                work = self._mount_disk()
            else:
                self._stack.callback(remove_tree, work)
            lowers = [self._mount_image(layer, index) if layer.is_file() else layer
                      for index, layer in enumerate(self.layers)]
            for d in (self.upper, work, self.root):
                d.mkdir(exist_ok=True)
            # The upper layer's top is the box's /: its mode must not follow the host's umask.
            os.chmod(self.upper, 0o755)
            if self.ids:
                lowers = [self._idmapped(layer, f"l{index}", readonly=True) for index, layer in enumerate(lowers)]
                both = self._idmapped(self.upper.parent, "u", readonly=False)
                upper, work = both / self.upper.name, both / work.name
            else:
                upper = self.upper
            # Layers named relative to the box's folder: the overlay's options, which every
            # mountinfo shows, then name no host path.
            lower = ":".join(os.path.relpath(p, self.dir) for p in lowers)
            options = (f"lowerdir={lower},upperdir={os.path.relpath(upper, self.dir)},"
                       f"workdir={os.path.relpath(work, self.dir)}")
            # nosuid,nodev: a setuid file or a device node written into the box grants nothing.
            if self.ids:
                if not self.keep:   # pushed first: an overlay that half came up goes too
                    self._stack.callback(_unmount, self.root)
                idmap.mount_overlay(self.root, options, cwd=self.dir, ids=self.ids)
                # overlayfs holds private clones of its layers' mounts: the idmapped mount points
                # go now, and the box is one mount again (with its disk), as `--keep` says.
                for place in (*lowers, both):
                    _unmount(place)
                    place.rmdir()
            else:
                self._mount(["-t", "overlay", "overlay", "-o", f"nosuid,nodev,{options}"], self.root,
                            undo=not self.keep, cwd=self.dir)
            self._done.append(Overlay(self.root, tuple(self.layers), self.upper, idmapped=bool(self.ids)))
        except BaseException:
            self._stack.close()
            raise
        return self

    def _idmapped(self, source: Path, name: str, *, readonly: bool) -> Path:
        """source seen through the cache's id mapping, at a mount point of that name in the box's folder."""
        assert self.ids
        place = self.dir / name
        place.mkdir()
        self._stack.callback(_unmount, place)   # if the overlay never comes up
        idmap.mount_idmapped(source, place, self.ids, readonly=readonly)
        return place

    def as_root(self, work: Callable[[Path], T]) -> T:
        """work(root) done on the box's tree as the box's root (its files then belong to the
        box's ids); root is the box's / as a path work can use."""
        if not self.ids:
            return work(self.root)
        return idmap.as_box_root(self.ids, self.root, work)

    def _mount_disk(self) -> Path:
        """The upper layer on an ext4 image of `disk` bytes (sparse: it takes what is written), so
        that a build fills its own disk and not the host's; returns the overlay's work directory."""
        image, disk = self.dir / IMAGE, self.dir / "disk"
        # Sparse, so it takes only what is written: no larger than the cache's filesystem can
        # still give, less a reserve, or a full box would fill the host's disk too.
        reserve = space.reserve(self.dir)
        size = min(self.disk, space.free_bytes(self.dir) - reserve)
        if size < MIN_DISK:
            space.require_room(self.dir, MIN_DISK + reserve, f"the box {self.label}'s disk ([limits] disk)",
                         "lower [limits] disk in the recipe")
        if size < self.disk:
            log.note(f"the box's disk is {size >> 20}M, the cache's free space less a reserve, not [limits] disk")
        with open(image, "wb") as f:
            f.truncate(size)
        run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", image],
            what="making the box's disk", capture=True)
        disk.mkdir()
        self._mount(["-o", "loop,nosuid,nodev", str(image)], disk, undo=not self.keep)
        self._done.append(DiskImage(image, size, disk))
        self.upper = disk / "upper"
        return disk / "work"

    def _mount_image(self, image: Path, index: int) -> Path:
        """A layer kept as a disk image (a failed build's box): mounted read-only, its upper/ the layer."""
        place = self.dir / f"image{index}"
        place.mkdir()
        self._mount(["-o", "loop,ro,nosuid,nodev", str(image)], place, undo=not self.keep)
        self._done.append(LayerImage(image, place))
        return place / "upper"

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._failed = exc_type is not None
        self._stack.close()

    def path(self, box_path: str) -> Path:
        """The host path of box_path, resolved inside the box."""
        return resolve_in_root(self.root, box_path)

    def write(self, box_path: str, text: str) -> None:
        """A new file in the box (resolved inside it; a link there is replaced, not written through)."""
        def write(root: Path) -> None:
            with Root(root) as tree:
                tree.makedirs(os.path.dirname(box_path), mode=0o755)
                tree.write(box_path, text)
        self.as_root(write)

    def bind(self, host: Path, box_path: str, *, readonly: bool = True) -> None:
        """Make a host path visible in the box (on purpose, and said in the log)."""
        target = self._target(box_path, dir=host.is_dir())
        line = f"bind {host} -> {box_path}{' (read-only)' if readonly else ''}"
        log.note(line)
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"buildbox: {line}\n")
        if self.ids:   # its owners as the box sees them: the cache's box ids, host root as box root
            self._stack.callback(_unmount, target)
            idmap.mount_idmapped(host, target, self.ids, readonly=readonly)
        else:
            self._mount(["--bind", str(host)], target)
            if readonly:
                run(["mount", "-o", "remount,bind,ro,nosuid,nodev", target], what=f"read-only remount of {box_path}")
        self._done.append(Bind(host, box_path, readonly=readonly, idmapped=bool(self.ids)))

    def overlay(self, shared: Path, box_path: str) -> Path:
        """Make a shared cache directory (the .deb cache) writable in the box without the box
        writing to it: an overlay of its own at box_path, the cache its lower layer (read-only,
        idmapped), the box's writes in an upper layer in the box's folder, whose path is returned
        (for host code to take from it what checks out). A setuid file or a changed mode made
        there never reaches the host's cache."""
        assert self.ids
        target = self._target(box_path, dir=True)
        line = f"overlay {shared} -> {box_path} (writes stay in the box)"
        log.note(line)
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"buildbox: {line}\n")
        index = len(list(self.dir.glob("over*")))
        place = self.dir / f"over{index}"
        for d in (place / "upper", place / "work"):
            d.mkdir(parents=True)
        os.chmod(place / "upper", 0o755)
        lower = self._idmapped(shared, f"o{index}l", readonly=True)
        both = self._idmapped(place, f"o{index}u", readonly=False)
        self._stack.callback(_unmount, target)
        idmap.mount_overlay(target, f"lowerdir={lower.name},upperdir={both.name}/upper,workdir={both.name}/work",
                            cwd=self.dir, ids=self.ids)
        for helper in (lower, both):
            _unmount(helper)
            helper.rmdir()
        self._done.append(SharedOverlay(shared, box_path, place / "upper"))
        return place / "upper"

    def _target(self, box_path: str, *, dir: bool) -> Path:
        """A mount point inside the box, made if missing; never a symlink that could lead out."""
        # Directories made here are 0755 whatever the host's umask (verify runs under 077): the
        # build user must be able to reach what is bound below them.
        def make(root: Path) -> None:
            with Root(root) as tree:
                tree.makedirs(box_path if dir else os.path.dirname(box_path), mode=0o755)
                if not dir and tree.lstat(box_path) is None:
                    tree.write(box_path, "")
        if not self._has(box_path, dir=dir):   # most are there already: no trip into the box's ids
            self.as_root(make)
        return self.path(box_path)

    def _has(self, box_path: str, *, dir: bool) -> bool:
        with Root(self.root) as tree:
            if not dir:
                found = tree.lstat(box_path)
                return found is not None and stat.S_ISREG(found.st_mode)
            try:
                os.close(tree.open(box_path, os.O_PATH | os.O_DIRECTORY))
                return True
            except OSError:
                return False

    def _mount(self, args: list[str], target: Path, *, undo: bool = True, cwd: Path | None = None) -> None:
        if undo:   # before the mount: a mount(8) killed halfway may still have mounted
            self._stack.callback(_unmount, target)
        run(["mount", *args, target], what=f"mount {target}", cwd=cwd)

    def run(self, argv: Sequence[str], *, what: str, user: str | None = None,
            env: Mapping[str, str] | None = None, cwd: str = "/", log: Path | None = None,
            stream: bool = False, capture: bool = False, network: bool = False,
            limits: Mapping[str, int] | None = None, timeout: float | None = None,
            silence: float | None = None, interactive: bool = False, log_limit: int | None = None,
            cgroups: Sequence[str] = (), outbound: bool = False, host_ports: Sequence[int] = ()) -> str:
        """Run argv inside the box, in fresh namespaces, with exactly env (root's PATH if none),
        as user "UID:GID" or root; in the cgroups whose cgroup.procs files are given. Without a
        network unless asked for one: the host's own (network: the stages that fetch pinned
        content), or with outbound, a network namespace of the box's own whose traffic pasta
        carries out (a build's `network = true`, a fetch: the host's loopback, its abstract
        sockets and its gateway stay out of reach, but for the TCP host_ports, which the box's
        127.0.0.1:PORT reaches on the host's loopback)."""
        assert self.ids, "nothing runs in a box without ids of its own"
        netns = self._outbound_netns(host_ports) if outbound else None
        net = Network("pasta", netns, tuple(host_ports)) if netns else Network("host" if network else "none")
        command = Command(tuple(argv), cwd, dict(env or {"PATH": ROOT_PATH}))
        plan = self.plan + [
            *([Cgroups(tuple(cgroups))] if cgroups else []), net,
            Namespaces((*NAMESPACES, *(["net"] if net.mode == "none" else []))),
            IdMap(self.ids.host, self.ids.count), Proc(), Devices(DEVICES), Hostname(HOSTNAME),
            PivotRoot(self.root), Rlimits(dict(limits or {})), *_drop_to(user, self.root), command]
        self.last_plan = plan
        _show(plan, f"box {self.label}")
        rerun = None
        if self.rerun and self.save_failed and not self.keep:   # the box is kept if this fails
            rerun = (f"`{self.rerun}`, then, in {cwd}, `{command.shown()}` (the box's plan: "
                     f"{self.save_failed / PLAN})")
        return _enter(plan, self.dir, what=what, log=log, stream=stream, capture=capture, timeout=timeout,
                      silence=silence, interactive=interactive, log_limit=log_limit, rerun=rerun)

    def _outbound_netns(self, host_ports: Sequence[int] = ()) -> Path:
        """A network namespace of the box's own (bound to a file in the box's folder, so that it
        goes with the box), its traffic carried out by pasta, which quits when it is gone."""
        netns = self.dir / "netns"
        if netns.exists():
            return netns
        if not shutil.which("pasta"):
            raise InputError("network = true needs pasta", hint="apt-get install passt")
        netns.touch()
        self._stack.callback(netns.unlink, missing_ok=True)
        self._stack.callback(_unmount, netns)
        run(["unshare", f"--net={netns}", "true"], what="making the build's network namespace")
        # -T/-U none: no port of the box's reaches the host's loopback (-T PORTS: only those, TCP);
        # --no-map-gw: the gateway address is not the host. --runas 0: Debian 12's pasta would
        # drop to nobody and fail.
        tcp = ",".join(str(int(port)) for port in host_ports) or "none"
        run(["pasta", "--runas", "0", "-T", tcp, "-U", "none", "--no-map-gw", "--config-net", "--quiet",
             "--netns", netns, "--netns-only"], what="pasta for the build's network", capture=True)
        self._done.append(NetnsFile(netns, tuple(int(port) for port in host_ports)))
        return netns

    def _remove(self) -> None:
        if self.keep:
            (self.dir / KEPT).touch()
            mounted = " ".join(shlex.quote(str(p)) for p in (self.root, *([self.dir / "disk"] if self.disk else [])))
            log.say(f"buildbox: kept the box {self.label} at {self.root}: look at its files there (never run its "
                    "programs as host root: `buildbox shell` enters a box as the box does); "
                    f"`umount -R {mounted} && rm -r {shlex.quote(str(self.dir))}` when done")
            return
        left = mounts_under(self.dir)
        if left:
            # Never delete through a mount: a bind of a host directory would lose its files.
            log.warn(f"not removing {self.dir}: still mounted: {', '.join(left)}")
            return
        if self._failed and self.save_failed:
            self._save()
        remove_tree(self.dir)

    def _save(self) -> None:
        """Keep what the failed block changed (the upper layer) and the layers under it, so that
        `buildbox shell --failed` can put the same box together again."""
        dest = self.save_failed
        with self.store.lock(f"failed-{dest.name}"):
            remove_tree(dest)
            dest.mkdir(parents=True)
            if self.disk:   # the whole disk image, unmounted by now: it stays within the same bound
                os.rename(self.dir / IMAGE, dest / IMAGE)
                top = dest / IMAGE
            else:
                os.rename(self.upper, dest / "upper")
                top = dest / "upper"
            FailedBox(top, tuple(self.layers), time.time()).write(dest)
            # What the box was made of and what it last ran (environment names, no values), and
            # how to get it back: where a user starts to see why it failed.
            rerun = [f"# to get this box back: {self.rerun}\n"] if self.rerun else []
            (dest / PLAN).write_text("".join([*rerun, (self.last_plan or self.plan).text(self.label)]))


def run_on_host(store: Store, argv: Sequence[str], *, writable: Path, at: str, uid: int, env: Mapping[str, str],
                what: str, log: Path | None, stream: bool, timeout: float, limits: Mapping[str, int] | None = None,
                cgroups: Sequence[str] = ()) -> str:
    """Run argv on a view of the host that holds only what running a host binary needs (/usr, /bin,
    /sbin, /lib*, /etc, read-only: its own libraries; empty /run, /var, /home, /root, so no host
    unix socket), with `writable` bound at `at` (in a /tmp of its own) and the six device nodes,
    as uid with no capabilities, no_new_privs and the seccomp filter, in the cgroups given and
    with limits, in mount, PID, network, IPC and UTS namespaces of its own: whatever it starts,
    daemons included, dies when it ends, and it reaches no network."""
    plan = Plan((*([Cgroups(tuple(cgroups))] if cgroups else []), Network("none"),
                 Namespaces(("mount", "uts", "ipc", "pid", "net"), by="unshare(1)"), HostView(writable, at),
                 Proc(), Devices(DEVICES, ptys=False), Hostname(HOSTNAME), Rlimits(dict(limits or {})),
                 User(uid, uid, (uid,)), DropCapabilities(), NoNewPrivs(), Seccomp(),
                 Command(tuple(argv), at, dict(env))))
    _show(plan, "host view")
    return _enter(plan, store.dir("boxes"), what=what, log=log, stream=stream, timeout=timeout,
                  timeout_key="[verify] timeout")


def run_helper(store: Store, argv: Sequence[str], *, tree: Path, at: str, env: Mapping[str, str], what: str,
               log: Path | None) -> str:
    """Run a host program that makes a tree (mmdebstrap) as the box's root, not host root: in a
    user namespace of the cache's ids, on the host view run_on_host gives (the host's /usr, /bin,
    /sbin, /lib*, /etc read-only), with the host's network, and tree bound writable at `at`, seen
    through the cache's id mapping (enter.py mounts it so, in a mount namespace that dies with the
    helper), so that what it makes holds box ids on disk."""
    ids = store.ids()
    plan = Plan((Network("host"), Namespaces(("user", "mount", "uts", "ipc", "pid")), IdMap(ids.host, ids.count),
                 HostView(tree, at, idmapped=True), Proc(), Devices(DEVICES, ptys=False), Hostname(HOSTNAME),
                 Command(tuple(argv), "/", dict(env))))
    _show(plan, "helper")
    return _enter(plan, store.dir("boxes"), what=what, log=log)


def run_in_root(root: Path, argv: Sequence[str], *, user: tuple[int, str], capabilities: Sequence[str],
                state: Sequence[tuple[Path, str]], env: Mapping[str, str], what: str, private: Path,
                limits: Mapping[str, int] | None = None, cgroups: Sequence[str] = (), foreground: bool = False,
                timeout: float | None = None, log: Path | None = None) -> str | int:
    """Run argv in a service's runtime root (buildbox exec, an install's check): the root
    read-only as /, its state bound writable, a /tmp, /proc and /dev of its own; as the service
    user (uid = gid) with only the given capabilities, no_new_privs and the seccomp filter, in
    its own mount, PID and IPC namespaces, on the host's network, in the cgroups given. In the
    foreground (its output the terminal's, the signals a supervisor sends passed on), returning
    its exit status; else as run() runs a command, returning its output."""
    uid, name = user
    plan = Plan((*([Cgroups(tuple(cgroups))] if cgroups else []), Network("host"),
                 Namespaces(("mount", "pid", "ipc")), RuntimeRoot(root, tuple(state)), Proc(),
                 Devices(DEVICES, ptys=False), Rlimits(dict(limits or {})), User(uid, uid, (uid,), name),
                 Capabilities(tuple(capabilities)), NoNewPrivs(), Seccomp(), Command(tuple(argv), "/", dict(env))))
    _show(plan, "runtime root")
    if foreground:
        return _enter(plan, private, what=what, foreground=True)
    return _enter(plan, private, what=what, capture=True, timeout=timeout, log=log, timeout_key="the check's timeout")


def _show(plan: Plan, label: str) -> None:
    """--debug: the plan, one line per operation, before its command runs."""
    if log.debugging:
        for line in plan.describe():
            debug(f"{label}: {line}")


def _drop_to(user: str | None, root: Path) -> list[Op]:
    """The operations that make a command run as user "UID:GID" with no way back to root; none for box root."""
    if not user:
        return []
    uid, gid = (int(n) for n in user.split(":"))
    return [User(uid, gid, (gid,), _user_name(root, uid)), DropCapabilities(), NoNewPrivs(), Seccomp()]


def _user_name(root: Path, uid: int) -> str | None:
    """uid's name in the box's /etc/passwd (read inside the box's root, a bounded amount), for the plan."""
    try:
        with Root(root) as tree:
            fd = tree.open("/etc/passwd", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            with os.fdopen(fd, "rb") as f:
                text = f.read(1 << 20).decode(errors="replace") if stat.S_ISREG(os.fstat(fd).st_mode) else ""
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2] == str(uid):
            return log.escaped(fields[0])
    return None


def _enter(plan: Plan, private: Path, *, what: str, log: Path | None = None, stream: bool = False,
           capture: bool = False, timeout: float | None = None, silence: float | None = None,
           interactive: bool = False, log_limit: int | None = None, timeout_key: str = "[limits] timeout",
           rerun: str | None = None, foreground: bool = False) -> Any:
    """Run enter.py with the in-namespace half of plan: a box's plan (with an IdMap) makes its
    namespaces itself (NAMESPACES, and a network namespace of its own unless the plan has the
    network or names one); a host view's runs as the first process of fresh mount, UTS, IPC, PID
    and network namespaces. A failure's hint is rerun (what a user types to run it again), never
    this command line: it names a plan file gone by then."""
    doc = plan.to_enter()
    # The plan (the environment, secrets included, and the command) goes through a file only
    # root can read (in `private`), which enter.py removes once read: a command line is every
    # host user's to see.
    plan_file = private / f"plan-{uuid.uuid4().hex[:12]}.json"
    fd = os.open(plan_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    unshare = [] if doc.get("ids") or doc.get("runtime") else [
        "unshare", "--mount", "--uts", "--ipc", "--pid", "--net", "--fork", "--kill-child", "--propagation",
        "private", "--"]
    command = ["setpriv", "--pdeathsig", "KILL",   # the box dies with buildbox, even by SIGKILL
               *unshare, sys.executable, "-I", str(ENTER), str(plan_file)]
    try:
        if foreground:
            return process.foreground(command, what=what)
        return run(command, what=what, log=log, stream=stream, capture=capture, timeout=timeout,
                   silence=silence, interactive=interactive, log_limit=log_limit, timeout_key=timeout_key,
                   rerun=rerun, show_command=False)
    finally:
        plan_file.unlink(missing_ok=True)


def owner(pid: int | None = None) -> str:
    """pid.starttime of a process (the start time tells a reused pid from the original)."""
    pid = pid or os.getpid()
    with open(f"/proc/{pid}/stat") as stat:
        start = stat.read().rsplit(")", 1)[1].split()[19]
    return f"{pid}.{start}"


def alive(name: str) -> bool:
    """Whether the process an owner() name stands for still runs."""
    if not _is_owner(name):
        return False
    try:
        return owner(int(name.split(".")[0])) == name
    except (OSError, IndexError):
        return False


def reap_dead_boxes(store: Store) -> list[Path]:
    """Unmount and remove the boxes of runs that died (kill -9, power cut); return what was reaped."""
    reaped = []
    boxes = store.root / "boxes"
    for box in sorted(boxes.iterdir()) if boxes.is_dir() else []:
        parts = box.name.split("-")
        made_by = parts[-2] if len(parts) >= 3 else ""
        if not _is_owner(made_by) or alive(made_by) or (box / KEPT).exists():
            continue
        for target in mounts_under(box):
            _unmount(Path(target))
        if mounts_under(box):
            log.warn(f"could not unmount everything under {box}; left in place")
            continue
        remove_tree(box)
        reaped.append(box)
    return reaped


def _is_owner(name: str) -> bool:
    pid, _, start = name.partition(".")
    return pid.isdigit() and start.isdigit()


def _unmount(target: Path) -> None:
    """Unmount (umount2 itself: no process to start, on every way out, Ctrl-C included), waiting
    out a short busy spell; detach it lazily as the last resort."""
    libc = ctypes.CDLL(None, use_errno=True)
    for attempt in range(5):
        if libc.umount2(os.fsencode(target), 0) == 0:
            return
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):   # not a mount point (any more), or gone
            return
        if err != errno.EBUSY:
            break
        time.sleep(0.2 * (attempt + 1))
    log.warn(f"{target} stayed busy; detaching it lazily")
    if libc.umount2(os.fsencode(target), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        log.warn(f"could not unmount {target}: {os.strerror(ctypes.get_errno())}")


@contextlib.contextmanager
def host_name(name: str) -> Iterator[None]:
    """This thread under another host name, in a UTS namespace of its own, back in the host's
    after: what verify's second build runs under."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.unshare(CLONE_NEWUTS) != 0:
            raise BuildFailed("cannot give the build a host name of its own: unshare(CLONE_NEWUTS): "
                              f"{os.strerror(ctypes.get_errno())}", hint="run it as root on the host")
        socket.sethostname(name)
        yield
    finally:
        libc.setns(home, CLONE_NEWUTS)
        os.close(home)
