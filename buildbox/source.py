"""Sources: a git commit, a tarball checked by sha256, or a Debian source package (from the
archive, or a local .dsc), each unpacked into a layer that holds /build/src, owned by the build user."""

from __future__ import annotations

import os
import re
from pathlib import Path

from buildbox import debian, log
from buildbox.constants import BUILD_DIR, BUILDER, SRC
from buildbox.box import Box
from buildbox.context import Context
from buildbox.errors import BuildFailed, InputError
from buildbox.packages import fetch_access
from buildbox.pins import DebianPin, source_pin
from buildbox.recipe import DebianSource, GitSource, Recipe, Source, UnpackLimits, UrlSource
from buildbox.sets import ensure_download, extract
from buildbox.store import Store, remove_tree, write_meta

UPSTREAM = "/buildbox/upstream"   # where a local repository is bound, read-only
GITCONFIG = "/buildbox/gitconfig"
COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def _git_url(box: Box, source: GitSource) -> str:
    local = source.local_path
    if local is None:
        return source.url
    if not local.exists():
        raise InputError(f"git source {local} does not exist", hint="fix [source] git in the recipe")
    box.bind(local, UPSTREAM)
    # The bound repository belongs to a host user, not to the build user, and git 2.39 takes
    # safe.directory only from a global or system file, not from `-c`.
    box.write(GITCONFIG, "[safe]\n\tdirectory = *\n")
    return f"file://{UPSTREAM}"


def _git(box: Box, args: list[str], *, what: str, log: Path | None = None, capture: bool = False) -> str:
    return box.run(["git", *args], what=what, user=BUILDER.spec,
                   env={**BUILDER.login_env(), "GIT_CONFIG_GLOBAL": GITCONFIG}, cwd=BUILDER.home, log=log,
                   capture=capture, network=True)


def resolve_git(store: Store, layers: list[Path], source: GitSource, *, where: str) -> str:
    """The commit a branch, tag or commit names, asked of the repository from inside a box."""
    if COMMIT_RE.fullmatch(source.ref):
        return source.ref
    with Box(store, layers, label="resolve") as box:
        fetch_access(box, store)
        url = _git_url(box, source)
        try:
            listing = _git(box, ["ls-remote", "--", url, source.ref, f"{source.ref}^{{}}"],
                           what=f"git ls-remote {source.url}", capture=True)
        except BuildFailed as err:
            reason = next((line for line in err.tail.splitlines() if line.startswith("fatal:")), err.tail.strip())
            raise InputError(f"cannot read the git repository {source.url}: {reason}", where=where,
                             hint="check [source] git in the recipe and the network") from None
    refs: dict[str, str] = {}
    for line in listing.splitlines():
        commit, _, name = line.partition("\t")
        refs[name] = commit
    for name in (f"{source.ref}^{{}}", source.ref, f"refs/tags/{source.ref}^{{}}",
                 f"refs/tags/{source.ref}", f"refs/heads/{source.ref}"):
        if name in refs:
            return refs[name]
    raise InputError(f"git ref '{source.ref}' does not exist in {source.url}", where=where,
                     hint="name an existing branch, tag or full commit in [source] ref")


def make(ctx: Context, recipe: Recipe, layers: list[Path], entry: Path, why: str = "", *,
         commit: str | None = None) -> None:
    """The source stage: the recipe's source at /build/src in entry/ (a git source at commit; a
    locked Debian source at the version its lock pins, checked)."""
    pin = recipe.lock.pins.source if recipe.lock and isinstance(recipe.source, DebianSource) else None
    assert pin is None or isinstance(pin, DebianPin)
    with log.step(f"Fetching the source of {recipe.name}"):
        try:
            make_source(ctx.store, layers, recipe.source, commit, entry, ctx.logfile(recipe.name, "source", why),
                        pin=pin, limits=recipe.unpack)
        except BuildFailed as err:
            from buildbox.packages import explain_apt_failure
            raise explain_apt_failure(err, recipe.at("source"), recipe.lock) from None


def make_source(store: Store, layers: list[Path], source: Source, commit: str | None,
                entry: Path, logfile: Path, *, pin: DebianPin | None = None,
                limits: UnpackLimits = UnpackLimits()) -> None:
    """Fill entry/ with a layer holding the source tree at /build/src, and its pin (the lock's
    [source]) as its meta. A pin given (from a lock) says which version to fetch, and is checked."""
    if isinstance(source, UrlSource):
        _from_tarball(store, source, limits, entry)
    elif isinstance(source, debian.DscSource):
        _from_dsc(store, layers, source, entry, logfile)
    else:
        _in_box(store, layers, source, commit, entry, logfile, pin)


