"""Sets: tarballs fetched and checked against their sha256, Debian bootstraps made by mmdebstrap,
and the one safe way to unpack any tarball into a root."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import tarfile
import time
import zlib
from pathlib import Path
from urllib.parse import urlparse

from buildbox import log
from buildbox.box import run_helper
from buildbox.constants import EPOCH   # fixed: the same bootstrap inputs give the same tarball
from buildbox.errors import BuildFailed, InputError
from buildbox.inroot import Root, set_attributes
from buildbox.recipe import BootstrapSet, UnpackLimits
from buildbox.space import free_bytes, require_room
from buildbox.space import reserve as reserve_of
from buildbox.context import Context
from buildbox.store import DIGEST_FORMAT, Store, file_sha256, tree_sha256, write_meta

CHUNK = 1 << 16
DOWNLOAD_ATTEMPTS = 6


def fetch_verified(url: str, sha256: str, dest: Path, partial: Path | None = None) -> None:
    """Put the file at url (http(s), file:// or a local path) at dest, only if its sha256 matches.

    An HTTP download goes to `partial` first, and a later call resumes it where the server allows.
    """
    part = partial or dest.with_name(dest.name + ".part")
    try:
        if urlparse(url).scheme in ("http", "https"):
            _download(url, part)
        else:
            _copy_local(Path(url.removeprefix("file://")), part)
        got = file_sha256(part)
        if got != sha256:
            raise BuildFailed(f"sha256 mismatch for {url}: expected {sha256}, got {got}",
                              hint="check the URL, then put the right digest in the recipe or base")
        os.replace(part, dest)
    except BuildFailed:
        part.unlink(missing_ok=True)   # what did not verify is never kept, not even to resume
        raise


def _copy_local(path: Path, part: Path) -> None:
    try:
        shutil.copyfile(path, part)
    except OSError as err:
        if err.errno == errno.ENOSPC:   # the copy's side: a full disk, not a bad path
            raise OSError(err.errno, err.strerror, str(part)) from None
        raise InputError(f"cannot read {path}: {err.strerror}", hint="fix the path") from None


def _download(url: str, part: Path) -> None:
    """Download url into part: retried with backoff, resumed from what part already holds."""
    import requests  # only a cold run downloads: keep the import off the cached path
    from requests.adapters import HTTPAdapter
    from urllib3.util import Retry

    session = requests.Session()
    # 429 and 5xx answers are retried by urllib3; a connection cut mid-body is retried below.
    retry = Retry(total=5, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=("GET",), raise_on_status=False)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    show = sys.stderr.isatty() and not log.quiet
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        have = part.stat().st_size if part.exists() else 0
        # identity: requests would otherwise undo a gzip transfer encoding and change what we hash.
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with session.get(url, stream=True, timeout=(10, 60), headers=headers) as response:
                if response.status_code == 416:        # asked past the end: we have it all
                    return
                if 400 <= response.status_code < 500:
                    raise InputError(f"{response.status_code} {response.reason}: {url}", hint="check the URL")
                if response.status_code >= 400:   # urllib3 has retried these already, with backoff
                    raise BuildFailed(f"could not download {url}: HTTP {response.status_code} {response.reason}"
                                      f" after {retry.total} retries",
                                      hint="check the URL and the server, then run again (it resumes)")
                resumed = have and response.status_code == 206
                total = int(response.headers.get("Content-Length") or 0) + (have if resumed else 0)
                done = have if resumed else 0
                with open(part, "ab" if resumed else "wb") as out:
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        if show and total:
                            print(f"\r    {url}: {done * 100 // total}% of {total >> 20} MiB",
                                  end="", file=sys.stderr, flush=True)
                if show and total:
                    print(file=sys.stderr)
                if total and done < total:
                    raise requests.ConnectionError(f"the body ended after {done} of {total} bytes")
                return
        except requests.RequestException as err:
            if attempt == DOWNLOAD_ATTEMPTS:
                raise BuildFailed(f"could not download {url} after {attempt} attempts: {err}",
                                  hint="check the URL and the network, then run again (it resumes)") from None
            time.sleep(min(0.5 * 2 ** attempt, 8))


BOOTSTRAP_AT = "/tmp/bootstrap"   # where mmdebstrap's helper sees the tree it makes
MMDEBSTRAP_DEV_DIRS = ("pts", "shm")
MMDEBSTRAP_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                        "stderr": "/proc/self/fd/2"}


def ensure_download(store: Store, url: str, sha256: str) -> Path:
    """A tarball set's (or a source's) stage: a verified download in the cache, kept by its
    sha256 and shared by sets and sources."""
    def fetch(tmp: Path) -> None:
        fetch_verified(url, sha256, tmp / "file", partial=tmp.parent / f".part-{sha256}")
    return store.ensure("downloads", sha256, fetch) / "file"


def make(ctx: Context, spec: BootstrapSet, entry: Path, *, pinned: str | None = None, where: str = "",
         why: str = "") -> str:
    """A bootstrap set's stage: mmdebstrap into entry/root, which must come out with the digest
    a lock pins (if one does); its meta records what it is. Returns the tree's digest."""
    from buildbox.keys import set_key
    with log.step(f"Bootstrapping Debian {spec.suite} ({spec.variant}) with mmdebstrap"):
        try:
            make_bootstrap(ctx.store, spec, entry / "root", ctx.logfile("bootstrap", set_key(spec)[:12], why))
        except BuildFailed as err:
            from buildbox.packages import explain_apt_failure
            raise explain_apt_failure(err, spec.where) from None
    got = tree_sha256(entry / "root")
    if pinned and got != pinned:
        raise InputError(f"mmdebstrap now makes {spec.suite} with sha256 {got[:12]}…, not the locked "
                         f"{pinned[:12]}…: {spec.mirror} has changed since the lock was written", where=where,
                         hint="`buildbox run --refresh RECIPE` locks what the archive has now; to rebuild "
                         "the locked bits, use a cache that holds them or a snapshot.debian.org mirror")
    write_meta(entry, {"sha256": got, "digest-format": DIGEST_FORMAT, "suite": spec.suite, "mirror": spec.mirror,
                       "variant": spec.variant, "packages": list(spec.packages)})
    return got


