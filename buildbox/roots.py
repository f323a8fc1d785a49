"""Runtime roots: where `buildbox install` puts a build to run, and `buildbox exec` runs it
(README, "Running what you built"). One root per service:

    ROOT/buildbox-root.json   {"buildbox-root": 1, "recipe": NAME, "uid": UID}: buildbox made it
    ROOT/generations/N/       a whole root: the artifacts in /usr/bin, the runtime closure at its
                              box paths, a minimal /etc, /tmp, an empty /dev and /proc; no shell
    ROOT/current              -> generations/N, replaced atomically (a rename over it)
    ROOT/state/PATH           the [install] state directories, the service user's, bound into
                              every generation, kept across them

Every file is copied (never linked to the cache) and re-hashed against the build's manifest on
the way; a generation is made under a temporary name and renamed whole, so `current` only ever
names a finished one. The last KEEP generations stay, and the current one always.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import shlex
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildbox import log
from buildbox.errors import BuildFailed, InputError
from buildbox.inroot import Root, open_beneath
from buildbox.recipe import ROOT_OWN, Recipe, Service
from buildbox.records import MANIFEST
from buildbox.runtime import CA_BUNDLE, RUNTIME
from buildbox.store import COPY_CHUNK, fsync_dir, remove_tree, write_atomically

DEFAULT_ROOTS = Path("/var/lib/buildbox/roots")
MARKER = "buildbox-root.json"
KEEP = 3
BIN = "/usr/bin"
# The service users' uids (= gids): a range past the boxes' (store.ID_START..ID_LAST) and below
# verify's uid, which no host account has (each is checked against the host's accounts when a
# root is made, and kept in its marker, so the state's owner stays the same).
SERVICE_FIRST, SERVICE_COUNT = 0x7FF10000, 0x10000
# The directories of the root that are mount points, or made by buildbox for every generation.
SKELETON = {"/usr": 0o755, BIN: 0o755, "/etc": 0o755, "/tmp": 0o1777, "/dev": 0o755, "/proc": 0o555}
GENERATION_RE = re.compile(r"[1-9][0-9]{0,8}")


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    home: str


def service_uid(name: str) -> int:
    """A uid of the service range for a new root: from the recipe's name, the next one free of
    host accounts and groups and of the other roots in the default place."""
    start = zlib.crc32(name.encode()) % SERVICE_COUNT
    others = set()
    for marker in DEFAULT_ROOTS.glob(f"*/{MARKER}"):
        try:
            others.add(json.loads(marker.read_text()).get("uid"))
        except (OSError, ValueError, AttributeError):
            continue
    for step in range(SERVICE_COUNT):
        uid = SERVICE_FIRST + (start + step) % SERVICE_COUNT
        if uid not in others and not _taken(uid):
            return uid
    raise InputError("no free uid for the service", hint=f"free ids between {SERVICE_FIRST} and "
                     f"{SERVICE_FIRST + SERVICE_COUNT - 1}")


def _taken(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    try:
        grp.getgrgid(uid)
        return True
    except KeyError:
        return False


class RuntimeRoot:
    """One service's root: its generations, `current`, its state."""

    def __init__(self, path: Path, recipe: Recipe) -> None:
        self.path = path
        self.recipe = recipe
        assert recipe.service is not None
        self.service: Service = recipe.service

    # -- which root, and whose ----------------------------------------------------------------
    @classmethod
    def choose(cls, asked: Path | None, recipe: Recipe, cache: Path, *, create: bool) -> RuntimeRoot:
        """The root `--root` names (or the default one), refused when it is /, in the cache, or
        a directory buildbox did not make (exit 2); made when create."""
        if recipe.service is None:
            raise InputError(f"{recipe.name} has no [install]", where=str(recipe.path),
                             hint='add [install] with exec = ["PROGRAM", ...] (README, "Running what you built")')
        path = Path(os.path.abspath(asked if asked is not None else DEFAULT_ROOTS / recipe.name))
        flag = f"--root {log.escaped(str(path))}" if asked is not None else f"the root {log.escaped(str(path))}"
        real = Path(os.path.realpath(path))
        cache_real = Path(os.path.realpath(cache))
        if real == Path("/") or path.is_symlink():
            raise InputError(f"{flag} is {'/' if real == Path('/') else 'a symlink'}",
                             hint="name a directory of its own, such as /var/lib/buildbox/roots/NAME")
        if real == cache_real or cache_real in real.parents or real in cache_real.parents:
            raise InputError(f"{flag} is in the cache ({log.escaped(str(cache))}) or holds it",
                             hint="name a directory outside the cache (the default is /var/lib/buildbox/roots/NAME)")
        root = cls(path, recipe)
        _check_owned(path, flag)
        marker = root.marker()
        if path.exists() and (not path.is_dir() or marker is None and any(path.iterdir())):
            raise InputError(f"{flag} exists and was not made by buildbox",
                             hint="name an empty or new directory, or one `buildbox install` made")
        if marker is not None and marker.get("recipe") != recipe.name:
            raise InputError(f"{flag} is the root of {log.escaped(str(marker.get('recipe')))}, not {recipe.name}",
                             hint="give each recipe a root of its own")
        if marker is None:
            if not create:
                raise InputError(f"{flag} holds no install of {recipe.name}",
                                 hint=f"run `buildbox install {recipe.path}` first")
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
            write_atomically(path / MARKER, json.dumps({"buildbox-root": 1, "recipe": recipe.name,
                                                        "uid": service_uid(recipe.name)}) + "\n")
        return root

    def marker(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / MARKER).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("buildbox-root") != 1 or type(data.get("uid")) is not int \
                or not SERVICE_FIRST <= data["uid"] < SERVICE_FIRST + SERVICE_COUNT:
            return None
        return data

    @property
    def user(self) -> ServiceUser:
        marker = self.marker()
        assert marker is not None
        return ServiceUser(self.service.user, marker["uid"], self.service.state[0] if self.service.state else "/")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One install or rollback of a root at a time."""
        with open(self.path / ".lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.say(f"buildbox: waiting for another install into {self.path}")
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # -- generations ----------------------------------------------------------------------------
    def generations(self) -> list[int]:
        found = self.path / "generations"
        return sorted(int(p.name) for p in found.iterdir() if GENERATION_RE.fullmatch(p.name) and p.is_dir()) \
            if found.is_dir() else []

    def current(self) -> int | None:
        try:
            target = os.readlink(self.path / "current")
        except OSError:
            return None
        name = target.removeprefix("generations/")
        return int(name) if GENERATION_RE.fullmatch(name) and int(name) in self.generations() else None

    def generation(self, number: int) -> Path:
        return self.path / "generations" / str(number)

    def go_live(self, number: int) -> None:
        """Point current at generation number, in one rename."""
        tmp = self.path / f".current-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(f"generations/{number}", tmp)
        os.replace(tmp, self.path / "current")
        fsync_dir(self.path)

    def previous(self) -> int:
        """The generation before the current one (what --rollback goes back to)."""
        now = self.current()
        if now is None:
            raise InputError(f"{log.escaped(str(self.path))} has no current generation to roll back from",
                             hint=f"run `buildbox install {self.recipe.path}` first")
        older = [n for n in self.generations() if n < now]
        if not older:
            raise InputError(f"generation {now} of {log.escaped(str(self.path))} is the oldest one kept: "
                             "there is none before it", hint=f"the last {KEEP} generations are kept")
        return older[-1]

    def prune(self, was: int | None = None) -> list[int]:
        """Remove all but the newest KEEP generations, the current one and `was` (current until
        now: what a running service still runs from); returns those removed."""
        numbers = self.generations()
        keep = set(numbers[-KEEP:]) | {self.current(), was}
        gone = [n for n in numbers if n not in keep]
        for number in gone:
            remove_tree(self.generation(number))
        return gone

    def make_generation(self, entry: Path) -> int:
        """A new generation from a build entry (its artifacts and runtime closure), whole or not
        at all; its number."""
        manifest = json.loads((entry / MANIFEST).read_text())
        closure = manifest["runtime"]
        self._check(manifest, closure)
        numbers = self.generations()
        number = (numbers[-1] if numbers else 0) + 1
        (self.path / "generations").mkdir(exist_ok=True)
        for litter in (self.path / "generations").glob(".tmp-*"):
            remove_tree(litter)   # one left by an install that died (installs of a root take turns)
        tmp = self.path / "generations" / f".tmp-{number}"
        tmp.mkdir(mode=0o755)
        try:
            with Root(tmp) as tree:
                self._fill(tree, entry, manifest, closure)
            os.rename(tmp, self.generation(number))
            fsync_dir(tmp.parent)
        except BaseException:
            remove_tree(tmp)
            raise
        return number

    def _check(self, manifest: dict[str, Any], closure: dict[str, Any]) -> None:
        """What the recipe's [install] asks of the build: exec names an artifact, the closure is
        whole, a CA bundle if asked for (exit 2, at the recipe's line)."""
        service, path = self.service, self.recipe.path
        program = service.exec[0]
        named = program.removeprefix(BIN + "/") if program.startswith("/") else program
        if named not in manifest["artifacts"]:
            raise InputError(f"[install] exec runs {log.escaped(program)}, which is no artifact of {self.recipe.name} "
                             f"(its artifacts: {', '.join(map(log.escaped, sorted(manifest['artifacts'])))})",
                             where=service.at(path, "exec"), hint="name an artifact, as the build leaves it in $OUT")
        for rel, missing in sorted(closure.get("missing", {}).items()):
            raise InputError(f"{log.escaped(rel)} needs {', '.join(map(log.escaped, missing))}, which its build box "
                             "does not have, so its root cannot either", where=self.recipe.at("packages"),
                             hint="add the package that ships it to [packages] install")
        if service.ca_certificates and not closure.get("ca-bundle"):
            raise InputError(f"ca-certificates = true, but the build box of {self.recipe.name} has no CA bundle "
                             f"({CA_BUNDLE})", where=service.at(path, "ca-certificates"),
                             hint='add "ca-certificates" to [packages] install')

    def _fill(self, tree: Root, entry: Path, manifest: dict[str, Any], closure: dict[str, Any]) -> None:
        user = self.user
        for place, mode in SKELETON.items():
            tree.makedirs(place, mode=mode)
            tree.set(place, mode=mode)
        for rel, fact in sorted(manifest["artifacts"].items()):
            _copy(entry / "files" / rel, tree, f"{BIN}/{rel}", fact["sha256"], 0o755)
        reserved = {*ROOT_OWN, *SKELETON, *(f"{BIN}/{rel}" for rel in manifest["artifacts"])}
        for place, fact in sorted(closure["files"].items()):
            if place == CA_BUNDLE and not self.service.ca_certificates:
                continue
            if not _plain(place) or (place in reserved and place != CA_BUNDLE) or _under(place, ("/proc", "/dev", "/tmp")):
                raise BuildFailed(f"the runtime closure of {self.recipe.name} names {log.escaped(place)}, "
                                  "which cannot be in a root", hint="rebuild it: `buildbox run --refresh`")
            tree.makedirs(os.path.dirname(place))
            _copy(entry / RUNTIME / place.lstrip("/"), tree, place, fact["sha256"], fact["mode"])
        for place, target in sorted(closure["links"].items(), key=lambda item: (item[0].count("/"), item[0])):
            if not _plain(place) or place in reserved or tree.lstat(place) is not None:
                continue   # a link on a path the root has already (a directory of it)
            tree.makedirs(os.path.dirname(place))
            tree.symlink(target, place)
        etc = {
            "/etc/passwd": f"root:x:0:0:root:/:/nonexistent\n{user.name}:x:{user.uid}:{user.uid}:"
                           f"{self.recipe.name}:{user.home}:/nonexistent\n",
            "/etc/group": f"root:x:0:\n{user.name}:x:{user.uid}:\n",
            "/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
            "/etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
            "/etc/resolv.conf": _host_resolv_conf(),
        }
        for place, text in etc.items():
            tree.write(place, text, mode=0o644)
        for place, source in self.service.files:
            tree.makedirs(os.path.dirname(place))
            _copy_file(self.service.folder, source, tree, place)
        for place in self.service.state:
            tree.makedirs(place)
            self.state_dir(place)

    def state_dir(self, place: str) -> Path:
        """ROOT/state/PATH, made the service user's if new; kept as it is otherwise."""
        state = self.path / "state"
        state.mkdir(mode=0o755, exist_ok=True)
        uid = self.user.uid
        with Root(state) as tree:
            if tree.lstat(place) is None:
                tree.makedirs(os.path.dirname(place), mode=0o755)
                tree.makedirs(place, mode=0o750, owner=(uid, uid))
        found = state / place.lstrip("/")
        if found.is_symlink() or not found.is_dir():
            raise BuildFailed(f"the state directory {log.escaped(str(found))} is not a directory")
        return found

    def state_binds(self) -> list[tuple[Path, str]]:
        return [(self.state_dir(place), place) for place in self.service.state]

    # -- running what is in it --------------------------------------------------------------------
    def run(self, number: int, argv: list[str], *, foreground: bool, timeout: float | None = None) -> str | int:
        """argv in generation number as the service runs ([install] user and capabilities,
        [limits] memory, processes and files): in the foreground, its exit status; else its
        output, a failure raised."""
        from buildbox.box import run_in_root
        user = self.user
        env = {"PATH": BIN, "HOME": user.home, "USER": user.name, "LOGNAME": user.name, "LANG": "C.UTF-8"}
        with service_limits(self.recipe) as (cgroups, rlimits):
            return run_in_root(Path(os.path.realpath(self.generation(number))), argv, user=(user.uid, user.name),
                               capabilities=self.service.capabilities, state=self.state_binds(), env=env,
                               what=f"{shlex.join(argv)} in {self.recipe.name}'s generation {number}",
                               private=self.path, limits=rlimits, cgroups=cgroups, foreground=foreground,
                               timeout=timeout)


@contextlib.contextmanager
def service_limits(recipe: Recipe) -> Iterator[tuple[list[str], dict[str, int]]]:
    """[limits] memory and processes for the service and all it starts (a cgroup; without one,
    per process), open files per process."""
    from buildbox.cgroup import Cgroup
    limits = recipe.limits
    if Cgroup.where() is None:
        yield [], {"files": limits.files, "processes": limits.processes, "address-space": limits.memory}
        return
    with Cgroup(f"exec-{recipe.name}", memory=limits.memory, pids=limits.processes) as group:
        yield group.procs, {"files": limits.files}


def _check_owned(path: Path, flag: str) -> None:
    """The root, and every folder above it, is host root's and writable by no one else (a sticky
    folder such as /tmp aside, above it): another user could otherwise swap a part of it under
    buildbox, which writes there as root."""
    for depth, place in enumerate([path, *path.parents]):
        try:
            st = os.lstat(place)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) and depth:
            st = os.stat(place)   # a link above the root (/var/run -> /run) is followed by every path
        open_to_others = st.st_mode & 0o022 and not (depth and st.st_mode & stat.S_ISVTX)
        if st.st_uid != 0 or open_to_others:
            raise InputError(f"{flag}: {log.escaped(str(place))} belongs to uid {st.st_uid}"
                             f"{' and others may write to it' if open_to_others else ''}, not to root alone",
                             hint="name a root in a folder only root can change (the default: /var/lib/buildbox/roots)")


