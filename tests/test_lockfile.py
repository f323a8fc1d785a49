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
from buildbox.pins import Pins
from buildbox.lock import load_recipe, lock_path, write_lock
from conftest import GOOD, REPO, write

COMMIT = "c" * 40
PINS = {"sets": ["a" * 64],
        "packages": {"bash": {"version": "5.2.15-2+b13", "arch": "amd64", "sha256": "1" * 64},
                     "golang-go": {"version": "2:1.19~1", "arch": "amd64", "sha256": "2" * 64}},
        "source": {"git": "https://example.org/hello.git", "commit": COMMIT}}


def locked(tmp_path: Path) -> Path:
    recipe = write(tmp_path, GOOD)
    write_lock(load_recipe(recipe), Pins.from_dict(PINS))
    return recipe


def test_a_sha256_repositorys_commit_is_a_good_pin(tmp_path: Path) -> None:
    recipe = locked(tmp_path)
    path = lock_path(recipe)
    path.write_text(path.read_text().replace(COMMIT, "d" * 64))
    assert load_recipe(recipe).lock.pins.source.commit == "d" * 64


def test_a_written_lock_reads_back_as_the_same_pins(tmp_path: Path) -> None:
    recipe = load_recipe(locked(tmp_path))
    assert recipe.lock is not None and recipe.lock.path == tmp_path / "hello.lock"
    assert recipe.lock.pins.as_dict() == PINS
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
    changes = write_lock(load_recipe(recipe, locked=False), Pins.from_dict(newer))
    assert changes == ["package git: added at 1:2.39.5-0+deb12u2", "package golang-go: 2:1.19~1 -> 2:1.19~2"]
    rewritten = path.read_text()
    assert rewritten.startswith("# nightly lock\n")
    assert "# ops: bash pinned for CVE review\nbash = {" in rewritten
    assert f'"{COMMIT}"  # release 1.0' in rewritten
    assert load_recipe(recipe).lock.pins.as_dict() == newer
    assert write_lock(load_recipe(recipe), Pins.from_dict(newer)) == []


@pytest.mark.parametrize("edit, line_of, words", [
    (lambda t: t.replace('"' + "a" * 64 + '"', '"abc"'), "sha256 = \"abc\"", "64 lowercase hex"),
    (lambda t: t.replace("format = 2", "format = 7"), "format = 7", "lock format 7"),
    (lambda t: t.replace('version = "5.2.15-2+b13", ', ""), "bash = ", "package 'bash' must be"),
    (lambda t: t.replace("commit = ", "comit = "), "[source]", "[source] must hold"),
    (lambda t: t.replace("[packages]", "[packages\n"), "[packages", "not valid TOML"),
    (lambda t: t.replace(COMMIT, "c" * 39), "commit = ", "not 40 or 64 lowercase hex digits"),
    (lambda t: t.replace(COMMIT, "C" * 40), "commit = ", "not 40 or 64 lowercase hex digits"),
    (lambda t: t.replace('"5.2.15-2+b13"', '"5.2.15_2"'), "bash = ",
     "package 'bash': version '5.2.15_2' is not a Debian version"),
    (lambda t: t.replace('"2:1.19~1", arch = "amd64"', '"2:1.19~1", arch = "../amd64"'), "golang-go = ",
     "package 'golang-go': arch '../amd64' is not a Debian architecture name"),
    (lambda t: t.replace("1" * 64, "A" * 64), "bash = ",
     f"package 'bash': sha256 '{'A' * 64}' is not 64 lowercase hex"),
    (lambda t: t.replace("\nbash = ", '\n"Bash" = '), '"Bash" = ', "'Bash' is not a Debian package name"),
    (lambda t: t.replace('"https://example.org/hello.git"\ncommit', '"--upload-pack=x"\ncommit'), "git = ",
     "[source] git '--upload-pack=x' is not a repository"),
])
def test_a_broken_lock_is_one_line_naming_its_line_and_how_to_rewrite_it(tmp_path: Path, edit, line_of: str,
                                                                         words: str) -> None:
    recipe = locked(tmp_path)
    path = lock_path(recipe)
    text = edit(path.read_text())
    path.write_text(text)
    refused_at(recipe, next(n for n, l in enumerate(text.splitlines(), 1) if l.startswith(line_of)), words)


