"""Hostile tarballs, trees and locks: link tricks against canary files on the host, gzip bombs, a
base whose files are links out, a lock whose pins would be apt options. Each trick is one an
attacker used or would use (tarfile's CVEs, the symlink-plus-hard-link that once chowned a host
file to the build user with mode 4777, a package name that apt-get reads as -o)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from buildbox.base import make_base
from buildbox.constants import BUILDER
from buildbox.errors import InputError
from buildbox.pins import Pins
from buildbox.lock import load_recipe, lock_path, write_lock
from buildbox.recipe import UnpackLimits
from buildbox.sets import extract
from conftest import GOOD, REPO, Workspace, mounts_under, write

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown and mknod as the base step does need root")


class Canaries:
    """Host files a trick aims at; each must keep its content, owner, mode and mtime."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.folder = folder
        self.file = folder / "canary"
        self.file.write_text("unchanged\n")
        self.file.chmod(0o600)
        os.utime(self.file, (1600000000, 1600000000))
        self.before = self.state()

    def state(self) -> list[tuple[str, str, int, int, int]]:
        return [(p.name, p.read_text(), p.stat().st_uid, p.stat().st_mode, p.stat().st_mtime_ns)
                for p in sorted(self.folder.iterdir())]

    def untouched(self) -> bool:
        return self.state() == self.before


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes | None = None,
           mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.uid, info.gid = kind, link, mode, 1000, 1000
    return info, data


def tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


# Each trick: (name, members given the canary's path, the words of the refusal for a source,
# and for a set: None when a set takes the members as a root filesystem, where the link names a
# place inside the root; the host's file must be untouched all the same).
def tricks(canary: Path) -> list[tuple[str, list, str, str | None]]:
    up = "../" * 20 + str(canary).lstrip("/")
    return [
        ("absolute symlink, then written through", [member("c", tarfile.SYMTYPE, str(canary)),
                                                   member("c", data=b"pwned\n", mode=0o4777)],
         "symlink 'c' points out of the root", None),
        ("absolute symlink to a folder, then a file in it",
         [member("d", tarfile.SYMTYPE, str(canary.parent)), member("d/canary", data=b"pwned\n")],
         "symlink 'd' points out of the root", "cannot unpack member 'd/canary'"),
        ("escaping relative symlink", [member("up", tarfile.SYMTYPE, up), member("up", data=b"pwned\n")],
         "symlink 'up' points out of the root", "symlink 'up' points out of the root"),
        ("escape through a link to the root", [member("a", tarfile.DIRTYPE, mode=0o755),
                                               member("a/top", tarfile.SYMTYPE, ".."),
                                               member("a/top/out", tarfile.SYMTYPE, "../" + up)],
         "symlink 'a/top/out' points out of the root", "symlink 'a/top/out' points out of the root"),
        ("hard link to a symlink, chowned and chmodded",
         [member("s", tarfile.SYMTYPE, str(canary)), member("h", tarfile.LNKTYPE, "s", mode=0o4777)],
         "symlink 's' points out of the root", "hard link 'h' points to a link or a non-file"),
        ("hard link to a symlink inside", [member("f", data=b"x"), member("s", tarfile.SYMTYPE, "f"),
                                           member("h", tarfile.LNKTYPE, "s", mode=0o4777)],
         "hard link 'h' points to a link or a non-file", "hard link 'h' points to a link or a non-file"),
        ("'.' as a symlink", [member(".", tarfile.SYMTYPE, str(canary.parent)), member("canary", data=b"pwned\n")],
         "member '.' would replace the root itself", "member '.' would replace the root itself"),
        ("absolute hard link", [member("h", tarfile.LNKTYPE, str(canary), mode=0o4777)],
         "hard link 'h' points out of the root", "hard link 'h' points out of the root"),
        ("'..' in a name", [member("x/../../canary", data=b"pwned\n")], "member 'x/../../canary' has an absolute or '..' path",
         "member 'x/../../canary' has an absolute or '..' path"),
    ]


@needs_root
@pytest.mark.parametrize("as_set", [False, True], ids=["source", "set"])
@pytest.mark.parametrize("index", range(9))
def test_no_link_trick_in_a_tarball_touches_a_host_file(tmp_path: Path, as_set: bool, index: int) -> None:
    canaries = Canaries(tmp_path / "host")
    name, members, source_words, set_words = tricks(canaries.file)[index]
    root = tmp_path / "root"
    root.mkdir()
    words = set_words if as_set else source_words
    what = f"{name}.tar.gz"
    tar = tarball(tmp_path / "t.tar.gz", members)
    if words is None:
        extract(tar, root, what=what, limits=UnpackLimits(), root_filesystem=True)
    else:
        with pytest.raises(InputError) as refused:
            extract(tar, root, what=what, limits=UnpackLimits(), owner=None if as_set else (1000, 1000),
                    root_filesystem=as_set)
        assert str(refused.value).startswith(f"{what}: {words}"), str(refused.value)
        assert "\n" not in str(refused.value)
    assert canaries.untouched(), name


