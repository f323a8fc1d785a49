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