DEBIAN = ('[source]\ndebian = "hello"\n[build]\nscript = "true"\n',
          {"debian": "hello", "version": "2.10-3", "dsc": "hello_2.10-3.dsc", "dsc-sha256": "3" * 64})
TARBALL = (f'[source]\nurl = "https://example.org/hello-2.10.tar.gz"\nsha256 = "{"e" * 64}"\n'
           '[build]\nscript = "true"\n',
           {"url": "https://example.org/hello-2.10.tar.gz", "sha256": "e" * 64})


@pytest.mark.parametrize("recipe, old, new, line_of, words", [
    (DEBIAN, "hello_2.10-3.dsc", "../hello_2.10-3.dsc", "dsc = ",
     "[source] dsc '../hello_2.10-3.dsc' is not the name of a .dsc"),
    (DEBIAN, "hello_2.10-3.dsc", "-x.dsc", "dsc = ", "[source] dsc '-x.dsc' is not the name of a .dsc"),
    (DEBIAN, '"2.10-3"', '"-2.10"', "version = ", "[source] version '-2.10' is not a Debian version"),
    (DEBIAN, 'debian = "hello"', 'debian = "-oAPT::X=1"', "debian = ",
     "[source] debian '-oAPT::X=1' is not a Debian source package name"),
    (TARBALL, 'url = "https', 'url = "-https', "url = ",
     "[source] url '-https://example.org/hello-2.10.tar.gz' is not a URL"),
])
def test_a_locked_sources_every_field_is_checked_on_its_line(tmp_path: Path, recipe: tuple[str, dict], old: str,
                                                            new: str, line_of: str, words: str) -> None:
    path = write(tmp_path, recipe[0])
    write_lock(load_recipe(path, locked=False), Pins.from_dict({**PINS, "source": recipe[1]}))
    lock = lock_path(path)
    start = lock.read_text().index("[source]")   # the edit is to [source], not to [request]
    text = lock.read_text()[:start] + lock.read_text()[start:].replace(old, new, 1)
    lock.write_text(text)
    refused_at(path, next(n for n, l in enumerate(text.splitlines(), 1) if l.startswith(line_of)), words)


