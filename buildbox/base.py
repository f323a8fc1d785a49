"""A base root from sets: unpacked in order, then given what a box needs and minbase lacks."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from buildbox import log
from buildbox.constants import BUILD_DIR, BUILDER, OUT, BuildUser
from buildbox.context import Context
from buildbox.inroot import Root
from buildbox.store import write_meta

if TYPE_CHECKING:
    from buildbox.recipe import Base, UnpackLimits


HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbuildbox\n"


def make(ctx: Context, base: Base, under: list[Path], sets: list[tuple[str, Path]], digests: list[str],
         entry: Path) -> None:
    """The base stage: entry/root, an overlay layer over the bootstrap trees `under` (nothing of
    them copied), holding the sets after them and buildbox's own /etc, /dev and build user."""
    from buildbox.box import Box
    with log.step(f"Making the base {base.name} from {len(digests)} set(s)"):
        if under:
            # Host code fills this overlay and nothing runs in it: no ids of its own.
            with Box(ctx.store, under, label="base", upper=entry / "root", ids=False) as box:
                make_base(box.root, sets, base.unpack)
        else:
            make_base(entry / "root", sets, base.unpack)
    write_meta(entry, {"base": base.name, "sets": digests})


def make_base(root: Path, sets: list[tuple[str, Path]], limits: UnpackLimits, user: BuildUser = BUILDER) -> None:
    """Put the sets into root, in order (a tarball unpacked, a bootstrap's tree copied), then
    configure it for building. root may already be an overlay on the first sets (the usual case:
    a bootstrap is a layer under its base, not a copy in it).

    Every path written is resolved inside root and never through a link the sets supplied: a set
    whose /etc/passwd links to a host file gets a new /etc/passwd, and the host file is untouched.
    """
    from buildbox.process import run
    from buildbox.sets import extract   # tarfile and friends: not on the cached path
    root.mkdir(exist_ok=True)
    for label, path in sets:
        if path.is_dir():
            # Replacing what is there, never opening it: a link the sets before made is not written
            # through (cp refuses to put a directory over one).
            run(["cp", "-a", "--remove-destination", "--", f"{path}/.", str(root)],
                what=f"copying {label} into the base", contained=True)
        else:
            extract(path, root, what=label, limits=limits, root_filesystem=True)
    with Root(root) as tree:
        _write_etc(tree)
        _make_dev(tree)
        _add_user(tree, user)
        # Services must not start while packages install into a box (what sbuild and mock do too).
        if tree.lstat("/usr/sbin") is not None:
            tree.write("/usr/sbin/policy-rc.d",
                       "#!/bin/sh\n# Written by buildbox: no services start inside a build box.\nexit 101\n",
                       mode=0o755)


def _write_etc(tree: Root) -> None:
    tree.makedirs("/etc", replace=True)
    # minbase has no /etc/hosts; without it `localhost` does not resolve and caddy's tests fail.
    tree.write("/etc/hosts", HOSTS)
    tree.write("/etc/hostname", "buildbox\n")
    # A placeholder: boxes that fetch bind the host's resolver file over it, builds see none.
    tree.write("/etc/resolv.conf", "# Written by buildbox: boxes that fetch bind the host's file here.\n")


def _make_dev(tree: Root) -> None:
    # Only the mount point: every box mounts a /dev of its own over it (enter.py's make_dev).
    tree.makedirs("/dev", replace=True)


def _add_user(tree: Root, user: BuildUser) -> None:
    """Add the unprivileged build user, its group, home, dotfiles and the build directories.

    Written straight into the files rather than with useradd: a base from tarball sets need not
    have one, and the result must not depend on the day it ran (shadow's last-change field).
    """
    for name, line in (("passwd", f"{user.name}:x:{user.uid}:{user.gid}:buildbox build user:{user.home}:/bin/sh"),
                       ("group", f"{user.name}:x:{user.gid}:"),
                       ("shadow", f"{user.name}:!::0:99999:7:::"),
                       ("gshadow", f"{user.name}:!::")):
        path = f"/etc/{name}"
        text = tree.read_text(path) or ""
        if any(entry.split(":")[0] == user.name for entry in text.splitlines()):
            continue
        if text and not text.endswith("\n"):
            text += "\n"
        # A new file in its place, with the mode and owner it had (shadow is root:shadow 0640).
        had = tree.lstat(path)
        kept = had is not None and stat.S_ISREG(had.st_mode)
        tree.write(path, text + line + "\n",
                   mode=stat.S_IMODE(had.st_mode) if kept else 0o640 if name.endswith("shadow") else 0o644,
                   owner=(had.st_uid, had.st_gid) if kept else None)
    owner = (user.uid, user.gid)
    tree.makedirs(user.home, mode=0o755, owner=owner, replace=True)
    tree.set(user.home, mode=0o755, owner=owner)
    env = user.login_env()
    profile = "".join(f"export {k}={v}\n" for k, v in env.items() if k != "SHELL")
    tree.write(f"{user.home}/.profile",
               "# Written by buildbox: the build user's login environment, the same the builds get.\n"
               f"{profile}umask 022\nexport ENV=$HOME/.shrc\n", owner=owner)
    tree.write(f"{user.home}/.shrc", "PS1='buildbox:\\w \\$ '\n", owner=owner)
    tree.write(f"{user.home}/.bashrc", ". \"$HOME/.shrc\"\n", owner=owner)
    for path in (f"{user.home}/bin", BUILD_DIR, OUT):
        tree.makedirs(path, mode=0o755, owner=owner, replace=True)
        tree.set(path, owner=owner)


def renumber_user(root: Path, old: BuildUser, new: BuildUser) -> None:
    """Give the build user of the root another uid and gid (verify's second build runs so): its
    passwd and group entries, and whatever it owns in its home and under /build."""
    with Root(root) as tree:
        for name, fields in (("passwd", {2: new.uid, 3: new.gid}), ("group", {2: new.gid})):
            path = f"/etc/{name}"
            had = tree.lstat(path)
            if had is None or not stat.S_ISREG(had.st_mode):
                from buildbox.errors import BuildFailed
                raise BuildFailed(f"{path} in the box is not a regular file: the build user cannot be renumbered",
                                  hint="the base's sets must leave /etc/passwd and /etc/group as files")
            lines = []
            for line in (tree.read_text(path) or "").splitlines():
                parts = line.split(":")
                if parts[0] == old.name:
                    for index, value in fields.items():
                        parts[index] = str(value)
                lines.append(":".join(parts))
            tree.write(path, "\n".join(lines) + "\n", mode=stat.S_IMODE(had.st_mode), owner=(had.st_uid, had.st_gid))
        for top in (old.home, BUILD_DIR):
            fd = tree.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                # By descriptor, never by path: a link in the tree is chowned itself, never followed.
                _renumber(fd, ".", old, new)
                for _, dirs, files, dirfd in os.fwalk(dir_fd=fd):
                    for name in (*dirs, *files):
                        _renumber(dirfd, name, old, new)
            finally:
                os.close(fd)


def _renumber(dirfd: int, name: str, old: BuildUser, new: BuildUser) -> None:
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    if st.st_uid == old.uid or st.st_gid == old.gid:
        os.chown(name, new.uid if st.st_uid == old.uid else -1, new.gid if st.st_gid == old.gid else -1,
                 dir_fd=dirfd, follow_symlinks=False)
