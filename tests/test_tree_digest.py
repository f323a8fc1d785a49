"""Tree digests: one tree, one digest, whatever bytes its names and link targets hold."""

from __future__ import annotations

import json
import os
from pathlib import Path

from buildbox.store import DIGEST_FORMAT, Store, tree_sha256


def two_trees(tmp_path: Path) -> tuple[Path, Path]:
    """{link A -> "t\\nX", file Y} and {link A -> "t", file "X\\nY"}: one digest in format 1."""
    first, second = tmp_path / "first", tmp_path / "second"
    for root, target, name in ((first, "t\nX", "Y"), (second, "t", "X\nY")):
        root.mkdir()
        os.symlink(target, root / "A")
        (root / name).write_text("same\n")
        for path in (root / "A", root / name, root):
            os.utime(path, (1700000000, 1700000000), follow_symlinks=False)
    return first, second


def test_trees_whose_names_hold_newlines_have_different_digests(tmp_path: Path) -> None:
    first, second = two_trees(tmp_path)
    assert tree_sha256(first, format=1) == tree_sha256(second, format=1)   # the collision format 1 had
    assert tree_sha256(first) != tree_sha256(second)
    assert tree_sha256(first) == tree_sha256(first)


def test_a_fetched_tree_filed_under_an_old_format_digest_is_a_miss(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    store.claim(create=True)

    def file_tree(key: str, digest_format: int | None) -> None:
        entry = store.entry("fetches", key)
        (entry / "tree").mkdir(parents=True)
        store._record("fetches", key, entry)
        record = json.loads(store.record_path("fetches", key).read_text())
        if digest_format is None:
            record.pop("digest-format")
        store.record_path("fetches", key).write_text(json.dumps(record))
    file_tree("a" * 64, None)
    file_tree("b" * 64, DIGEST_FORMAT)
    assert not store.intact("fetches", "a" * 64)
    assert store.intact("fetches", "b" * 64)


def read_bytes_so_far() -> int:
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("rchar:")).split()[1])


def test_a_sparse_file_digests_as_its_bytes_and_costs_its_data_not_its_size(tmp_path: Path) -> None:
    dense, sparse, huge = tmp_path / "dense", tmp_path / "sparse", tmp_path / "huge"
    for root in (dense, sparse, huge):
        root.mkdir()
    size = (3 << 20) + 17
    (dense / "f").write_bytes(bytes(1 << 20) + b"data" + bytes(size - (1 << 20) - 4))
    with open(sparse / "f", "wb") as f:   # the same bytes, with holes
        f.truncate(size)
        f.seek(1 << 20)
        f.write(b"data")
    for root in (dense, sparse):
        for path in (root / "f", root):
            os.utime(path, (1700000000, 1700000000))
    assert tree_sha256(dense) == tree_sha256(sparse)
    with open(huge / "f", "wb") as f:
        f.truncate(8 << 30)   # 8 GiB of holes
    before = read_bytes_so_far()
    tree_sha256(huge)
    assert read_bytes_so_far() - before < (16 << 20)