def _from_tarball(store: Store, source: UrlSource, limits: UnpackLimits, entry: Path) -> None:
    tarball = ensure_download(store, source.url, source.sha256)
    unpacked = entry / ".unpacked"
    unpacked.mkdir()
    extract(tarball, unpacked, what=source.url, limits=limits, owner=(BUILDER.uid, BUILDER.gid))
    # A single top-level directory (NAME-1.0/) is stripped: the source is what is inside it.
    top = list(unpacked.iterdir())
    tree = top[0] if len(top) == 1 and top[0].is_dir() and not top[0].is_symlink() else unpacked
    src = entry / SRC.lstrip("/")
    src.parent.mkdir(parents=True)
    tree.rename(src)
    remove_tree(unpacked)
    for path in (src.parent, src):
        os.chmod(path, 0o755)
        os.chown(path, BUILDER.uid, BUILDER.gid)
    write_meta(entry, {"url": source.url, "sha256": source.sha256})


def _in_box(store: Store, layers: list[Path], source: GitSource | DebianSource, commit: str | None,
            entry: Path, logfile: Path, pin: DebianPin | None) -> None:
    """Fetch inside a box as the build user; keep only what landed in /build/src."""
    upper = entry / ".upper"
    with Box(store, layers, label="source", upper=upper, log=logfile) as box:
        fetch_access(box, store)
        if isinstance(source, GitSource):
            url = _git_url(box, source)
            _git(box, ["clone", "--no-checkout", "--quiet", "--", url, SRC], what=f"git clone {source.url}",
                 log=logfile)
            # No `--` here (it would start paths): the commit is hex, from the lock (checked when it was
            # read), from git ls-remote, or a ref that COMMIT_RE matched.
            _git(box, ["-C", SRC, "checkout", "--quiet", "--detach", commit], what=f"git checkout {commit}",
                 log=logfile)
            meta = {"git": source.url, "commit": commit}
        else:
            # apt-get source checks the files against the signed Sources index of the layer's lists.
            wanted = f"{source.package}={pin.version}" if pin else source.package
            box.run(["apt-get", "source", "-q", "--download-only", "--", wanted],
                    what=f"apt-get source {wanted}", user=BUILDER.spec, env=BUILDER.login_env(),
                    cwd=BUILD_DIR, log=logfile, network=True)
            dscs = sorted(box.path(BUILD_DIR).glob("*.dsc"))
            if len(dscs) != 1:
                raise BuildFailed(f"apt-get source {source.package} left {len(dscs)} .dsc files in {BUILD_DIR}")
            # Read as a local .dsc is (not following a link, capped), by the one reader of .dsc files.
            fetched = debian.read_dsc(dscs[0], where=f"apt-get source {source.package}")
            meta = {"debian": source.package, "version": fetched.version, "dsc": dscs[0].name,
                    "dsc-sha256": fetched.sha256}
            if pin and source_pin(meta) != pin:
                raise BuildFailed(f"apt-get source {wanted} gave {meta['dsc']} with sha256 {meta['dsc-sha256']}, "
                                  f"not the pinned {pin.dsc} {pin.dsc_sha256}",
                                  hint="the archive serves other bytes under that version: find out why "
                                  "before re-locking")
            box.run(["dpkg-source", "-x", f"{BUILD_DIR}/{dscs[0].name}", SRC], what="dpkg-source -x",
                    user=BUILDER.spec, env=BUILDER.login_env(), cwd=BUILD_DIR, log=logfile)
    _keep_src(entry, upper, meta)


def _from_dsc(store: Store, layers: list[Path], source: debian.DscSource, entry: Path, logfile: Path) -> None:
    """A local .dsc: its files copied and hashed against it on the host, unpacked by dpkg-source
    in a box as the build user (with no network: everything it needs is in the .dsc's files)."""
    staged = debian.stage(source, entry / ".dsc")
    upper = entry / ".upper"
    try:
        with Box(store, layers, label="source", upper=upper, log=logfile) as box:
            box.bind(staged.parent, debian.DSC_DIR)
            box.run(["dpkg-source", "-x", f"{debian.DSC_DIR}/{staged.name}", SRC], what="dpkg-source -x",
                    user=BUILDER.spec, env=BUILDER.login_env(), cwd=BUILD_DIR, log=logfile)
    finally:
        remove_tree(staged.parent)
    _keep_src(entry, upper, source.pin.as_dict())


def _keep_src(entry: Path, upper: Path, meta: dict[str, str]) -> None:
    # The upper layer holds /build/src as the build user wrote it; keep that and nothing else
    # (not the downloaded files, not what git or apt left in the home directory).
    build = entry / BUILD_DIR.lstrip("/")
    build.mkdir(mode=0o755)
    os.chmod(build, 0o755)   # whatever the host's umask
    os.chown(build, BUILDER.uid, BUILDER.gid)
    (upper / SRC.lstrip("/")).rename(entry / SRC.lstrip("/"))
    remove_tree(upper)
    write_meta(entry, meta)