def make_bootstrap(store: Store, spec: BootstrapSet, dest: Path, logfile: Path) -> None:
    """Bootstrap Debian with mmdebstrap into the directory dest, a read-only layer from then on.

    A directory, not a tarball: a base is an overlay on its bootstrap, so nothing is unpacked.
    mmdebstrap is reproducible with SOURCE_DATE_EPOCH fixed, but only its tarballs clamp mtimes;
    here they are clamped the same way, so that the tree, and its digest, depend on nothing else.
    """
    if not shutil.which("mmdebstrap"):
        raise InputError("mmdebstrap is not installed", hint="apt-get install mmdebstrap")
    dest.mkdir()
    argv = ["mmdebstrap", "--mode=root", f"--variant={spec.variant}", "--format=directory"]
    if spec.packages:
        argv.append(f"--include={','.join(spec.packages)}")
    deb = f"deb {spec.mirror} {spec.suite} main"
    argv += ["--", spec.suite, BOOTSTRAP_AT, deb]   # Getopt::Long: `--` ends the options
    # As box root, not host root: the archive's maintainer scripts run in the cache's ids, on a
    # host view where only dest is writable (box.run_helper).
    run_helper(store, argv, tree=dest, at=BOOTSTRAP_AT, what=f"mmdebstrap of {spec.suite} from {spec.mirror}",
               env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SOURCE_DATE_EPOCH": str(EPOCH), "LANG": "C.UTF-8",
                    "HOME": "/root", "TMPDIR": "/tmp"}, log=logfile)
    # deb-src too: recipes install the Build-Depends of, and fetch, Debian source packages. Written
    # here, as mmdebstrap would have written it, rather than given to it: it would download the
    # Sources index only to throw it away (every box that installs runs apt-get update first).
    with Root(dest) as tree:
        tree.write("/etc/apt/sources.list", f"{deb}\n\ndeb-src {spec.mirror} {spec.suite} main\n")
        # Where it cannot mknod (a user namespace), mmdebstrap leaves /dev empty; where it can,
        # it adds these beside the nodes: the same tree either way.
        for name in MMDEBSTRAP_DEV_DIRS:
            tree.makedirs(f"/dev/{name}", mode=0o755, owner=(0, 0))
        for name, target in MMDEBSTRAP_DEV_LINKS.items():
            if tree.lstat(f"/dev/{name}") is None:
                tree.symlink(target, f"/dev/{name}")
    # Written into a directory, mmdebstrap leaves the device nodes its chroot used (console,
    # ptmx, ...); a set holds none: buildbox makes the few a box gets itself.
    for node in sorted((dest / "dev").iterdir()) if (dest / "dev").is_dir() else []:
        if stat.S_ISCHR(node.lstat().st_mode) or stat.S_ISBLK(node.lstat().st_mode):
            node.unlink()
    # apt hands its partial/ folders to its _apt user only when _apt can reach them on the host:
    # not under a cache inside /root or a private tmp. Their owner must not depend on the path.
    for partial in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
        if (dest / partial).is_dir() and not (dest / partial).is_symlink():
            os.chown(dest / partial, 0, 0)
    for folder, dirs, files in os.walk(dest):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            if os.lstat(path).st_mtime > EPOCH:
                os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(dest, (EPOCH, EPOCH))


