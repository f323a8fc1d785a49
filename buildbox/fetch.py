"""The fetch phase: a recipe's [fetch] script run as the build user, with outbound network (pasta,
in a network namespace of its own: of the host, only the loopback ports of [fetch] host-ports), in
a clone of its box (packages installed, source read-only). Only $FETCH is kept: taken out of the
box without following a link, normalised (owner 0:0 as the box sees it, mtimes clamped to the
epoch, set-id and sticky bits dropped, hard links broken), digested with the tree digest of a
bootstrap, and filed in the cache by that digest. The build then sees it read-only, offline.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path

from buildbox import log
from buildbox.box import Box
from buildbox.build import fetch_env, name_the_limit, whole_box_limits
from buildbox.constants import BUILD_DIR, BUILDER, EPOCH, FETCH, SRC
from buildbox.context import Context
from buildbox.errors import BuildFailed
from buildbox.inroot import set_attributes
from buildbox.process import run
from buildbox.recipe import Recipe
from buildbox.store import Store, stat_sha256, tree_sha256, write_meta

SCRIPT = "/buildbox/fetch.sh"
LISTING = "listing.json"   # beside a fetched tree: each path's type, mode and digest, for diffs
SHOWN = 10   # differing paths a mismatch names
MAX_DEPTH = 256   # directories in directories a fetched tree may nest (a descriptor and a frame each)
# A directory or file of the tree, opened to be normalised through its descriptor: never through a link.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def make(ctx: Context, recipe: Recipe, layers: list[Path], entry: Path, *, pinned: str | None = None,
         by: str = "", why: str = "") -> str:
    """The fetch stage: the recipe's fetch run over layers, its tree left at entry/tree with its
    listing beside; a pinned fetch must give the pinned digest (nothing is kept if not). Returns
    the tree's digest."""
    logfile = ctx.logfile(recipe.name, "fetch", why)
    with log.step(f"Fetching what {recipe.name}'s build needs ([fetch], with the network)"):
        got = run_fetch(ctx.store, recipe, layers, entry / "tree", logfile, stream=ctx.stream)
    if pinned and got != pinned:
        raise mismatch(recipe, got, pinned, by, entry / "tree", last_listing(ctx.store, recipe))
    save_listing(entry / LISTING, entry / "tree")
    write_meta(entry, {"sha256": got})
    return got


def unpack(recipe: Recipe, tarball: Path, entry: Path, pinned: str) -> str:
    """A fetched tree from another machine (the remote cache's fetch/<digest>.tar) at entry/tree,
    unpacked as safely as a source tarball, normalised as a fetch's own, and digested again: only
    the pinned digest is kept. Returns the digest."""
    from buildbox.sets import extract
    (entry / "tree").mkdir()
    extract(tarball, entry / "tree", what=f"the fetched tree of {recipe.name} from the remote cache",
            limits=recipe.unpack, owner=(0, 0))
    normalise(entry / "tree")
    got = tree_sha256(entry / "tree")
    if got != pinned:
        raise BuildFailed(f"the fetched tree of {recipe.name} from the remote cache has sha256 {got}, "
                          f"not the pinned {pinned}")
    save_listing(entry / LISTING, entry / "tree")
    write_meta(entry, {"sha256": got})
    return got


def pack(tree: Path, dest: Path) -> None:
    """A fetched tree as a tarball (names sorted, owners 0:0) for the remote cache."""
    import tarfile

    def owned(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.uid = member.gid = 0
        member.uname = member.gname = ""
        return member
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tree, arcname=".", filter=owned)


def last_listing(store: Store, recipe: Recipe) -> Path:
    """The listing of the tree the recipe fetched last (beside, not in, the recipes' run records)."""
    return store.dir("recipes") / f"{recipe.name}.fetch-listing"


def keep_listing(store: Store, recipe: Recipe, digest: str) -> None:
    shutil.copyfile(store.entry("fetches", digest) / LISTING, last_listing(store, recipe))


