"""The cache: content keys, entries that appear whole or not at all, and the locks that let many
buildbox processes share one cache."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from filelock import FileLock


COPY_CHUNK = 1 << 20
# The cache's layout, recorded in its marker (the keys' own format is keys.FORMAT).
FORMAT = 3


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# The digests of files this process has hashed, by what their stat says of them (a change of
# content changes ctime): a fetched tree is digested, recorded and listed once each, read once.
_hashed: dict[tuple[int, ...], str] = {}


def stat_sha256(path: Path, st: os.stat_result, *, chunked: bool = False) -> str:
    """file_sha256 (or chunked_sha256) of a regular file whose lstat is st, hashed once per
    process while unchanged."""
    mark = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, chunked)
    if mark not in _hashed:
        if len(_hashed) > 200000:
            _hashed.clear()
        _hashed[mark] = chunked_sha256(path) if chunked else file_sha256(path)
    return _hashed[mark]


CHUNK = 1 << 20
_zero_chunks: dict[int, bytes] = {}


def chunked_sha256(path: Path) -> str:
    """The sha256 of a file's size and of the sha256 of each of its 1 MiB chunks: its content
    alone decides it (a hole reads as zeros, so the same bytes written or sparse are one digest),
    and a chunk that lies in a hole (SEEK_DATA) is not read, so a sparse file costs its data."""
    digest = hashlib.sha256(b"%d:" % os.stat(path).st_size)
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        data = 0   # where the next data starts, as far as known
        for start in range(0, size, CHUNK):
            length = min(CHUNK, size - start)
            if data < start + length:
                try:
                    data = os.lseek(fd, start, os.SEEK_DATA)
                except OSError:   # ENXIO: a hole up to the end
                    data = size
            if data >= start + length:   # all hole: zeros, unread
                if length not in _zero_chunks:
                    _zero_chunks[length] = hashlib.sha256(bytes(length)).digest()
                digest.update(_zero_chunks[length])
            else:
                digest.update(hashlib.sha256(os.pread(fd, length, start)).digest())
    return digest.hexdigest()


def copy_sparse(source: Path, dest: Path, digest: Any = None) -> int:
    """Copy a file to a new dest with its holes kept as holes (SEEK_DATA / SEEK_HOLE), feeding
    every byte, zeros of the holes included, to digest when given; returns the file's size."""
    with open(source, "rb") as src, open(dest, "xb") as out:
        fd = src.fileno()
        size = os.fstat(fd).st_size
        position = 0
        while position < size:
            try:
                data = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:   # ENXIO: nothing but a hole up to the end
                data = size
            if digest is not None:
                for start in range(position, data, COPY_CHUNK):
                    digest.update(bytes(min(COPY_CHUNK, data - start)))
            if data >= size:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            os.lseek(fd, data, os.SEEK_SET)
            out.seek(data)
            left = hole - data
            while left:
                chunk = os.read(fd, min(COPY_CHUNK, left))
                if not chunk:
                    break
                if digest is not None:
                    digest.update(chunk)
                out.write(chunk)
                left -= len(chunk)
            position = hole
        out.truncate(size)
    return size


# The tree digest's encoding (README "Changes"): 2 frames every field with its length, so that
# no name or link target, whatever bytes it holds, can shift one field into the next; 1 joined
# fields with NUL and entries with newline, which names and link targets may hold. Version 1 is
# kept only to check the records of entries made before (fsck, bootstraps' digests upgraded once).
DIGEST_FORMAT = 2
DIGEST_HEADER = b"buildbox tree digest 2\n"


def tree_sha256(root: Path, *, id_base: int = 0, format: int = DIGEST_FORMAT) -> str:
    """The digest of a tree: every path with its type, mode, owner, mtime and content (a symlink's
    target, a device's numbers), in a fixed order. Two trees with one digest are the same tree:
    each field goes in as its length, a colon, its bytes (a netstring), each entry as its field count.

    Owners are hashed as the box sees them: a tree made under a uid mapping whose box root is host
    id id_base (a rootless run, a private build uid range) digests as the same tree made by root.
    In root mode (id_base 0) the raw ids are exactly that: the cache keeps box ids on disk."""
    digest = hashlib.sha256()
    if format == DIGEST_FORMAT:
        digest.update(DIGEST_HEADER)

    def inside(host_id: int) -> int:
        return host_id - id_base if id_base <= host_id < id_base + ID_RANGE else host_id
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for name in sorted((*dirs, *files)):
            path = os.path.join(folder, name)
            st = os.lstat(path)
            fields = [os.path.normpath(os.path.join(rel, name)), f"{st.st_mode:o}", str(inside(st.st_uid)),
                      str(inside(st.st_gid)), str(int(st.st_mtime))]
            if stat.S_ISREG(st.st_mode):   # format 2: chunked, so a sparse file costs its data
                fields.append(stat_sha256(Path(path), st, chunked=format == DIGEST_FORMAT))
            elif stat.S_ISLNK(st.st_mode):
                fields.append(os.readlink(path))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                fields.append(str(st.st_rdev))
            encoded = [field.encode(errors="surrogateescape") for field in fields]
            if format == DIGEST_FORMAT:
                digest.update(b"%d:" % len(encoded) + b"".join(b"%d:%s," % (len(f), f) for f in encoded))
            else:
                digest.update(b"\0".join(encoded) + b"\n")
    return digest.hexdigest()