def extract(tar_path: Path, root: Path, *, what: str, limits: UnpackLimits,
            owner: tuple[int, int] | None = None, root_filesystem: bool = False) -> None:
    """Unpack a tarball into root; no member, link, owner or mode change can touch anything outside it.

    The rules of tarfile's data filter, without depending on a Python that has it: no absolute or
    '..' names, no link that points out of the root (absolute, or up past it), no hard link to a
    link, no device nodes or fifos. A root_filesystem (a set) keeps its absolute links: every
    Debian tree has them (/usr/bin/awk -> /etc/alternatives/awk), and they name places inside
    the root, as the box reads them. And more than rules: every member is created through a
    directory opened inside the root (inroot), with its last component never followed, so a link
    the tarball made earlier cannot carry a later write, chown or chmod anywhere, whatever it
    points to. Modes are kept as written (setuid bits, the sticky /tmp): a root filesystem needs them.
    Nothing is unpacked unless root's filesystem has room for all that limits.unpacked allows.
    """
    # What a tarball unpacks to is known only once it is unpacked, and a gzip bomb within the
    # limit must not fill the disk for every other process on it: it may take the smaller of its
    # limit and the filesystem's free space less a reserve.
    reserve = reserve_of(root)
    budget = min(limits.unpacked, free_bytes(root) - reserve)
    try:
        tar = tarfile.open(tar_path)
    except (tarfile.TarError, OSError) as err:
        raise InputError(f"{what}: not a readable tarball: {err}", hint="check the URL and the sha256") from None
    directories: list[tuple[str, tarfile.TarInfo]] = []
    members = unpacked = 0
    with tar, Root(root) as tree:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
                raise InputError(f"{what}: the tarball is damaged: {err}", hint="fetch it again") from None
            if member is None:
                break
            tar.members.clear()   # tarfile keeps every header it read: not two million of them
            members += 1
            if members > limits.members:
                raise InputError(f"{what}: more than {limits.members} members",
                                 hint="raise [limits] members in the recipe or base if the tarball is right")
            if member.isreg():
                unpacked += member.size
                if unpacked > budget < limits.unpacked:
                    require_room(root, unpacked + reserve, f"{what}: unpacking it",
                                 "lower [limits] unpacked in the recipe (for its source) or the base (for its sets)")
                if unpacked > limits.unpacked:
                    raise InputError(f"{what}: unpacks to more than {limits.unpacked} bytes",
                                     hint="raise [limits] unpacked in the recipe or base if the tarball is right")
            name = _checked_name(member, what)
            try:
                if name is None:   # the root itself: its owner and mode are buildbox's
                    continue
                if member.isdir():
                    tree.makedirs(name, mode=0o755, owner=owner)
                    directories.append((name, member))
                    continue
                _check_link(tree, member, name, what, root_filesystem)
                parent = name.rpartition("/")[0]
                if parent:
                    tree.makedirs(parent, mode=0o755, owner=owner)
                ids = owner or (member.uid, member.gid)
                if member.issym():
                    tree.symlink(member.linkname, name)
                    tree.lchown(name, *ids)
                elif member.islnk():
                    _hard_link(tree, _normal(member.linkname), name)
                else:
                    _write_member(tree, tar, member, name, ids)
            except OSError as err:
                if err.errno == errno.ENOSPC:   # a full filesystem (bytes or inodes), not a bad member
                    raise OSError(err.errno, err.strerror, os.path.join(root, name)) from None
                raise InputError(f"{what}: cannot unpack member '{member.name}': {err.strerror}",
                                 hint="rebuild the tarball without it") from None
        # Directories last and deepest first: a read-only one must not stop what goes inside it.
        for name, member in reversed(directories):
            found = tree.lstat(name)
            if found and stat.S_ISDIR(found.st_mode):   # not a link a later member put in its place
                tree.set(name, mode=member.mode & 0o7777, owner=owner or (member.uid, member.gid),
                         mtime=member.mtime)