def _plain(place: str) -> bool:
    return place.startswith("/") and place != "/" and os.path.normpath(place) == place and \
        not place.startswith("//") and not any(ord(c) < 32 for c in place)


def _under(place: str, tops: tuple[str, ...]) -> bool:
    return any(place == top or place.startswith(top + "/") for top in tops)


def _copy(source: Path, tree: Root, place: str, sha256: str, mode: int) -> None:
    """source copied to place in the root, hashed on the way: a cached file whose bytes changed is
    never put in a root."""
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        fd = _create(tree, place)
        with os.fdopen(fd, "wb") as out:
            while chunk := f.read(COPY_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            os.fchmod(fd, mode & 0o755)
    if digest.hexdigest() != sha256:
        raise BuildFailed(f"the cached {log.escaped(str(source))} is not what its build made (sha256 "
                          f"{digest.hexdigest()[:12]}, not {sha256[:12]})",
                          hint="`buildbox fsck` finds damaged entries; rebuild with `buildbox gc` then install")


def _copy_file(folder: Path, source: str, tree: Root, place: str) -> None:
    """A file of the recipe's folder ([install] files), readable by the service: opened below the
    folder with no link on the way (it may have changed since the recipe was read), never a FIFO,
    never a hard link to a file elsewhere."""
    shown = log.escaped(str(folder / source))
    try:
        fd = open_beneath(folder, source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        raise InputError(f"[install] files: cannot read {shown} below the recipe's folder: {err.strerror}",
                         hint="name a file in the recipe's folder, not through a link") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise InputError(f"[install] files: {shown} is not a regular file of its own "
                             f"({'hard-linked' if stat.S_ISREG(st.st_mode) else 'not a file'})",
                             hint="copy the file into the recipe's folder")
        out = _create(tree, place)
        with os.fdopen(out, "wb") as dest:
            while chunk := f.read(COPY_CHUNK):
                dest.write(chunk)
            os.fchmod(out, 0o644)


def _create(tree: Root, place: str) -> int:
    dirfd, name = tree.parent(place)
    try:
        return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    finally:
        os.close(dirfd)


def _host_resolv_conf() -> str:
    """The host's resolver settings now (a copy: a later change reaches the next generation)."""
    try:
        with open("/etc/resolv.conf", "rb") as f:
            return f.read(64 << 10).decode(errors="replace")
    except OSError:
        return ""

