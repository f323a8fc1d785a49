"""Why each stage ran: one line per stage, in fixed words, from the key document kept beside the
entry it last stood on; and `buildbox list`, offline and read-only, saying the same."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, Workspace, git, go_repo, mounts_under, shell_recipe

pytestmark = pytest.mark.integration


def why_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines()
            if ": first build" in line or ": rebuilding: " in line]


def test_each_stage_that_runs_says_why_in_fixed_words_on_the_terminal_in_its_log_and_in_list(
        workspace: Workspace) -> None:
    name = f"why{uuid.uuid4().hex[:8]}"   # a recipe this cache has never seen
    recipe = shell_recipe(workspace, name, 'echo one > "$OUT/x"')
    first = workspace.buildbox("run", recipe, "-q")
    assert f"build {name}: first build" in why_lines(first)
    log = workspace.cache / "logs" / name / "build.log"
    assert log.read_text().splitlines()[0] == f"buildbox: build {name}: first build"

    recipe.write_text(recipe.read_text().replace("echo one", "echo two"))
    listed = workspace.buildbox("list", recipe).stdout
    assert f"why: build {name}: rebuilding: script changed" in listed
    second = workspace.buildbox("run", recipe, "-q")
    assert why_lines(second) == [f"build {name}: rebuilding: script changed"]
    assert log.read_text().splitlines()[0] == f"buildbox: build {name}: rebuilding: script changed"

    text = recipe.read_text().replace("[build]\n", '[build]\nenv = { GREETING = "hi" }\n')
    recipe.write_text(text + '[limits]\nfiles = 2048\n')
    assert why_lines(workspace.buildbox("run", recipe, "-q")) == [
        f"build {name}: rebuilding: env changed; limits changed"]

    # Nothing changed: nothing runs, nothing is said.
    assert why_lines(workspace.buildbox("run", recipe, "-q")) == []

    # The entry went (fsck --repair, gc): its key is the same, and the line says so.
    key = workspace.buildbox("list", "--keys", recipe).stdout.split(f"build {name} ")[1].split()[0]
    subprocess.run(["rm", "-rf", workspace.cache / "builds" / key], check=True)
    assert why_lines(workspace.buildbox("run", recipe, "-q")) == [f"build {name}: rebuilding: cache entry gone"]


def copying_recipe(ws: Workspace, name: str, repo: Path) -> Path:
    """A recipe whose build copies its git source's main.go: a source stage that is cheap to redo."""
    return ws.recipe(name, f"""\
        [packages]
        install = ["git", "golang-go"]
        [source]
        git = "{repo}"
        ref = "main"
        [build]
        script = 'cp main.go "$OUT/"'
        """)


def test_a_new_commit_is_named_as_the_reason_for_the_source_and_the_build(
        workspace: Workspace, tmp_path: Path) -> None:
    repo = go_repo(tmp_path / "repo", greeting=uuid.uuid4().hex)
    name = f"why{uuid.uuid4().hex[:8]}"
    recipe = copying_recipe(workspace, name, repo)
    old = git(repo, "rev-parse", "HEAD")
    workspace.buildbox("run", recipe, "-q")
    (repo / "main.go").write_text((repo / "main.go").read_text() + "// later\n")
    git(repo, "commit", "-qam", "later")
    new = git(repo, "rev-parse", "HEAD")
    lines = why_lines(workspace.buildbox("run", recipe, "-q"))
    assert lines == [f"source {name}: rebuilding: commit {new[:7]} (was {old[:7]})",
                     f"build {name}: rebuilding: commit {new[:7]} (was {old[:7]})"]


def test_list_is_offline_read_only_and_takes_no_lock_while_a_run_holds_the_cache(
        workspace: Workspace, tmp_path: Path) -> None:
    repo = go_repo(tmp_path / "repo", greeting=uuid.uuid4().hex)
    name = f"list{uuid.uuid4().hex[:8]}"
    recipe = copying_recipe(workspace, name, repo)
    workspace.buildbox("run", recipe, "-q")
    resolved = git(repo, "rev-parse", "HEAD")
    (repo / "main.go").write_text("// moved on\n")
    git(repo, "commit", "-qam", "moved")   # the branch moves; list cannot know without going online

    # A run holds the cache (exclusively here: a lock list took would block it for good).
    lock = open(workspace.cache / "locks" / "in-use.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    seen: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(mounts_under(workspace.cache))
            time.sleep(0.005)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = subprocess.run(["unshare", "-n", sys.executable, "-m", "buildbox", "list", recipe,
                                 "--cache", workspace.cache], cwd=workspace.root, capture_output=True, text=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    finally:
        done.set()
        watcher.join()
        lock.close()
    assert result.returncode == 0, result.stderr
    assert seen == set(), f"list mounted {seen}"
    line = next(line for line in result.stdout.splitlines() if line.startswith(name))
    assert "up to date" in line
    assert f"ref main taken at {resolved[:12]}" in result.stdout and "may have moved" in result.stdout
    assert "waiting" not in result.stderr