def _normal(name: str) -> str:
    """A member's name without './' and trailing '/' parts."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _checked_name(member: tarfile.TarInfo, what: str) -> str | None:
    """The member's path inside the root (None for the root itself), or an error naming it."""
    name = _normal(member.name)
    if member.name.startswith("/") or ".." in name.split("/"):
        raise InputError(f"{what}: member '{member.name}' has an absolute or '..' path",
                         hint="rebuild the tarball with paths relative to its root")
    if member.isdev() or member.isfifo():
        raise InputError(f"{what}: member '{member.name}' is a device node or fifo",
                         hint="leave /dev out of the tarball; buildbox makes the nodes a box needs")
    if not name and not member.isdir():
        raise InputError(f"{what}: member '{member.name}' would replace the root itself",
                         hint="rebuild the tarball with paths relative to its root")
    return name or None


def _check_link(tree: Root, member: tarfile.TarInfo, name: str, what: str, root_filesystem: bool) -> None:
    if member.issym() and tree.escapes(name, member.linkname, absolute_ok=root_filesystem):
        raise InputError(f"{what}: symlink '{member.name}' points out of the root ({member.linkname})",
                         hint="make the link relative and inside the tarball")
    if member.islnk():
        target = _normal(member.linkname)
        if member.linkname.startswith("/") or not target or ".." in target.split("/"):
            raise InputError(f"{what}: hard link '{member.name}' points out of the root ({member.linkname})",
                             hint="make the link point inside the tarball")
        found = tree.lstat(target)
        if found is None or not stat.S_ISREG(found.st_mode):
            raise InputError(f"{what}: hard link '{member.name}' points to "
                             f"{'nothing' if found is None else 'a link or a non-file'} ({member.linkname})",
                             hint="a hard link must name a regular file earlier in the tarball")


def _hard_link(tree: Root, target: str, name: str) -> None:
    src_dir, src_name = tree.parent(target)
    try:
        tree.remove(name)
        dst_dir, dst_name = tree.parent(name)
        try:
            os.link(src_name, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
        finally:
            os.close(dst_dir)
    finally:
        os.close(src_dir)


def _write_member(tree: Root, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str,
                  ids: tuple[int, int]) -> None:
    """A regular file, written through a descriptor opened inside the root and never through a link."""
    source = tar.extractfile(member)
    dirfd, last = tree.parent(name)
    try:
        tree.remove(name)
        fd = os.open(last, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dirfd)
    finally:
        os.close(dirfd)
    with os.fdopen(fd, "wb") as out:
        if source is not None:
            shutil.copyfileobj(source, out, CHUNK)
        out.flush()
        set_attributes(fd, member.mode & 0o7777, ids, member.mtime)