def default_cache(fallback: Path) -> Path:
    """$BUILDBOX_CACHE, or fallback; set but empty is a mistake, not the current directory."""
    chosen = os.environ.get("BUILDBOX_CACHE")
    if chosen is None:
        return fallback
    if not chosen.strip():
        from buildbox.errors import InputError
        raise InputError("$BUILDBOX_CACHE is set but empty",
                         hint="unset it (the cache is then ./cache) or name the cache directory")
    return Path(chosen)


def signature(root: Path) -> list[list[Any]]:
    """The stat of a tree's top two levels (name, mode, size, mtime): what changes when files are
    added, removed or rewritten near the top, for a few dozen lstat calls."""
    found = []
    for first in sorted(os.listdir(root)):
        for rel in [first, *(f"{first}/{n}" for n in _children(root / first))]:
            st = os.lstat(root / rel)
            found.append([rel, st.st_mode, st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_mtime_ns])
    return found


def _children(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.is_dir() and not path.is_symlink() else []


class Cache(Protocol):
    """What the stages and the graph ask of a cache, by entry kind (KINDS) and key: a second
    backend (a signed remote) is a class with these verbs, not edits to the graph."""

    def entry(self, kind: str, key: str) -> Path: ...
    def has(self, kind: str, key: str) -> bool: ...
    def intact(self, kind: str, key: str) -> bool: ...
    def ensure(self, kind: str, key: str, make: Callable[[Path], None],
               inputs: dict[str, Any] | None = None) -> Path: ...
    def add(self, kind: str, make: Callable[[Path], str]) -> str: ...


class Store:
    """A cache directory: KIND/KEY/ entries, plus the shared .deb cache, logs, boxes and locks."""

    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        self.root = root.absolute()
        # Read-only (`list`): a hit is not counted as a use, a changed entry is a miss but stays.
        self.read_only = read_only

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def has(self, kind: str, key: str) -> bool:
        """Whether the entry is there; a hit counts as a use, for gc's least-recently-used order."""
        entry = self.entry(kind, key)
        if self.read_only:
            return entry.is_dir()
        try:
            os.utime(entry)
        except FileNotFoundError:
            return False
        except OSError:   # a read-only cache: `list` still answers
            return entry.is_dir()
        return True

    def claim(self, *, create: bool) -> None:
        """Make sure root is a buildbox cache before anything in it is made or removed.

        A cache is marked when made (CACHEDIR.TAG, so backup tools skip it, and buildbox's own
        marker with the cache's format). With create, a missing or empty directory becomes a cache,
        and an unmarked one holding nothing but what buildbox puts in a cache (one made before
        caches were marked) is adopted; any other directory is refused: the cleaners delete
        whatever a cache holds, and must never be pointed at someone's project.
        """
        from buildbox.errors import InputError
        if any(c in str(self.root) for c in ":,\n"):   # overlayfs takes its layers as a ':' and ','-separated list
            raise InputError(f"the cache path {self.root} holds ':', ',' or a newline",
                             hint="use a cache path without them")
        if (self.root / MARKER).is_file():
            self.ids()   # a cache made before boxes had ids of their own gets its range now
            return
        hint = "point --cache (or $BUILDBOX_CACHE) at a buildbox cache, or at a new directory"
        if not create:
            raise InputError(f"{self.root} is not a buildbox cache (it has no {MARKER})", hint=hint)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"the cache {self.root} is not a directory", hint=hint)
        found = {p.name for p in self.root.iterdir()} if self.root.exists() else set()
        strays = sorted(found - BUILDBOX_TOP_LEVEL)
        if strays:
            raise InputError(f"{self.root} is not a buildbox cache: it holds {', '.join(strays[:3])}"
                             f"{' and more' if len(strays) > 3 else ''}, which buildbox did not make", hint=hint)
        if found - {".keep"}:
            from buildbox import log
            log.say(f"buildbox: marking {self.root} as a buildbox cache (it was made before caches were marked)")
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self.root / CACHEDIR_TAG, CACHEDIR_TAG_TEXT)
        write_atomically(self.root / MARKER, json.dumps({"buildbox-cache": True, "format": FORMAT}) + "\n")
        self.ids()

    def ids(self) -> Ids:
        """The host ids this cache's boxes run as (box id N is host id base + N), from its marker;
        a marker without them (a cache made before boxes had ids of their own) gets a free range,
        recorded, so that every later run uses the same one."""
        marker = self.root / MARKER
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            data = {}
        ids = data.get("ids")
        if isinstance(ids, dict) and "host" in ids:
            host = ids.get("host")
            # Never taken on the marker's word alone: whoever could write it must not make box
            # root host root, or hand a box a host account's ids.
            if type(host) is not int or ids.get("count") != ID_RANGE or not ID_START <= host < ID_LAST \
                    or host % ID_STEP or id_range_taken(host):
                from buildbox.errors import InputError
                raise InputError(f"{marker}: its box id range {ids!r} is not one buildbox reserves (from {ID_START}, "
                                 f"in steps of {ID_STEP}, clear of every host account and subordinate range)",
                                 hint=f"remove \"ids\" from {marker} and run again: a free range is picked")
            return Ids(host, ID_RANGE)
        if self.read_only or not marker.is_file():
            return Ids(free_id_range(), ID_RANGE)
        chosen = Ids(free_id_range(), ID_RANGE)
        data["ids"] = {"host": chosen.host, "count": chosen.count, "on-disk": OWNERSHIP}
        write_atomically(marker, json.dumps(data) + "\n")
        return chosen

    # -- what an entry holds, recorded when it is made --------------------------------------
    def record_path(self, kind: str, key: str) -> Path:
        return self.root / "records" / kind / f"{key}.json"

    def _record(self, kind: str, key: str, tmp: Path) -> None:
        """Record the digest of the entry's whole content (checked by fsck) and a signature that is
        cheap to check on every use: the stat of its top two levels."""
        record = {"sha256": tree_sha256(tmp), "digest-format": DIGEST_FORMAT, "signature": signature(tmp)}
        self.record_path(kind, key).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.record_path(kind, key), json.dumps(record) + "\n")

    def intact(self, kind: str, key: str) -> bool:
        """Whether the entry is there and still looks as it was made; one that does not is a miss:
        removed, with a warning, so that its stage runs again."""
        if not self.has(kind, key):
            return False
        try:
            record = json.loads(self.record_path(kind, key).read_text())
            recorded = record["signature"]
        except (OSError, ValueError, KeyError):
            # Made before entries were recorded (`buildbox fsck` says so); a fetched tree filed
            # under a digest of an older format is not the tree a pin of this one names.
            return kind not in DIGEST_KEYED
        if kind in DIGEST_KEYED and record.get("digest-format", 1) != DIGEST_FORMAT:
            return False
        if recorded == signature(self.entry(kind, key)):
            return True
        if self.read_only:
            return False
        from buildbox import log
        log.warn(f"the cached {kind} entry {key[:12]} was changed since it was made; removed it, to make it again")
        self.remove_entry(kind, key)
        return False

    def update_meta(self, kind: str, key: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Add to an entry's meta.json and record the entry anew (its signature and digest hold
        its meta), under the entry's lock; returns the meta."""
        with self.lock(f"{kind}-{key}"):
            entry = self.entry(kind, key)
            meta = {**read_meta(entry), **changes}
            write_meta(entry, meta)
            self._record(kind, key, entry)
        return meta

    def remove_entry(self, kind: str, key: str) -> None:
        remove_tree(self.entry(kind, key))
        self.record_path(kind, key).unlink(missing_ok=True)

    def check(self, kind: str, key: str) -> str | None:
        """What is wrong with an entry's content against its record (fsck), or None."""
        try:
            record = json.loads(self.record_path(kind, key).read_text())
            recorded = record["sha256"]
        except (OSError, ValueError, KeyError):
            return "no record of its content (made before buildbox recorded them)"
        now = tree_sha256(self.entry(kind, key), format=record.get("digest-format", 1))
        return None if now == recorded else f"content differs: recorded sha256 {recorded}, now {now}"

    @contextlib.contextmanager
    def in_use(self, *, exclusive: bool = False, create: bool = True) -> Iterator[None]:
        """Held shared by every run, exclusive by gc and clean: they never remove what a run uses.
        A run makes the cache if need be (create); the cleaners work only on one that is marked."""
        self.claim(create=create and not exclusive)
        path = self.root / "locks" / "in-use.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        for kind in PRIVATE:
            (self.root / kind).mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.root / kind, 0o700)
        with open(path, "a") as handle:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                from buildbox import log
                log.say("buildbox: waiting for the builds running on this cache to finish")
                fcntl.flock(handle, mode)
            yield

    def lock(self, name: str) -> FileLock:
        """A lock held across processes; the kernel drops it when its holder dies, even by SIGKILL."""
        from filelock import FileLock   # 30 ms of imports, needed only when something is made
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{name}.lock"))

    def ensure(self, kind: str, key: str, make: Callable[[Path], None], inputs: dict[str, Any] | None = None) -> Path:
        """Return entry KIND/KEY, making it first with make(tmpdir) if it isn't there; the entry
        keeps its key document (inputs) as inputs.json.

        make() fills a fresh directory beside the entry; only when it returns is that directory
        renamed into place, so a reader (or a run after a crash) never sees half an entry. Two
        processes wanting the same entry: one makes it, the other waits and then reuses it.
        """
        final = self.entry(kind, key)
        if self.intact(kind, key):
            return final
        with self.lock(f"{kind}-{key}"):
            if final.is_dir():
                return final
            tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                make(tmp)
                if inputs is not None:
                    write_inputs(tmp, inputs)
                self._record(kind, key, tmp)
                os.rename(tmp, final)
                fsync_dir(final.parent)
            except BaseException:
                remove_tree(tmp)
                raise
        return final

    def add(self, kind: str, make: Callable[[Path], str]) -> str:
        """Make an entry whose key is known only once it is made (a fresh resolution, whose result
        names it): make(tmpdir) fills the directory and returns the key. If an entry of that key is
        there already, it is kept and the new one dropped: same key, same content. Returns the key.
        """
        scratch = f"new{uuid.uuid4().hex}"
        tmp = self.root / kind / f".tmp-{scratch}-0"
        try:
            with self.lock(f"{kind}-{scratch}"):   # held: a concurrent run won't take it for a dead one
                tmp.mkdir(parents=True)
                key = make(tmp)
                with self.lock(f"{kind}-{key}"):
                    if self.entry(kind, key).is_dir():
                        remove_tree(tmp)
                    else:
                        self._record(kind, key, tmp)
                        os.rename(tmp, self.entry(kind, key))
                        fsync_dir(tmp.parent)
        finally:
            remove_tree(tmp)
            (self.root / "locks" / f"{kind}-{scratch}.lock").unlink(missing_ok=True)
        os.utime(self.entry(kind, key))
        return key

    def remove_stale_tmp(self) -> list[Path]:
        """Remove half-made entries of runs that died: their entry's lock is free again."""
        from filelock import Timeout
        removed = []
        for tmp in sorted(self.root.glob("*/.tmp-*")):
            kind, key = tmp.parent.name, tmp.name.split("-")[1]
            lock = self.lock(f"{kind}-{key}")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                left = mounts_under(tmp.absolute())
                if left:   # a helper of a buildbox older than this one: say so, never delete through it
                    from buildbox import log
                    log.warn(f"not removing {tmp}: {left[-1]} is still mounted inside it (umount -R {left[-1]})")
                    continue
                remove_tree(tmp)
                removed.append(tmp)
            finally:
                lock.release()
        return removed

    # -- what each recipe last stood on: for "why it rebuilt" and an offline `list` ------------
    def last_run(self, name: str) -> dict[str, Any]:
        """What the recipe's last run recorded: its stages' keys, and the commit its ref named."""
        try:
            return json.loads((self.root / "recipes" / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}

    def record_run(self, name: str, record: dict[str, Any]) -> None:
        (self.root / "recipes").mkdir(exist_ok=True)
        write_atomically(self.root / "recipes" / f"{name}.json", json.dumps(record, indent=1, sort_keys=True) + "\n")

    def inputs(self, kind: str, key: str) -> dict[str, Any] | None:
        """The key document an entry was made from (None for one made before they were kept)."""
        try:
            return json.loads((self.entry(kind, key) / INPUTS).read_text())
        except (OSError, ValueError):
            return None

    def dir(self, name: str) -> Path:
        """A working directory of the cache (debs, logs, boxes), made on first use."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


ID_RANGE = 65536   # the ids a box has: a mapped range starts at its root's host id
# Where boxes' ids live on the host: far above any account (useradd stops at 60000, subordinate
# ranges start at 100000 and grow by 65536 a user) and below verify's uid (0x7FFFFFFE).
ID_START, ID_STEP, ID_LAST = 0x60000000, 0x10000, 0x7FF00000
# The convention of a cache's trees: files keep the ids the box sees (builder's files are 1000 on
# disk), and every box sees them through idmapped mounts onto its range. A cache made before
# boxes had ids of their own is already so: it is used as it is.
OWNERSHIP = "box ids, idmapped"


@dataclass(frozen=True)
class Ids:
    """A cache's host id range: box id N runs as host id host + N, for N below count."""
    host: int
    count: int

    def map_line(self) -> str:
        """The line of /proc/PID/uid_map (and gid_map) that gives a box this range."""
        return f"0 {self.host} {self.count}\n"


def free_id_range() -> int:
    """The first 65536-id range at ID_START or above that no host account, group or subordinate
    range (/etc/subuid, /etc/subgid) of this host touches."""
    for start in range(ID_START, ID_LAST, ID_STEP):
        if not id_range_taken(start):
            return start
    from buildbox.errors import InputError
    raise InputError("no free range of 65536 host ids for the boxes",
                     hint=f"free ids between {ID_START} and {ID_LAST} (accounts or /etc/subuid ranges use them all)")


def id_range_taken(start: int) -> bool:
    """Whether a host account, group or subordinate range touches start .. start+65535."""
    import grp
    import pwd
    taken: list[tuple[int, int]] = [(p.pw_uid, 1) for p in pwd.getpwall()] + [(g.gr_gid, 1) for g in grp.getgrall()]
    for name in ("/etc/subuid", "/etc/subgid"):
        try:
            lines = Path(name).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                taken.append((int(parts[1]), int(parts[2])))
    return any(first < start + ID_RANGE and start < first + count for first, count in taken)
DIGEST_KEYED = ("fetches",)   # kinds whose entries are filed under their tree's digest
KINDS = ("downloads", "bootstraps", "bases", "layers", "sources", "fetches", "builds")
INPUTS = "inputs.json"   # beside each entry's content: the key document it was made from
MARKER = "buildbox-cache.json"
CACHEDIR_TAG = "CACHEDIR.TAG"   # https://bford.info/cachedir/
CACHEDIR_TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                     "# This file is a cache directory tag created by buildbox.\n"
                     "# For information about cache directory tags, see https://bford.info/cachedir/\n")