@needs_root
def test_a_set_whose_absolute_links_are_written_over_keeps_the_writes_inside_the_root(tmp_path: Path) -> None:
    canaries = Canaries(tmp_path / "host")
    root = tmp_path / "root"
    (root / str(canaries.folder).lstrip("/")).mkdir(parents=True)
    tar = tarball(tmp_path / "set.tar.gz", [member("d", tarfile.SYMTYPE, str(canaries.folder)),
                                            member("d/canary", data=b"inside\n")])
    extract(tar, root, what="set", limits=UnpackLimits(), root_filesystem=True)
    assert canaries.untouched()
    assert (root / str(canaries.file).lstrip("/")).read_text() == "inside\n"   # where the box sees it


@needs_root
def test_the_base_step_never_writes_through_a_link_the_sets_made(tmp_path: Path) -> None:
    canaries = Canaries(tmp_path / "host")
    root = tmp_path / "root"
    for folder in ("etc", "home/builder", "usr/sbin"):
        (root / folder).mkdir(parents=True)
    links = ["etc/passwd", "etc/group", "etc/shadow", "etc/hosts", "etc/resolv.conf", "home/builder/.profile",
             "usr/sbin/policy-rc.d", "dev"]
    for link in links:
        (root / link).symlink_to(canaries.file if link != "dev" else canaries.folder)
    (root / "build").symlink_to("../" * 20 + str(canaries.folder).lstrip("/"))
    (root / "etc/os-release").symlink_to(canaries.file)
    bootstrap = tmp_path / "bootstrap"   # a bootstrap set after the sets that made the links
    (bootstrap / "etc").mkdir(parents=True)
    (bootstrap / "etc/os-release").write_text("from the bootstrap\n")
    make_base(root, [("set 2", bootstrap)], UnpackLimits())
    assert canaries.untouched()
    assert (root / "etc/os-release").read_text() == "from the bootstrap\n"
    assert [p.name for p in canaries.folder.iterdir()] == ["canary"]
    for link in links + ["build"]:
        assert not (root / link).is_symlink(), link
    assert "builder:x:1000:1000:" in (root / "etc/passwd").read_text()
    assert (root / "home/builder/.profile").stat().st_uid == BUILDER.uid
    assert (root / "dev").is_dir() and list((root / "dev").iterdir()) == []   # each box mounts its own /dev


def bomb(path: Path, size: int) -> Path:
    """A gzip bomb: one file of zeros, a few KiB packed."""
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("src/zeros")
        info.size = size

        class Zeros(io.RawIOBase):
            def __init__(self) -> None:
                self.left = size

            def readinto(self, buffer) -> int:
                n = min(len(buffer), self.left)
                buffer[:n] = bytes(n)
                self.left -= n
                return n
        tar.addfile(info, Zeros())
    return path


def test_a_gzip_bomb_or_a_flood_of_members_is_refused_before_it_is_written(tmp_path: Path) -> None:
    tar = bomb(tmp_path / "bomb.tar.gz", 64 << 20)
    assert tar.stat().st_size < 256 << 10
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InputError) as refused:
        extract(tar, root, what="bomb.tar.gz", limits=UnpackLimits(unpacked=1 << 20))
    assert str(refused.value).startswith("bomb.tar.gz: unpacks to more than 1048576 bytes")
    assert "[limits] unpacked" in str(refused.value)
    assert not (root / "src" / "zeros").exists()
    flood = tarball(tmp_path / "flood.tar.gz", [member(f"f{i}", data=b"") for i in range(50)])
    with pytest.raises(InputError) as refused:
        extract(flood, root, what="flood", limits=UnpackLimits(members=20))
    assert str(refused.value).startswith("flood: more than 20 members")
    assert len(list(root.iterdir())) <= 20