def run_fetch(store: Store, recipe: Recipe, layers: list[Path], dest: Path, logfile: Path,
              *, stream: bool) -> str:
    """Run the recipe's fetch in a fresh box over layers; leave its $FETCH at dest, normalised;
    return the tree's digest."""
    assert recipe.fetch
    env = {**BUILDER.login_env(), "SOURCE_DATE_EPOCH": str(EPOCH), **dict(recipe.fetch.env), **fetch_env()}
    with Box(store, layers, label=f"fetch-{recipe.name}", log=logfile, disk=recipe.limits.disk) as box:
        box.bind(Path("/etc/resolv.conf").resolve(), "/etc/resolv.conf")
        box.bind(box.path(SRC), SRC)   # the source, read-only: the fetch reads it, never changes it
        # /build root's and $FETCH the build user's: the fetch writes inside $FETCH but cannot
        # replace it (by a link to a host directory, which buildbox would then take as the tree).
        box.run(["install", "-d", "-o", "0", "-g", "0", "-m", "0755", BUILD_DIR], what=f"making {BUILD_DIR} root's",
                log=logfile)
        box.run(["install", "-d", "-o", str(BUILDER.uid), "-g", str(BUILDER.gid), "-m", "0755", FETCH],
                what="making $FETCH", log=logfile)
        box.write(SCRIPT, recipe.fetch.script)
        limits = recipe.limits
        with whole_box_limits(recipe, logfile) as (group, rlimits):
            try:
                box.run(["sh", "-e", "-c", f". {SCRIPT}", recipe.name], what=f"the fetch of {recipe.name}",
                        user=BUILDER.spec, env=env, cwd=SRC, log=logfile, stream=stream, outbound=True,
                        host_ports=recipe.fetch.host_ports, limits=rlimits, timeout=limits.timeout,
                        silence=limits.silence, log_limit=limits.log, cgroups=group.procs if group else [])
            except BuildFailed as err:
                raise name_the_limit(err, recipe, group.hit() if group else None) from None
        # Everything else the fetch wrote (its home, /tmp, the source's copy-ups) stays in the box.
        take_out(recipe, box.upper, dest)
    normalise(dest)
    return tree_sha256(dest)


def take_out(recipe: Recipe, upper: Path, dest: Path) -> None:
    """Move (or copy) $FETCH out of the box's writable layer to dest. It must be a real directory
    there, under real directories: a link would lead buildbox into the host's own files."""
    kept = upper
    for part in FETCH.strip("/").split("/"):
        kept = kept / part
        try:
            found = os.lstat(kept)
        except FileNotFoundError:
            found = None
        if found is None or not stat.S_ISDIR(found.st_mode):
            place = f"/{kept.relative_to(upper)}"
            left = f"no {place}" if found is None else f"a {_kind(found.st_mode)} at {place}, not a directory"
            raise BuildFailed(f"the fetch of {recipe.name} left {left}", where=recipe.at("fetch"),
                              hint="download into $FETCH; leave $FETCH itself in place")
    # The box has ended (its PID namespace with it): nothing of the fetch runs to swap it now.
    try:
        os.rename(kept, dest)
    except OSError:   # the writable layer on its own disk image: another filesystem
        run(["cp", "-a", "--", kept, dest], what="copying $FETCH out of the box", contained=True)


def normalise(root: Path) -> None:
    """Owner 0:0 (as the box sees it), mtimes clamped to the epoch, setuid, setgid and sticky bits
    dropped from files and directories, other permission bits kept (Go's module cache is read-only
    by design), a hard-linked file made a copy of its own; nothing but files, directories and
    symlinks. Done through descriptors, never through a link: only the tree itself is touched."""
    fd = os.open(root, DIR_FLAGS)
    try:
        _normalise_dir(fd, os.fstat(fd), "$FETCH", 0)
    finally:
        os.close(fd)


