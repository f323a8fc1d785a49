"""Sets: tarballs fetched and checked against their sha256, Debian bootstraps made by mmdebstrap,
and the one safe way to unpack any tarball into a root."""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import sys
import tarfile
import time
from pathlib import Path
from urllib.parse import urlparse

from buildbox import log
from buildbox.base import EPOCH   # fixed: the same bootstrap inputs give the same tarball
from buildbox.errors import BuildFailed, InputError
from buildbox.process import run
from buildbox.recipe import BootstrapSet
from buildbox.store import file_sha256

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
                    raise InputError(f"could not download {url}: HTTP {response.status_code} {response.reason}",
                                     hint="check the URL")
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


def make_bootstrap(spec: BootstrapSet, dest: Path, logfile: Path) -> None:
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
    argv += [spec.suite, str(dest), deb]
    run(argv, what=f"mmdebstrap of {spec.suite} from {spec.mirror}", env=dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH)),
        log=logfile)
    # deb-src too: recipes install the Build-Depends of, and fetch, Debian source packages. Written
    # here, as mmdebstrap would have written it, rather than given to it: it would download the
    # Sources index only to throw it away (every box that installs runs apt-get update first).
    sources = dest / "etc/apt/sources.list"
    if not sources.is_symlink():
        sources.write_text(f"{deb}\n\ndeb-src {spec.mirror} {spec.suite} main\n")
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


def extract(tar_path: Path, root: Path, *, what: str, owner: tuple[int, int] | None = None,
            strip_top: bool = False) -> None:
    """Unpack a tarball into root; refuse any member that would land (or point) outside it.

    Modes are kept as written (setuid bits, the sticky /tmp): a root filesystem needs them.
    Device nodes are refused: buildbox makes the few a box gets itself.
    """
    try:
        tar = tarfile.open(tar_path)
    except (tarfile.TarError, OSError) as err:
        raise InputError(f"{what}: not a readable tarball: {err}", hint="check the URL and the sha256")
    with tar:
        top = _single_top(tar) if strip_top else None

        def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
            name = member.name
            if top:
                inner = _relative(name).rstrip("/")
                if inner == top:
                    return None
                member = member.replace(name=inner[len(top) + 1:], deep=False)
            if name.startswith("/") or ".." in name.split("/"):
                raise InputError(f"{what}: member '{name}' has an absolute or '..' path",
                                 hint="rebuild the tarball with paths relative to its root")
            if member.isdev() or member.isfifo():
                raise InputError(f"{what}: member '{name}' is a device node or fifo",
                                 hint="leave /dev out of the set; buildbox makes the nodes a box needs")
            if member.islnk():
                target = posixpath.normpath(_relative(member.linkname))
                if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
                    raise InputError(f"{what}: hard link '{name}' points out of the root ({member.linkname})",
                                     hint="make the link point inside the set")
            if member.issym() and not member.linkname.startswith("/"):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
                if target == ".." or target.startswith("../"):
                    raise InputError(f"{what}: symlink '{name}' points out of the root ({member.linkname})",
                                     hint="make the link point inside the set")
            try:
                safe = tarfile.tar_filter(member, dest)
            except tarfile.FilterError as err:
                raise InputError(f"{what}: member '{name}' is refused: {err}",
                                 hint="rebuild the tarball with paths relative to its root") from None
            safe = safe.replace(mode=member.mode, deep=False)
            if owner:
                safe = safe.replace(uid=owner[0], gid=owner[1], uname="", gname="", deep=False)
            return safe

        try:
            tar.extractall(root, numeric_owner=True, filter=check)
        except (tarfile.TarError, EOFError) as err:
            raise InputError(f"{what}: the tarball is damaged: {err}", hint="fetch it again") from None


def _single_top(tar: tarfile.TarFile) -> str | None:
    """The one top-level directory every member is under (as in NAME-1.0/...), if there is one."""
    names = [_relative(m.name) for m in tar.getmembers()]
    tops = {name.split("/", 1)[0] for name in names if name not in ("", ".")}
    if len(tops) != 1:
        return None
    top = tops.pop()
    alone = [m for m in tar.getmembers() if _relative(m.name).rstrip("/") == top]
    return top if all(m.isdir() for m in alone) and len(alone) < len(names) else None


def _relative(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name