def refused_at(recipe: Path, line: int, words: str) -> None:
    """Reading the recipe's lock fails on that line with those words; `buildbox` says so on one line, exit 2."""
    path = lock_path(recipe)
    with pytest.raises(InputError) as caught:
        load_recipe(recipe)
    assert caught.value.where == f"{path}:{line}"
    assert words in str(caught.value)
    if "not valid TOML" not in words:   # what TOML cannot parse is fixed by hand; the rest by a relock
        assert caught.value.hint == f"run `buildbox lock {recipe}` to rewrite it"
    result = subprocess.run([sys.executable, "-m", "buildbox", "list", recipe, "--cache", recipe.parent / "c"],
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
    write_lock(load_recipe(recipe), Pins.from_dict({**PINS, "source": {"url": "https://example.org/x.tar.gz", "sha256": old}}))
    assert load_recipe(recipe).lock.pins.source.sha256 == old
    recipe.write_text(recipe.read_text().replace(old, new))
    with pytest.raises(InputError, match=r"\[source\] changed since hello.lock was written"):
        load_recipe(recipe)


def list_keys(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "buildbox", "list", "--keys", "recipes/hello.toml",
                           "--cache", folder / "cache"], cwd=folder, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_a_format_1_lock_that_pins_a_bootstraps_tree_digest_is_refused_on_its_line(tmp_path: Path) -> None:
    """tests/data/lock-v1: a recipe on a bootstrap, and the lock buildbox 6c5877e wrote for it. Its
    set's digest is a tree digest of the old format, which no bootstrap made now can match."""
    shutil.copytree(REPO / "tests" / "data" / "lock-v1", tmp_path / "recipes")
    lock = Path("recipes/hello.lock")
    line = next(n for n, l in enumerate((tmp_path / lock).read_text().splitlines(), 1) if l.startswith("sha256 = "))
    result = list_keys(tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert f"{lock}:{line}: lock format 1 pins set 1 (a bootstrap) by a tree digest buildbox no longer " \
           f"computes; run `buildbox lock recipes/hello.toml` to rewrite it" in result.stderr, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_a_format_1_lock_that_pins_a_fetched_trees_digest_is_refused_on_its_line(tmp_path: Path) -> None:
    shutil.copytree(REPO / "tests" / "data" / "lock-v1-tarball", tmp_path / "recipes")
    recipe = tmp_path / "recipes" / "hello.toml"
    recipe.write_text(recipe.read_text() + '[fetch]\nscript = "go mod download"\n')
    write_lock(load_recipe(recipe, locked=False), Pins.from_dict({**V1_TARBALL_PINS, "fetch": "f" * 64}))
    lock = lock_path(recipe)
    lock.write_text(lock.read_text().replace("format = 2", "format = 1"))
    line = next(n for n, l in enumerate(lock.read_text().splitlines(), 1) if l.startswith("sha256 = " + '"f'))
    with pytest.raises(InputError) as caught:
        load_recipe(recipe)
    assert caught.value.where == f"{lock}:{line}"
    assert str(caught.value) == (f"{lock}:{line}: lock format 1 pins [fetch] by a tree digest buildbox no longer "
                                 f"computes; run `buildbox lock {recipe}` to rewrite it")


def test_a_format_1_lock_of_tarball_sets_reads_and_names_the_same_cache_entries(tmp_path: Path) -> None:
    """tests/data/lock-v1-tarball: a recipe on a tarball set, the lock buildbox wrote for it in
    lock format 1, and the stage keys that buildbox printed. A tarball's sha256 is its file's: the
    lock is as good as it was, reads as the same pins, and names the same entries."""
    shutil.copytree(REPO / "tests" / "data" / "lock-v1-tarball", tmp_path / "recipes")
    recipe = load_recipe(tmp_path / "recipes" / "hello.toml")
    assert recipe.lock and recipe.lock.pins.as_dict() == V1_TARBALL_PINS
    result = list_keys(tmp_path)
    assert result.returncode == 0, result.stderr
    # (Its build line changed once on purpose: the build key holds the epoch rule; README "Changes".)
    assert result.stdout == (REPO / "tests" / "data" / "lock-v1-tarball" / "keys.txt").read_text()
    # Rewritten, it is format 2, with nothing else changed.
    assert write_lock(recipe, recipe.lock.pins) == []
    assert "\nformat = 2\n" in recipe.lock.path.read_text()
    assert list_keys(tmp_path).stdout == result.stdout


V1_TARBALL_PINS = {
    "sets": ["4" * 64],
    "packages": {"git": {"version": "1:2.39.5-0+deb12u2", "arch": "amd64", "sha256": "1" * 64},
                 "golang-go": {"version": "2:1.19~1", "arch": "amd64", "sha256": "2" * 64},
                 "libc6": {"version": "2.36-9+deb12u10", "arch": "amd64", "sha256": "3" * 64}},
    "source": {"git": "https://example.org/hello.git", "commit": "c" * 40}}


def test_a_fetch_digest_is_locked_and_a_changed_fetch_script_makes_the_lock_stale(tmp_path: Path) -> None:
    recipe = write(tmp_path, GOOD + '[fetch]\nscript = "go mod download"\n')
    changes = write_lock(load_recipe(recipe, locked=False), Pins.from_dict({**PINS, "fetch": "f" * 64}))
    assert f"fetch: sha256 none -> {'f' * 12}…" in changes
    assert load_recipe(recipe).lock.pins.fetch == "f" * 64
    assert "[fetch]" in lock_path(recipe).read_text()
    assert write_lock(load_recipe(recipe), Pins.from_dict({**PINS, "fetch": "e" * 64})) == [f"fetch: sha256 {'f' * 12}… -> {'e' * 12}…"]

    recipe.write_text(recipe.read_text().replace("go mod download", "go mod download -x"))
    with pytest.raises(InputError) as caught:
        load_recipe(recipe)
    assert "[fetch] changed since hello.lock was written" in caught.value.message
    assert caught.value.where == f"{recipe}:{len(GOOD.splitlines()) + 1}"

    # A lock of a recipe without [fetch] is as it was: no [fetch] table, no fetch request.
    plain = write(tmp_path / "plain", GOOD) if (tmp_path / "plain").mkdir() is None else None
    write_lock(load_recipe(plain, locked=False), Pins.from_dict(PINS))
    assert "fetch" not in lock_path(plain).read_text()
