"""Locks for real: `buildbox lock`, locked runs on this cache and on a new one, pins the archive
no longer has, and `run --refresh`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import HELLO_GO, Workspace, git, go_recipe, go_repo, ran, shell_recipe

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lock_line(lock: Path, prefix: str) -> int:
    return next(n for n, line in enumerate(lock.read_text().splitlines(), 1) if line.startswith(prefix))


def test_a_locked_go_build_keeps_its_commit_and_reproduces_its_sha256_on_another_cache(
        workspace: Workspace, tmp_path: Path) -> None:
    repo = go_repo(tmp_path / "hello")
    first_commit = git(repo, "rev-parse", "HEAD")
    recipe = go_recipe(workspace, repo)

    result = workspace.buildbox("lock", recipe)
    lock = recipe.with_suffix(".lock")
    assert f"wrote {lock}: 1 set(s)" in result.stdout
    data = tomllib.loads(lock.read_text())
    assert data["source"] == {"git": str(repo), "commit": first_commit}
    assert len(data["set"]) == 1 and len(data["set"][0]["sha256"]) == 64
    for name in ("golang-go", "git", "libc6", "dpkg"):
        pin = data["packages"][name]
        assert pin["version"] and pin["arch"] in ("amd64", "all") and len(pin["sha256"]) == 64, (name, pin)

    run = workspace.buildbox("run", recipe, "-q")
    assert ran(run) >= {"source", "build", "out"}
    assert "layer" not in ran(run), "the lock's own install is reused, not made again"
    binary = workspace.root / "out" / "hello" / "hello"
    digest = sha256(binary)
    manifest = json.loads((binary.parent / "manifest.json").read_text())
    assert manifest["inputs"]["packages"] == data["packages"]
    assert manifest["inputs"]["lock"] == str(lock)
    assert manifest["inputs"]["sets"] == [data["set"][0]["sha256"]]

    # The branch moves on; the locked build does not.
    (repo / "main.go").write_text(HELLO_GO % "a later commit")
    git(repo, "commit", "-qam", "later")
    assert ran(workspace.buildbox("run", recipe, "-q")) == set()
    assert subprocess.run([binary], capture_output=True, text=True).stdout == "hello from buildbox\n"

    # Another machine: an empty cache, only the recipe and its lock. Same bits.
    other = tmp_path / "other-cache"
    elsewhere = workspace.buildbox("run", recipe, "-q", "--cache", other, "--out", tmp_path / "other-out")
    assert ran(elsewhere) == {"set", "base", "layer", "source", "build", "out"}, elsewhere.stderr
    assert sha256(tmp_path / "other-out" / "hello" / "hello") == digest
    theirs = json.loads((tmp_path / "other-out" / "hello" / "manifest.json").read_text())
    assert theirs["inputs"]["packages"] == data["packages"] and theirs["key"] == manifest["key"]

    # --refresh resolves the ref again and says what moved.
    refreshed = workspace.buildbox("run", recipe, "-q", "--refresh")
    assert f"source: commit {first_commit[:12]} -> commit {git(repo, 'rev-parse', 'HEAD')[:12]}" in refreshed.stdout
    assert tomllib.loads(lock.read_text())["source"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert subprocess.run([binary], capture_output=True, text=True).stdout == "hello from a later commit\n"


def test_pins_the_archive_no_longer_has_fail_on_their_lock_line_unless_the_cache_holds_the_deb(
        workspace: Workspace, tmp_path: Path) -> None:
    recipe = shell_recipe(workspace, "greeter", 'cp /usr/bin/hello "$OUT/"\n'
                          'if [ -e /usr/share/buildbox-test/x ]; then cp /usr/share/buildbox-test/x "$OUT/"; fi')
    recipe.write_text('[packages]\ninstall = ["hello"]\n' + recipe.read_text())
    workspace.buildbox("lock", recipe)
    lock = recipe.with_suffix(".lock")
    good = lock.read_text()
    layers = workspace.cache / "layers"
    before = sorted(layers.iterdir())

    # A version the archive never had (as after a point release replaced it).
    lock.write_text(good.replace('hello = {version = "', 'hello = {version = "9.99-1~'))
    result = workspace.buildbox("run", recipe, "-q", check=2)
    error = result.stderr.strip().splitlines()[-1]
    assert f"{lock}:{lock_line(lock, 'hello = ')}: hello 9.99-1~" in error, result.stderr
    assert "no longer in the archive" in error and "--refresh" in error
    assert sorted(layers.iterdir()) == before, "no layer, not even half of one, was kept"

    # A package no archive has, but whose pinned .deb is in the cache: installed from there.
    deb = make_deb(tmp_path / "pkg", workspace.cache / "debs")
    pinned = f'buildbox-test = {{ version = "1.0", arch = "all", sha256 = "{sha256(deb)}" }}\n'
    lock.write_text(good.replace("[packages]\n", "[packages]\n" + pinned))
    workspace.buildbox("run", recipe, "-q")
    assert (workspace.root / "out" / "greeter" / "x").read_text() == "from the cache\n"
    # The same name with other bytes pinned: the cached file is not taken, and the archive has none.
    lock.write_text(good.replace("[packages]\n", "[packages]\n" + pinned.replace(sha256(deb), "0" * 64)))
    result = workspace.buildbox("run", recipe, "-q", check=2)
    assert f"{lock}:{lock_line(lock, 'buildbox-test')}: buildbox-test 1.0" in result.stderr

    # A bootstrap that no longer comes out as locked: named on the set's line, nothing kept.
    lock.write_text(good.replace(tomllib.loads(good)["set"][0]["sha256"], "e" * 64))
    bootstraps = sorted((workspace.cache / "bootstraps").iterdir())
    result = workspace.buildbox("run", recipe, "-q", check=2)
    assert f"{lock}:{lock_line(lock, 'sha256 = ' + chr(34) + 'e')}: mmdebstrap now makes " \
           f"bookworm with sha256" in result.stderr, result.stderr
    assert sorted((workspace.cache / "bootstraps").iterdir()) == bootstraps


def make_deb(folder: Path, debs: Path) -> Path:
    """A one-file package that no archive has, put in the cache's .deb folder as apt names it."""
    (folder / "DEBIAN").mkdir(parents=True)
    (folder / "DEBIAN" / "control").write_text("Package: buildbox-test\nVersion: 1.0\nArchitecture: all\n"
                                               "Maintainer: t <t@example.invalid>\nDescription: a test\n")
    (folder / "usr/share/buildbox-test").mkdir(parents=True)
    (folder / "usr/share/buildbox-test/x").write_text("from the cache\n")
    deb = debs / "buildbox-test_1.0_all.deb"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", folder, deb], check=True, capture_output=True)
    return deb


def test_a_refresh_relocks_a_changed_recipe_keeping_the_comments(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "tools", 'cp /usr/bin/hello "$OUT/"')
    recipe.write_text('[packages]\ninstall = ["hello"]\n' + recipe.read_text())
    workspace.buildbox("lock", recipe)
    lock = recipe.with_suffix(".lock")
    lock.write_text("# reviewed by ops\n" + lock.read_text().replace("\nhello = ", "\n# our tool\nhello = "))

    recipe.write_text(recipe.read_text().replace('["hello"]', '["hello", "file"]'))
    result = workspace.buildbox("run", recipe, "-q", check=2)
    assert f"{recipe}:1: [packages] install changed since tools.lock was written" in result.stderr, result.stderr
    assert f"buildbox lock {recipe}" in result.stderr

    refreshed = workspace.buildbox("run", recipe, "-q", "--refresh")
    assert "package file: added at " in refreshed.stdout
    text = lock.read_text()
    assert text.startswith("# reviewed by ops\n") and "\n# our tool\nhello = " in text
    assert tomllib.loads(text)["request"]["install"] == ["file", "hello"]
    assert "file" in json.loads((workspace.root / "out/tools/manifest.json").read_text())["inputs"]["packages"]
