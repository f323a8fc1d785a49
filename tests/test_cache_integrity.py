"""The cache and out/ are trusted for their content, not for existing; the cleaners clean only a
buildbox cache; out/NAME is replaced only where buildbox made it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildbox.errors import BuildFailed
from buildbox.store import CACHEDIR_TAG, MARKER, remove_tree
from conftest import REPO, Workspace, mounts_under
from test_lifecycle import shell_recipe

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def printed(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """What `run` printed: path -> sha256."""
    return {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in result.stdout.splitlines()}


def test_a_byte_flipped_in_out_or_in_a_cached_build_is_never_shipped(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "flipped", 'head -c 65536 /dev/urandom > "$OUT/blob"\ncp /bin/true "$OUT/tool"')
    workspace.buildbox("run", recipe, "-q")
    out = workspace.root / "out" / "flipped"
    manifest = json.loads((out / "manifest.json").read_text())
    good = {rel: fact["sha256"] for rel, fact in manifest["artifacts"].items()}
    assert {rel: sha256(out / rel) for rel in good} == good

    flip_a_byte(out / "blob")   # the same size: only the content tells
    again = workspace.buildbox("run", recipe, "-q")
    assert sha256(out / "blob") == good["blob"]
    assert printed(again)[str(out / "blob")] == sha256(out / "blob")

    entry = workspace.cache / "builds" / manifest["key"] / "files"
    flip_a_byte(entry / "tool")
    flip_a_byte(out / "tool")
    rebuilt = workspace.buildbox("run", recipe, "-q")
    assert "is damaged: tool has sha256" in rebuilt.stderr and "building flipped again" in rebuilt.stderr
    assert sha256(out / "tool") == good["tool"] == sha256(entry / "tool")
    assert json.loads((out / "manifest.json").read_text())["artifacts"]["tool"]["sha256"] == good["tool"]


def test_gc_and_clean_refuse_a_directory_that_is_not_a_buildbox_cache(workspace: Workspace, tmp_path: Path) -> None:
    project = tmp_path / "project"
    for folder in ("sources", "builds", "logs"):
        (project / folder).mkdir(parents=True)
        (project / folder / "mine.txt").write_text("the user's\n")
    (project / "README").write_text("a project\n")
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    for args in (("gc", "--cache", project), ("clean", "--cache", project)):
        result = workspace.buildbox(*args, check=2)
        assert f"{project} is not a buildbox cache" in result.stderr.splitlines()[-1], result.stderr
    empty = subprocess.run([sys.executable, "-m", "buildbox", "gc"], cwd=project, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO), BUILDBOX_CACHE=""))
    assert empty.returncode == 2 and "$BUILDBOX_CACHE is set but empty" in empty.stderr, empty.stderr
    run = workspace.buildbox("run", shell_recipe(workspace, "anywhere", 'echo > "$OUT/x"'), "-q",
                             "--cache", project, check=2)
    assert f"{project} is not a buildbox cache: it holds README" in run.stderr, run.stderr
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*")) == before
    assert all((project / f / "mine.txt").read_text() == "the user's\n" for f in ("sources", "builds", "logs"))


def test_a_cache_made_before_markers_is_adopted_once_by_the_next_run(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "adopted", 'echo > "$OUT/x"')
    workspace.buildbox("run", recipe, "-q")
    assert (workspace.cache / CACHEDIR_TAG).read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55\n")
    (workspace.cache / MARKER).unlink()
    (workspace.cache / CACHEDIR_TAG).unlink()
    adopted = workspace.buildbox("run", recipe, "-q")
    assert f"marking {workspace.cache} as a buildbox cache" in adopted.stderr
    assert json.loads((workspace.cache / MARKER).read_text())["buildbox-cache"] is True
    assert "marking" not in workspace.buildbox("run", recipe, "-q").stderr


def test_out_name_is_replaced_only_where_buildbox_made_it(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "bin", 'echo built > "$OUT/tool"')
    mine = workspace.root / "out" / "bin"
    mine.mkdir(parents=True)
    (mine / "precious").write_text("the user's\n")
    result = workspace.buildbox("run", recipe, "-q", check=2)
    assert result.stderr.splitlines()[-1] == \
        "buildbox: error: out/bin exists and was not made by buildbox: move it or pick --out", result.stderr
    assert (mine / "precious").read_text() == "the user's\n"

    (mine / "precious").unlink()
    mine.rmdir()
    litter = workspace.root / "out" / ".bin.tmp-999999999"   # a run killed mid-install (no such pid)
    litter.mkdir()
    workspace.buildbox("run", recipe, "-q")
    assert (mine / "tool").read_text() == "built\n"
    assert not litter.exists()
    assert sorted(p.name for p in (workspace.root / "out").iterdir()) == ["bin"]


def test_nothing_is_deleted_across_a_mount_point(tmp_path: Path) -> None:
    tree = tmp_path / "entry"
    (tree / "inside").mkdir(parents=True)
    host = tmp_path / "host"
    host.mkdir()
    (host / "file").write_text("keep\n")
    subprocess.run(["mount", "--bind", host, tree / "inside"], check=True)
    try:
        with pytest.raises(BuildFailed) as refused:
            remove_tree(tree)
        assert "is mounted inside it" in str(refused.value)
    finally:
        subprocess.run(["umount", tree / "inside"], check=True)
    assert (host / "file").read_text() == "keep\n"
    remove_tree(tree)
    assert not tree.exists() and mounts_under(tmp_path) == []
