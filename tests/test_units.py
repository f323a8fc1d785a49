"""Content keys, safe extraction, in-root path resolution and ELF facts: no root, no network."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from buildbox.box import resolve_in_root
from buildbox.elf import loader_dirs, read_elf, resolve_needed
from buildbox.errors import BuildFailed, InputError
from buildbox.recipe import UnpackLimits
from buildbox.sets import extract, fetch_verified
from buildbox.keys import content_key
from buildbox.store import Store, tree_sha256


def test_content_keys_ignore_dict_order_and_change_with_any_input() -> None:
    assert content_key("layer", {"a": 1, "b": [1, 2]}) == content_key("layer", {"b": [1, 2], "a": 1})
    assert content_key("layer", {"a": 1}) != content_key("layer", {"a": 2})
    assert content_key("layer", {"a": 1}) != content_key("build", {"a": 1})


def test_a_tree_digest_is_its_content_modes_and_links_wherever_the_tree_lies(tmp_path: Path) -> None:
    def tree(at: Path) -> Path:
        (at / "etc").mkdir(parents=True)
        (at / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
        (at / "etc" / "hosts").chmod(0o644)
        (at / "bin").symlink_to("usr/bin")
        for path in (at / "etc", at / "etc" / "hosts", at):
            os.utime(path, (1700000000, 1700000000), follow_symlinks=False)
        return at
    first = tree_sha256(tree(tmp_path / "a"))
    assert tree_sha256(tree(tmp_path / "somewhere" / "else")) == first
    (tmp_path / "a" / "etc" / "hosts").chmod(0o600)
    assert tree_sha256(tmp_path / "a") != first
    b = tree(tmp_path / "b")
    (b / "bin").unlink()
    (b / "bin").symlink_to("/usr/bin")
    assert tree_sha256(b) != first
    c = tree(tmp_path / "c")
    (c / "etc" / "hosts").write_text("127.0.0.2 localhost\n")
    os.utime(c / "etc" / "hosts", (1700000000, 1700000000))
    assert tree_sha256(c) != first


def test_a_failed_entry_leaves_nothing_and_a_made_one_appears_whole(tmp_path: Path) -> None:
    store = Store(tmp_path)

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise BuildFailed("boom")

    with pytest.raises(BuildFailed):
        store.ensure("builds", "k", broken)
    assert not store.has("builds", "k")
    assert [p.name for p in (tmp_path / "builds").iterdir()] == []
    entry = store.ensure("builds", "k", lambda tmp: (tmp / "whole").write_text("y"))
    assert (entry / "whole").read_text() == "y"
    assert store.ensure("builds", "k", broken) == entry   # present: not made again


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


@pytest.mark.parametrize("members,words", [
    ([(_member("../evil"), b"x")], "absolute or '..'"),
    ([(_member("/etc/evil"), b"x")], "absolute or '..'"),
    ([(_member("dev/sda", tarfile.BLKTYPE), None)], "device node"),
    ([(_member("up", tarfile.SYMTYPE, "../../../etc"), None)], "points out of the root"),
    ([(_member("etc", tarfile.SYMTYPE, "/etc"), None), (_member("etc/evil"), b"x")], "points out of the root"),
    ([(_member("hard", tarfile.LNKTYPE, "../../etc/passwd"), None)], "points out of the root"),
    ([(_member("hard", tarfile.LNKTYPE, "/etc/passwd"), None)], "points out of the root"),
])
def test_extraction_refuses_members_that_would_leave_the_root(tmp_path: Path, members, words: str) -> None:
    tarball = _tar(tmp_path / "set.tar", members)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(InputError) as caught:
        extract(tarball, root, what="set 1", limits=UnpackLimits())
    assert words in str(caught.value) and str(caught.value).startswith("set 1: ")
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


def test_extraction_keeps_modes_owners_and_links_inside_the_root(tmp_path: Path) -> None:
    tarball = _tar(tmp_path / "src.tar", [
        (_member("pkg-1.0", tarfile.DIRTYPE, mode=0o555), None),
        (_member("pkg-1.0/tool", mode=0o4755), b"#!/bin/sh\n"),
        (_member("pkg-1.0/tmp", tarfile.DIRTYPE, mode=0o1777), None),
        (_member("pkg-1.0/lib/deep/file"), b"deep\n"),
        (_member("pkg-1.0/lib/up", tarfile.SYMTYPE, "../tool"), None),
        (_member("pkg-1.0/same", tarfile.LNKTYPE, "pkg-1.0/tool"), None),
    ])
    root = tmp_path / "root"
    root.mkdir()
    extract(tarball, root, what="src", limits=UnpackLimits(), owner=(1000, 1000))
    top = root / "pkg-1.0"
    assert (top / "tool").stat().st_mode & 0o7777 == 0o4755   # set after the chown that clears it
    assert (top / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert top.stat().st_mode & 0o7777 == 0o555   # a read-only directory, set after what is inside
    assert os.readlink(top / "lib" / "up") == "../tool"
    assert (top / "same").stat().st_ino == (top / "tool").stat().st_ino
    assert (top / "lib" / "deep" / "file").read_text() == "deep\n"
    assert {p.stat(follow_symlinks=False).st_uid for p in top.rglob("*")} == {1000}


def test_paths_resolve_inside_the_root_never_on_the_host(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "out" / "abs").symlink_to("/etc/passwd")
    (root / "out" / "climb").symlink_to("../../../../../../etc/passwd")
    (root / "out" / "dir").symlink_to("/etc")
    (root / "out" / "loop").symlink_to("loop")
    for link in ("out/abs", "out/climb", "out/dir/passwd"):
        assert resolve_in_root(root, link) == root / "etc" / "passwd"
    with pytest.raises(BuildFailed):
        resolve_in_root(root, "out/loop")


def test_a_local_file_with_the_wrong_sha256_is_not_kept_and_both_digests_are_named(tmp_path: Path) -> None:
    source = tmp_path / "set.tar"
    source.write_bytes(b"content")
    wrong = "0" * 64
    with pytest.raises(BuildFailed) as caught:
        fetch_verified(str(source), wrong, tmp_path / "kept")
    right = "ed7002b439e9ac845f22357d822bac1444730fbdb6016d3ec9432297b9ec9f73"
    assert wrong in str(caught.value) and right in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.tar"]
    fetch_verified(str(source), right, tmp_path / "kept")
    assert (tmp_path / "kept").read_bytes() == b"content"


def test_elf_facts_of_a_host_program_and_its_libraries_found_on_the_host() -> None:
    ls = Path(shutil.which("ls")).resolve()
    info = read_elf(ls)
    assert info is not None and not info.static
    assert info.interpreter and os.path.exists(info.interpreter)
    assert "libc.so.6" in info.needed
    found = resolve_needed(info, ls.parent, loader_dirs())
    assert all(found.values()), found
    assert read_elf(Path(__file__)) is None


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc on the host")
def test_elf_facts_tell_static_from_dynamic_and_name_missing_libraries(tmp_path: Path) -> None:
    (tmp_path / "lib.c").write_text("int f(void) { return 1; }\n")
    (tmp_path / "main.c").write_text("int f(void); int main(void) { return f() - 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libbbgone.so.1", "-o", tmp_path / "libbbgone.so.1",
                    tmp_path / "lib.c"], check=True)
    subprocess.run(["gcc", "-o", tmp_path / "main", tmp_path / "main.c", tmp_path / "libbbgone.so.1",
                    "-Wl,--no-as-needed,-rpath,/nonexistent/lib"], check=True)
    info = read_elf(tmp_path / "main")
    assert info.rpath == ("/nonexistent/lib",) or info.runpath == ("/nonexistent/lib",)
    found = resolve_needed(info, tmp_path, loader_dirs())
    assert found["libbbgone.so.1"] is None and found["libc.so.6"] is not None
    static = subprocess.run(["gcc", "-static", "-o", tmp_path / "static", tmp_path / "main.c", tmp_path / "lib.c"])
    if static.returncode == 0:
        assert read_elf(tmp_path / "static").static


def test_a_library_a_binary_names_is_never_opened_unless_it_is_a_regular_file(tmp_path: Path) -> None:
    import threading
    from buildbox.elf import resolve_needed
    fifo = tmp_path / "libfifo.so"
    os.mkfifo(fifo)
    info = read_elf(Path("/bin/true"))
    info = dataclasses.replace(info, needed=(str(fifo), "libfifo.so"), rpath=(), runpath=(str(tmp_path),))
    found: dict = {}
    worker = threading.Thread(target=lambda: found.update(resolve_needed(info, tmp_path, [])), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "resolving a NEEDED that names a FIFO blocked"
    assert found == {str(fifo): None, "libfifo.so": None}


def test_a_tree_digests_its_owners_as_the_box_sees_them_under_a_uid_mapping(tmp_path: Path) -> None:
    from buildbox.store import tree_sha256

    def tree(where: Path, shift: int) -> Path:
        (where / "home").mkdir(parents=True)
        (where / "home" / "notes").write_text("same\n")
        os.symlink("notes", where / "home" / "link")
        for path, uid in ((where / "home", 1000), (where / "home" / "notes", 1000), (where / "home" / "link", 0)):
            os.lchown(path, shift + uid, shift + uid)
            os.utime(path, (1700000000, 1700000000), follow_symlinks=False)
        os.utime(where, (1700000000, 1700000000))
        return where

    if os.geteuid() != 0:
        pytest.skip("needs root to give files other owners")
    by_root = tree(tmp_path / "root-made", 0)
    mapped = tree(tmp_path / "mapped", 100000)
    assert tree_sha256(mapped, id_base=100000) == tree_sha256(by_root)
    assert tree_sha256(mapped) != tree_sha256(by_root)   # raw host ids would make them differ
    os.lchown(mapped / "home" / "notes", 100000 + 1001, -1)
    assert tree_sha256(mapped, id_base=100000) != tree_sha256(by_root)


def test_gc_keeps_what_each_recipes_last_run_stood_on_though_its_build_names_another_layer(tmp_path: Path) -> None:
    # A build made before the shared layer of essentials names the layer it was made over; a run
    # after it stood on new layers (its build, keyed by packages, the same): gc keeps both.
    from buildbox.gc import referenced
    from buildbox.records import RunRecord
    from buildbox.store import Store
    store = Store(tmp_path)
    shared, own, build = "b" * 64, "c" * 64, "d" * 64
    RunRecord({"set1": "a" * 64, "essentials": shared, "layer": own, "build": build}).write(store, "tool")
    assert referenced(store) == {tmp_path / "layers" / shared, tmp_path / "layers" / own,
                                 tmp_path / "builds" / build}