@pytest.mark.integration
def test_a_hostile_source_tarball_is_refused_naming_its_member_and_nothing_is_kept(
        workspace: Workspace, tmp_path: Path) -> None:
    canaries = Canaries(tmp_path / "host")
    tar = tarball(workspace.root / "evil.tar.gz", [
        member("pkg-1.0", tarfile.DIRTYPE, mode=0o755),
        member("pkg-1.0/s", tarfile.SYMTYPE, str(canaries.file)),
        member("pkg-1.0/h", tarfile.LNKTYPE, "pkg-1.0/s", mode=0o4777)])
    recipe = workspace.recipe("evil", f'[source]\nurl = "{tar}"\nsha256 = "{hashlib.sha256(tar.read_bytes()).hexdigest()}"\n'
                                      '[build]\nscript = "echo > $OUT/x"\n')
    result = workspace.buildbox("run", recipe, "-q", check=2)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"buildbox: error: {tar}: symlink 'pkg-1.0/s' points out of the root"), result.stderr
    assert "Traceback" not in result.stderr
    assert canaries.untouched()
    assert not any(p.name.startswith(".tmp-") for p in (workspace.cache / "sources").iterdir())


@pytest.mark.integration
def test_a_gzip_bomb_source_is_a_one_line_error_and_leaves_nothing_on_disk(workspace: Workspace) -> None:
    tar = bomb(workspace.root / "bomb.tar.gz", 256 << 20)
    digest = hashlib.sha256(tar.read_bytes()).hexdigest()
    recipe = workspace.recipe("bomb", f'[source]\nurl = "{tar}"\nsha256 = "{digest}"\n'
                                      '[build]\nscript = "echo > $OUT/x"\n[limits]\nunpacked = "1M"\n')
    result = workspace.buildbox("run", recipe, "-q", check=2)
    assert "unpacks to more than 1048576 bytes; raise [limits] unpacked" in result.stderr.strip().splitlines()[-1]
    leftovers = [p for p in (workspace.cache / "sources").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert mounts_under(workspace.cache) == []


@pytest.mark.integration
def test_a_tarball_set_with_an_escaping_link_is_refused_on_its_line(workspace: Workspace, tmp_path: Path) -> None:
    canaries = Canaries(tmp_path / "host")
    tar = tarball(workspace.root / "recipes" / "base" / "evil-set.tar.gz", [
        member("etc", tarfile.DIRTYPE, mode=0o755),
        member("etc/passwd", tarfile.SYMTYPE, "../" * 20 + str(canaries.file).lstrip("/"))])
    workspace.base("evilbase", f'[[set]]\nurl = "evil-set.tar.gz"\nsha256 = "{hashlib.sha256(tar.read_bytes()).hexdigest()}"\n')
    recipe = workspace.recipe("onevil", 'base = "evilbase"\n[source]\ndebian = "hello"\n'
                                        '[build]\nscript = "echo > $OUT/x"\n')
    result = workspace.buildbox("run", recipe, "-q", check=2)
    last = result.stderr.strip().splitlines()[-1]
    assert "evilbase.toml:2: set 1: symlink 'etc/passwd' points out of the root" in last, result.stderr
    assert canaries.untouched()
    assert not any(p.name.startswith(".tmp-") for p in (workspace.cache / "bases").iterdir())


def test_a_lock_whose_package_would_be_an_apt_option_is_refused_before_anything_runs(tmp_path: Path) -> None:
    # apt-get install -oDpkg::Pre-Invoke::=CMD runs CMD as root in the box before dpkg: what
    # NAME=VERSION would be for this pin, were its name not checked when the lock is read.
    canary = tmp_path / "CANARY"
    recipe = write(tmp_path, 'base = "one-set"\n' + GOOD)
    # A set that is nowhere: should the lock ever be taken, the run fails fast, not in an apt install.
    (tmp_path / "base" / "one-set.toml").write_text(f'[[set]]\nurl = "set.tar"\nsha256 = "{"a" * 64}"\n')
    hostile = {"version": f"x; touch {canary}", "arch": "amd64", "sha256": "1" * 64}
    source = {"git": "https://example.org/hello.git", "commit": "c" * 40}
    write_lock(load_recipe(recipe, locked=False),
               Pins.from_dict({"sets": ["a" * 64], "packages": {"-oDpkg::Pre-Invoke::": hostile}, "source": source}))
    lock = lock_path(recipe)
    line = next(n for n, l in enumerate(lock.read_text().splitlines(), 1) if l.startswith('"-oDpkg'))
    with pytest.raises(InputError) as refused:
        load_recipe(recipe)
    assert refused.value.where == f"{lock}:{line}"
    result = subprocess.run([sys.executable, "-m", "buildbox", "run", recipe, "--cache", tmp_path / "cache",
                             "--out", tmp_path / "out"], capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert f"{lock}:{line}: '-oDpkg::Pre-Invoke::' is not a Debian package name" in result.stderr, result.stderr
    assert f"buildbox lock {recipe}" in result.stderr and "Traceback" not in result.stderr
    assert not canary.exists() and not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