# Where box trees live, root's alone: their files belong to the box's users, and the build user's
# uid (1000) is often a real user on the host, who could otherwise edit a cached base's dotfiles
# (or a running build's sources) and so run code in every later build. And the logs: what a
# build prints is its own business (a token it echoes, paths of the host it was given).
PRIVATE = ("bootstraps", "bases", "layers", "sources", "fetches", "builds", "boxes", "failed", "verify", "logs", "tmp")
# All that buildbox puts at a cache's top level (.keep: the checkout's empty ./cache).
BUILDBOX_TOP_LEVEL = {*KINDS, *PRIVATE, "debs", "logs", "locks", "installed", "records", "recipes", "doit.sqlite3", MARKER,
                      CACHEDIR_TAG, ".keep"}


def tree_size(path: Path) -> int:
    """Bytes a tree takes on disk (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                st = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def read_meta(entry: Path) -> dict[str, Any]:
    return json.loads((entry / "meta.json").read_text())


def write_inputs(entry: Path, document: dict[str, Any]) -> None:
    write_atomically(entry / INPUTS, json.dumps(document, indent=1, sort_keys=True) + "\n")


def write_meta(entry: Path, meta: dict[str, Any]) -> None:
    write_atomically(entry / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Write beside path, fsync, rename over it, fsync the directory: after a crash, path is the
    old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, in the order to unmount them (from /proc/self/mountinfo)."""
    prefix = str(path)
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            target = line.split()[4].encode().decode("unicode_escape")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    # Last mounted first: what was mounted on top of (or inside, or over) another goes before it
    # (a box's overlay before the disk its upper layer lives on).
    return found[::-1]


def remove_tree(path: Path) -> None:
    """Remove a tree that may hold read-only dirs and overlay whiteouts (root ignores modes).

    Never across a mount point: a bind of a host directory would lose its files. A tree with
    something still mounted inside is an error, to be unmounted first (boxes are, when reaped).
    """
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        mounted = mounts_under(path.absolute())
        if mounted:
            from buildbox.errors import BuildFailed
            raise BuildFailed(f"not removing {path}: {mounted[-1]} is mounted inside it",
                              hint=f"unmount it (umount -R {mounted[-1]}), then run again")
        shutil.rmtree(path)