def _normalise_dir(fd: int, st: os.stat_result, rel: str, depth: int) -> None:
    """Every entry of the directory open at fd, then the directory itself (its entries change its mtime)."""
    if depth > MAX_DEPTH:
        raise BuildFailed(f"{log.escaped(rel)} nests deeper than {MAX_DEPTH} levels",
                          hint="leave a shallower tree in $FETCH")
    for name in os.listdir(fd):
        here = os.stat(name, dir_fd=fd, follow_symlinks=False)
        path = f"{rel}/{name}"
        if stat.S_ISLNK(here.st_mode):   # the link itself: its target is never looked at
            mtime = _clamped(here)
            os.chown(name, 0, 0, dir_fd=fd, follow_symlinks=False)
            os.utime(name, (mtime, mtime), dir_fd=fd, follow_symlinks=False)
        elif stat.S_ISDIR(here.st_mode):
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            try:
                _normalise_dir(child, here, path, depth + 1)
            finally:
                os.close(child)
        elif stat.S_ISREG(here.st_mode):
            # A hard link's other names may be outside the tree (the box's home): a copy of its own.
            child = _own_copy(fd, name) if here.st_nlink > 1 else os.open(name, FILE_FLAGS, dir_fd=fd)
            try:
                _settle(child, here)
            finally:
                os.close(child)
        else:
            raise BuildFailed(f"the fetch left {log.escaped(path)}, a {_kind(here.st_mode)}, in $FETCH",
                              hint="leave only files, directories and links in $FETCH")
    _settle(fd, st)


def _settle(fd: int, st: os.stat_result) -> None:
    # chown does not clear a directory's setgid bit, nor any sticky bit: the mode drops them all.
    set_attributes(fd, stat.S_IMODE(st.st_mode) & 0o777, (0, 0), _clamped(st))


def _clamped(st: os.stat_result) -> int:
    return min(int(st.st_mtime), EPOCH)


def _own_copy(fd: int, name: str) -> int:
    """name's content as a new file in its place (its other hard links keep the old one); returns
    it open for writing its attributes."""
    source = os.open(name, FILE_FLAGS, dir_fd=fd)
    spare = f".buildbox-copy-{uuid.uuid4().hex[:12]}"
    copy = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
    try:
        while os.sendfile(copy, source, None, 1 << 30):
            pass
        os.rename(spare, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        os.close(copy)
        os.unlink(spare, dir_fd=fd)
        raise
    finally:
        os.close(source)
    return copy


def _kind(mode: int) -> str:
    return {stat.S_IFLNK: "symlink", stat.S_IFREG: "file", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
            stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}.get(stat.S_IFMT(mode), "special file")


def listing(root: Path) -> dict[str, str]:
    """Each path of a fetched tree: its type, mode and content digest (or link target)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(folder) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = f"link {os.readlink(path)}"
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = f"dir {stat.S_IMODE(st.st_mode):o}"
            else:
                found[rel] = f"file {stat.S_IMODE(st.st_mode):o} {stat_sha256(path, st)}"
    return found


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The first paths that differ between two listings: `added P`, `removed P`, `changed P`."""
    lines = []
    for rel in sorted(set(before) | set(after)):
        if before.get(rel) != after.get(rel):
            change = "added" if rel not in before else "removed" if rel not in after else "changed"
            lines.append(f"{change} {log.escaped(rel)}")   # a name with a newline: still one line
    return lines


def save_listing(place: Path, tree: Path) -> None:
    place.write_text(json.dumps(listing(tree), sort_keys=True) + "\n")


def read_listing(place: Path) -> dict[str, str] | None:
    try:
        return json.loads(place.read_text())
    except (OSError, ValueError):
        return None


def mismatch(recipe: Recipe, got: str, pinned: str, by: str, tree: Path, last: Path) -> BuildFailed:
    """A pinned fetch that gave another tree: both digests, and what differs from the tree this
    recipe fetched last (its listing kept at `last`), when there is one."""
    message = f"fetch {recipe.name}: got sha256 {got}, {by} {pinned}"
    before = read_listing(last)
    if before is not None:
        lines = differences(before, listing(tree))
        if lines:
            more = f" and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
            message += f"; against the tree fetched last: {', '.join(lines[:SHOWN])}{more}"
    where = recipe.lock.at("fetch") if by == "the lock pins" and recipe.lock else recipe.at("fetch")
    log.note(message)
    return BuildFailed(message, where=where,
                       hint="upstream served other bytes for the same request: find out why before you "
                       f"re-pin with `buildbox lock {recipe.path}`")
