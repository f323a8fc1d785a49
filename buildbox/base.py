"""A base root from sets: unpacked in order, then given what a box needs and minbase lacks."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


BUILD_DIR = "/build"
SRC = f"{BUILD_DIR}/src"        # the source tree the build runs in
OUT = f"{BUILD_DIR}/out"        # $OUT: what the build leaves here is copied out
# The one fixed time of buildbox: SOURCE_DATE_EPOCH of bootstraps and builds, the artifacts' mtime.
EPOCH = 1700000000
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbuildbox\n"
# Nodes a build needs and nothing else: no disks, no consoles, no host ttys.
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9),
           "tty": (5, 0)}


@dataclass(frozen=True)
class BuildUser:
    name: str
    uid: int
    gid: int

    @property
    def home(self) -> str:
        return f"/home/{self.name}"

    @property
    def spec(self) -> str:
        return f"{self.uid}:{self.gid}"

    @property
    def path(self) -> str:
        return f"{self.home}/bin:/usr/local/bin:/usr/bin:/bin"

    def login_env(self) -> dict[str, str]:
        """The environment of a login as this user: what a doas `setenv` rule gives on OpenBSD."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "PATH": self.path,
                "SHELL": "/bin/sh", "LANG": "C.UTF-8", "TZ": "UTC"}


BUILDER = BuildUser("builder", 1000, 1000)


def make_base(root: Path, sets: list[tuple[str, Path]], user: BuildUser = BUILDER) -> None:
    """Put the sets into root, in order (a tarball unpacked, a bootstrap's tree copied), then
    configure it for building. root may already be an overlay on the first sets (the usual case:
    a bootstrap is a layer under its base, not a copy in it)."""
    from buildbox.process import run
    from buildbox.sets import extract   # tarfile and friends: not on the cached path
    root.mkdir(exist_ok=True)
    for label, path in sets:
        if path.is_dir():
            run(["cp", "-a", "--", f"{path}/.", str(root)], what=f"copying {label} into the base")
        else:
            extract(path, root, what=label)
    _write_etc(root)
    _make_dev(root)
    _add_user(root, user)
    # Services must not start while packages install into a box (what sbuild and mock do too).
    policy = root / "usr/sbin/policy-rc.d"
    if policy.parent.is_dir():
        policy.write_text("#!/bin/sh\n# Written by buildbox: no services start inside a build box.\nexit 101\n")
        policy.chmod(0o755)


def _write_etc(root: Path) -> None:
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    for name in ("hosts", "resolv.conf", "hostname"):
        (etc / name).unlink(missing_ok=True)   # never write through a symlink a set shipped
    # minbase has no /etc/hosts; without it `localhost` does not resolve and caddy's tests fail.
    (etc / "hosts").write_text(HOSTS)
    (etc / "hostname").write_text("buildbox\n")
    # A placeholder: boxes that fetch bind the host's resolver file over it, builds see none.
    (etc / "resolv.conf").write_text("# Written by buildbox: boxes that fetch bind the host's file here.\n")


def _make_dev(root: Path) -> None:
    dev = root / "dev"
    if dev.is_symlink() or dev.is_file():
        dev.unlink()
    dev.mkdir(mode=0o755, exist_ok=True)
    for name, (major, minor) in DEVICES.items():
        node = dev / name
        if node.exists() or node.is_symlink():
            node.unlink()
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        node.chmod(0o666)
    # Not nodes but links into /proc (mounted for every build): shells need /dev/fd.
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        if not (dev / name).is_symlink():
            (dev / name).symlink_to(target)
    for name in ("pts", "shm"):
        (dev / name).mkdir(exist_ok=True)
    (dev / "shm").chmod(0o1777)


def _add_user(root: Path, user: BuildUser) -> None:
    """Add the unprivileged build user, its group, home, dotfiles and the build directories.

    Written straight into the files rather than with useradd: a base from tarball sets need not
    have one, and the result must not depend on the day it ran (shadow's last-change field).
    """
    etc = root / "etc"
    for name, line in (("passwd", f"{user.name}:x:{user.uid}:{user.gid}:buildbox build user:{user.home}:/bin/sh"),
                       ("group", f"{user.name}:x:{user.gid}:"),
                       ("shadow", f"{user.name}:!::0:99999:7:::"),
                       ("gshadow", f"{user.name}:!::")):
        path = etc / name
        text = path.read_text() if path.exists() else ""
        if any(entry.split(":")[0] == user.name for entry in text.splitlines()):
            continue
        if text and not text.endswith("\n"):
            text += "\n"
        path.write_text(text + line + "\n")
        if name in ("shadow", "gshadow"):
            path.chmod(0o640)
    home = root / user.home.lstrip("/")
    home.mkdir(parents=True, exist_ok=True)
    env = user.login_env()
    profile = "".join(f"export {k}={v}\n" for k, v in env.items() if k != "SHELL")
    (home / ".profile").write_text(
        "# Written by buildbox: the build user's login environment, the same the builds get.\n"
        f"{profile}umask 022\nexport ENV=$HOME/.shrc\n")
    (home / ".shrc").write_text("PS1='buildbox:\\w \\$ '\n")
    (home / ".bashrc").write_text(". \"$HOME/.shrc\"\n")
    (home / "bin").mkdir(exist_ok=True)
    build = root / BUILD_DIR.lstrip("/")
    out = root / OUT.lstrip("/")
    out.mkdir(parents=True, exist_ok=True)
    for path in (home, *home.iterdir(), build, out):
        os.lchown(path, user.uid, user.gid)
    home.chmod(0o755)


def renumber_user(root: Path, old: BuildUser, new: BuildUser) -> None:
    """Give the build user of the root another uid and gid (verify's second build runs so): its
    passwd and group entries, and whatever it owns in its home and under /build."""
    etc = root / "etc"
    for name, fields in (("passwd", {2: new.uid, 3: new.gid}), ("group", {2: new.gid})):
        path = etc / name
        if path.is_symlink():
            raise ValueError(f"{path} is a symlink")
        lines = []
        for line in path.read_text().splitlines():
            parts = line.split(":")
            if parts[0] == old.name:
                for index, value in fields.items():
                    parts[index] = str(value)
            lines.append(":".join(parts))
        path.write_text("\n".join(lines) + "\n")
    for top in (old.home, BUILD_DIR):
        for folder, dirs, files in os.walk(root / top.lstrip("/")):
            for entry in (folder, *(os.path.join(folder, n) for n in (*dirs, *files))):
                st = os.lstat(entry)
                if st.st_uid == old.uid or st.st_gid == old.gid:
                    os.lchown(entry, new.uid if st.st_uid == old.uid else -1,
                              new.gid if st.st_gid == old.gid else -1)
