"""Interrupts, parallel runs, --keep and list: the box's life from the outside."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, Workspace, mounts_under, shell_recipe

pytestmark = pytest.mark.integration


def test_ctrl_c_during_a_build_stops_it_kills_its_processes_and_undoes_every_mount(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "sleepy", 'echo "now sleeping"\nsleep 3603\n')
    proc = subprocess.Popen([sys.executable, "-m", "buildbox", "run", str(recipe), "--cache", str(workspace.cache)],
                            cwd=workspace.root, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "now sleeping" in line:
            break
    assert mounts_under(workspace.cache), "the build box should be mounted while it builds"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=30)
    assert time.monotonic() - started < 15
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert mounts_under(workspace.cache) == []
    assert list((workspace.cache / "boxes").iterdir()) == []
    assert subprocess.run(["pgrep", "-f", "sleep 3603"], capture_output=True).returncode == 1, "build process left"
    assert not list((workspace.cache / "builds").glob(".tmp-*")), "half an entry was left"


def test_two_recipes_build_in_parallel_with_j2(workspace: Workspace) -> None:
    script = 'date +%s.%N > "$OUT/start"\nsleep 3\ndate +%s.%N > "$OUT/end"'
    first = shell_recipe(workspace, "par-a", script)
    second = shell_recipe(workspace, "par-b", script + "\n# b")
    workspace.buildbox("run", "-j", "2", first, second, "-q")
    out = workspace.root / "out"
    a = [float((out / "par-a" / f).read_text()) for f in ("start", "end")]
    b = [float((out / "par-b" / f).read_text()) for f in ("start", "end")]
    assert a[0] < b[1] and b[0] < a[1], "the two builds did not overlap"


def test_list_tells_up_to_date_from_needing_a_build(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "listed", 'echo hi > "$OUT/hi"')
    assert "needs a build" in workspace.buildbox("list", recipe).stdout
    workspace.buildbox("run", recipe, "-q")
    assert "up to date" in workspace.buildbox("list", recipe).stdout
    recipe.write_text(recipe.read_text().replace("echo hi", "echo hello"))
    assert "needs a build" in workspace.buildbox("list", recipe).stdout


def test_keep_leaves_the_box_for_inspection_and_says_where(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "kept", 'echo inside > "$OUT/file"\necho scratch > "$HOME/scratch"')
    result = workspace.buildbox("run", recipe, "--keep", "-q")
    kept = [line for line in result.stderr.splitlines() if "kept the box" in line]
    assert kept, result.stderr
    box = next(Path(m) for m in mounts_under(workspace.cache) if m.endswith("/root"))
    try:
        assert (box / "home/builder/scratch").read_text() == "scratch\n"
        assert (box / "build/out/file").read_text() == "inside\n"
    finally:
        subprocess.run(["umount", box], check=True)
        subprocess.run(["umount", box.parent / "disk"], check=True)   # its upper layer's disk
        shutil.rmtree(box.parent)


def test_a_recipe_outside_recipes_builds_with_the_shipped_base(workspace: Workspace, tmp_path: Path) -> None:
    written = shell_recipe(workspace, "loose", 'echo loose > "$OUT/loose"')
    loose = tmp_path / "somewhere" / "loose.toml"
    loose.parent.mkdir()
    loose.write_text(written.read_text())
    written.unlink()
    shutil.rmtree(workspace.root / "recipes")   # no ./recipes/base/ either
    workspace.buildbox("run", loose, "-q")
    assert (workspace.root / "out" / "loose" / "loose").read_text() == "loose\n"
