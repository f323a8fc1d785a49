"""Lock files on their own (no root): what is written, what is kept on a rewrite, what is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from buildbox.errors import InputError
from buildbox.lock import load_recipe, lock_path, write_lock
from conftest import GOOD, REPO, write

COMMIT = "c" * 40
PINS = {"sets": ["a" * 64],
        "packages": {"bash": {"version": "5.2.15-2+b13", "arch": "amd64", "sha256": "1" * 64},
                     "golang-go": {"version": "2:1.19~1", "arch": "amd64", "sha256": "2" * 64}},
        "source": {"git": "https://example.org/hello.git", "commit": COMMIT}}


def locked(tmp_path: Path) -> Path:
    recipe = write(tmp_path, GOOD)
    write_lock(load_recipe(recipe), PINS)
    return recipe


def test_a_sha256_repositorys_commit_is_a_good_pin(tmp_path: Path) -> None:
    recipe = locked(tmp_path)
    path = lock_path(recipe)
    path.write_text(path.read_text().replace(COMMIT, "d" * 64))
    assert load_recipe(recipe).lock.pins["source"]["commit"] == "d" * 64


def test_a_written_lock_reads_back_as_the_same_pins(tmp_path: Path) -> None:
    recipe = load_recipe(locked(tmp_path))
    assert recipe.lock is not None and recipe.lock.path == tmp_path / "hello.lock"
    assert recipe.lock.pins == PINS
    data = tomllib.loads((tmp_path / "hello.lock").read_text())
    assert data["request"]["install"] == ["git", "golang-go"]
    assert data["packages"]["golang-go"] == {"version": "2:1.19~1", "arch": "amd64", "sha256": "2" * 64}
    # Each package on a line of its own, so that an error can name it.
    text = (tmp_path / "hello.lock").read_text().splitlines()
    assert recipe.lock.at("golang-go") == f"{tmp_path / 'hello.lock'}:{text.index(next(l for l in text if l.startswith('golang-go'))) + 1}"


def test_a_rewrite_keeps_comments_and_reports_what_changed(tmp_path: Path) -> None:
    recipe = locked(tmp_path)
    path = lock_path(recipe)
    text = path.read_text().replace("bash = {", "# ops: bash pinned for CVE review\nbash = {")
    path.write_text("# nightly lock\n" + text.replace(f'"{COMMIT}"', f'"{COMMIT}"  # release 1.0'))
    newer = {**PINS, "packages": {**PINS["packages"], "golang-go": {"version": "2:1.19~2", "arch": "amd64",
                                                                     "sha256": "3" * 64},
                                  "git": {"version": "1:2.39.5-0+deb12u2", "arch": "amd64", "sha256": "4" * 64}}}
    changes = write_lock(load_recipe(recipe, locked=False), newer)
    assert changes == ["package git: added at 1:2.39.5-0+deb12u2", "package golang-go: 2:1.19~1 -> 2:1.19~2"]
    rewritten = path.read_text()
    assert rewritten.startswith("# nightly lock\n")
    assert "# ops: bash pinned for CVE review\nbash = {" in rewritten
    assert f'"{COMMIT}"  # release 1.0' in rewritten
    assert load_recipe(recipe).lock.pins == newer
    assert write_lock(load_recipe(recipe), newer) == []


@pytest.mark.parametrize("edit, line_of, words", [
    (lambda t: t.replace('"' + "a" * 64 + '"', '"abc"'), "sha256 = \"abc\"", "64 lowercase hex"),
    (lambda t: t.replace("format = 1", "format = 7"), "format = 7", "lock format 7"),
    (lambda t: t.replace('version = "5.2.15-2+b13", ', ""), "bash = ", "package 'bash' must be"),
    (lambda t: t.replace("commit = ", "comit = "), "[source]", "[source] must hold"),
    (lambda t: t.replace("[packages]", "[packages\n"), "[packages", "not valid TOML"),
    (lambda t: t.replace(COMMIT, "c" * 39), "commit = ", "not 40 or 64 lowercase hex digits"),
    (lambda t: t.replace(COMMIT, "C" * 40), "commit = ", "not 40 or 64 lowercase hex digits"),
])
def test_a_broken_lock_is_one_line_naming_its_line_and_how_to_rewrite_it(tmp_path: Path, edit, line_of: str,
                                                                         words: str) -> None:
    recipe = locked(tmp_path)
    path = lock_path(recipe)
    text = edit(path.read_text())
    path.write_text(text)
    line = next(n for n, l in enumerate(text.splitlines(), 1) if l.startswith(line_of))
    with pytest.raises(InputError) as caught:
        load_recipe(recipe)
    assert caught.value.where == f"{path}:{line}"
    assert words in str(caught.value)
    result = subprocess.run([sys.executable, "-m", "buildbox", "list", str(recipe), "--cache", str(tmp_path / "c")],
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert f"{path}:{line}:" in result.stderr and "Traceback" not in result.stderr


def test_a_lock_for_what_the_recipe_no_longer_asks_is_refused_at_the_recipe_line(tmp_path: Path) -> None:
    recipe = locked(tmp_path)
    recipe.write_text(recipe.read_text().replace('"git", "golang-go"', '"git", "golang-go", "file"'))
    with pytest.raises(InputError) as caught:
        load_recipe(recipe)
    assert caught.value.where == f"{recipe}:2"   # [packages]
    assert "[packages] install changed since hello.lock was written" in str(caught.value)
    assert f"buildbox lock {recipe}" in str(caught.value)
    assert load_recipe(recipe, locked=False).lock is None


def test_a_new_digest_in_the_recipe_makes_its_lock_stale(tmp_path: Path) -> None:
    old, new = "a" * 64, "b" * 64
    recipe = write(tmp_path, f'[source]\nurl = "https://example.org/x.tar.gz"\nsha256 = "{old}"\n'
                             '[build]\nscript = "true"\n')
    write_lock(load_recipe(recipe), {**PINS, "source": {"url": "https://example.org/x.tar.gz", "sha256": old}})
    assert load_recipe(recipe).lock.pins["source"]["sha256"] == old
    recipe.write_text(recipe.read_text().replace(old, new))
    with pytest.raises(InputError, match=r"\[source\] changed since hello.lock was written"):
        load_recipe(recipe)


def test_a_lock_written_before_the_portable_keys_reads_and_names_the_same_cache_entries(tmp_path: Path) -> None:
    """tests/data/lock-v1: a recipe, the lock buildbox 6c5877e wrote for it, and the stage keys
    that version printed. The same keys now: the entries a cache made from that lock are used as
    they are, so the lock builds the same bits."""
    shutil.copytree(REPO / "tests" / "data" / "lock-v1", tmp_path / "recipes")
    recipe = load_recipe(tmp_path / "recipes" / "hello.toml")
    assert recipe.lock and recipe.lock.pins["source"]["commit"] == "c" * 40
    result = subprocess.run([sys.executable, "-m", "buildbox", "list", "--keys", "recipes/hello.toml",
                             "--cache", tmp_path / "cache"], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "tests" / "data" / "lock-v1" / "keys.txt").read_text()


def test_a_fetch_digest_is_locked_and_a_changed_fetch_script_makes_the_lock_stale(tmp_path: Path) -> None:
    recipe = write(tmp_path, GOOD + '[fetch]\nscript = "go mod download"\n')
    changes = write_lock(load_recipe(recipe, locked=False), {**PINS, "fetch": "f" * 64})
    assert f"fetch: sha256 none -> {'f' * 12}…" in changes
    assert load_recipe(recipe).lock.pins["fetch"] == "f" * 64
    assert "[fetch]" in lock_path(recipe).read_text()
    assert write_lock(load_recipe(recipe), {**PINS, "fetch": "e" * 64}) == [f"fetch: sha256 {'f' * 12}… -> {'e' * 12}…"]

    recipe.write_text(recipe.read_text().replace("go mod download", "go mod download -x"))
    with pytest.raises(InputError) as caught:
        load_recipe(recipe)
    assert "[fetch] changed since hello.lock was written" in caught.value.message
    assert caught.value.where == f"{recipe}:{len(GOOD.splitlines()) + 1}"

    # A lock of a recipe without [fetch] is as it was: no [fetch] table, no fetch request.
    plain = write(tmp_path / "plain", GOOD) if (tmp_path / "plain").mkdir() is None else None
    write_lock(load_recipe(plain, locked=False), PINS)
    assert "fetch" not in lock_path(plain).read_text()
