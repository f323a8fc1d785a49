"""Room on the disk: a tarball is not unpacked onto a filesystem without room for all its limit
allows, and a filesystem that fills up anyway is a full disk (exit 1, named), not a bad tarball."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildbox.errors import BuildFailed, os_failure
from buildbox.recipe import UnpackLimits
from buildbox.sets import extract
from buildbox.space import require_room

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@contextlib.contextmanager
def small_tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=True)


def tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_require_room_refuses_more_than_the_filesystem_has_naming_both_numbers(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "size=1m") as small:
        require_room(small, 4096, "a little", "never said")
        with pytest.raises(BuildFailed) as refused:
            require_room(small / "not-yet", 1 << 40, "a lot", "ask for less")
        message = str(refused.value)
        assert refused.value.exit_code == 1 and "\n" not in message
        assert message.startswith(f"a lot needs 1.0T, and the filesystem at {small} has 1.0M free; "
                                  f"free space on {small} "), message
        assert message.endswith(", or ask for less"), message


def test_a_tarball_is_not_unpacked_past_the_filesystems_free_space(tmp_path: Path) -> None:
    # 1.5M of zeros packs to a few KiB: a gzip bomb that its 2M limit allows, on a 1M filesystem.
    bomb = tarball(tmp_path / "bomb.tar.gz", {"src/zeros": bytes(3 << 19)})
    with small_tmpfs(tmp_path / "small", "size=1m") as small:
        with pytest.raises(BuildFailed) as refused:
            extract(bomb, small, what="bomb.tar.gz", limits=UnpackLimits(unpacked=2 << 20))
        # Refused before its member is written: it would leave less than the reserve free.
        assert str(refused.value).startswith("bomb.tar.gz: unpacking it needs 1.5M, "
                                             f"and the filesystem at {small} has 1.0M free"), str(refused.value)
        assert "lower [limits] unpacked" in str(refused.value)
        assert list(small.iterdir()) == []


def test_a_filesystem_that_fills_up_while_unpacking_is_a_full_disk_not_a_bad_tarball(tmp_path: Path) -> None:
    # Out of inodes: room for every byte the limit allows, none for the tenth file.
    flood = tarball(tmp_path / "flood.tar.gz", {f"f{i}": b"x" for i in range(20)})
    with small_tmpfs(tmp_path / "small", "size=4m,nr_inodes=10") as small:
        with pytest.raises(OSError) as full:
            extract(flood, small, what="flood", limits=UnpackLimits(unpacked=1 << 20))
        assert full.value.errno == errno.ENOSPC
        failure = os_failure(full.value)
        assert failure.exit_code == 1
        assert str(failure).startswith(f"no space left on the filesystem at {small} while writing {small}/f"), failure
