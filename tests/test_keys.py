"""Stage keys are facts about inputs: any one input changes them, no host fact does, and their
format is pinned. No root, no mounts, no network."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
from pathlib import Path


from buildbox import keys
from buildbox.lock import load_recipe, write_lock
from buildbox.store import Store
from buildbox.pins import GitPin, Pins, TarballPin, source_pin
from buildbox.tasks import Graph
from conftest import GOOD, write

PINS = {"sets": ["a" * 64],
        "packages": {"git": {"version": "1:2.39.5-0+deb12u2", "arch": "amd64", "sha256": "1" * 64},
                     "golang-go": {"version": "2:1.19~1", "arch": "amd64", "sha256": "2" * 64}},
        "source": {"git": "https://example.org/hello.git", "commit": "c" * 40}}


def locked_recipe(folder: Path, text: str = GOOD):
    folder.mkdir(parents=True, exist_ok=True)
    recipe = write(folder, text)
    write_lock(load_recipe(recipe), P(PINS))
    return load_recipe(recipe)


def all_keys(recipe, cache: Path) -> list[tuple[str, str | None]]:
    return [(stage.name, stage.key if isinstance(stage.key, str) else None)
            for stage in Graph(Store(cache), [recipe], Path("out")).stages(recipe).values()]


def P(pins: dict) -> Pins:
    return Pins.from_dict(pins)


def test_the_build_key_changes_with_any_one_input(tmp_path: Path) -> None:
    recipe = locked_recipe(tmp_path)
    key = keys.build_key(P(PINS), recipe)
    changed_pins = [
        {**PINS, "sets": ["b" * 64]},
        {**PINS, "packages": {**PINS["packages"], "git": {**PINS["packages"]["git"], "version": "1:2.39.5-0+deb12u3"}}},
        {**PINS, "packages": {**PINS["packages"], "git": {**PINS["packages"]["git"], "sha256": "3" * 64}}},
        {**PINS, "source": {**PINS["source"], "commit": "d" * 40}},
    ]
    changed_recipes = [
        dataclasses.replace(recipe, script=recipe.script + "true\n"),
        dataclasses.replace(recipe, env=(("CGO_ENABLED", "1"),)),
        dataclasses.replace(recipe, static=not recipe.static),
        dataclasses.replace(recipe, verify_run=("hello --version",)),
        dataclasses.replace(recipe, limits=dataclasses.replace(recipe.limits, memory=1 << 30)),
        dataclasses.replace(recipe, network=True),
        dataclasses.replace(recipe, secret_env=("API_TOKEN",)),
    ]
    others = [keys.build_key(P(pins), recipe) for pins in changed_pins] + \
        [keys.build_key(P(PINS), changed) for changed in changed_recipes]
    assert key not in others and len(set(others)) == len(others)


def test_every_stage_key_changes_with_what_that_stage_stands_on(tmp_path: Path) -> None:
    base = keys.base_key([keys.set_key(load_recipe(write(tmp_path, GOOD)).base.sets[0], "a" * 64)])
    assert base != keys.base_key([keys.set_key(load_recipe(write(tmp_path, GOOD)).base.sets[0], "b" * 64)])
    layer = keys.layer_key(base, packages=P(PINS).packages)
    assert layer != keys.layer_key(base, packages=P({**PINS, "packages": {"git": PINS["packages"]["git"]}}).packages)
    assert layer != keys.layer_key("0" * 64, packages=P(PINS).packages)
    assert keys.source_key(GitPin("x", "c" * 40)) != keys.source_key(GitPin("x", "d" * 40))


def test_no_host_fact_changes_a_key(tmp_path: Path) -> None:
    first = all_keys(locked_recipe(tmp_path / "checkout-a"), tmp_path / "cache-a")
    # Another checkout, another cache, another umask; a local repository somewhere else on that host.
    elsewhere = tmp_path / "somewhere" / "else" / "checkout-b"
    shutil.copytree(tmp_path / "checkout-a", elsewhere)
    old = os.umask(0o077)
    try:
        second = all_keys(load_recipe(elsewhere / "hello.toml"), tmp_path / "cache-b")
    finally:
        os.umask(old)
    assert first == second and all(key for _, key in first)
    moved = keys.build_key(P({**PINS, "source": {"git": "/srv/elsewhere/hello", "commit": "c" * 40}}),
                           load_recipe(elsewhere / "hello.toml"))
    assert moved == dict(first)["build"]
    document = str(keys.build_document(P(PINS), load_recipe(elsewhere / "hello.toml")))
    for fact in (str(tmp_path), socket.gethostname(), str(os.getuid())):
        assert fact not in document or fact == "0"


def test_the_key_format_is_pinned(tmp_path: Path) -> None:
    # Change on purpose only, with keys.FORMAT bumped: every cache entry is made again once.
    stages = dict(all_keys(locked_recipe(tmp_path), tmp_path / "cache"))
    assert keys.FORMAT == 4
    assert stages == GOLDEN, stages


GOLDEN = {
    "set1": "09eb35bfba965d778ca56b1492a306282d6687d6d3a6730b33f4087fbe2611fa",
    "base": "a1bcd4878908f5bc1554d1f609dd66eac69f7b3ef43c9c1145b37f952e4ec9b4",
    "layer": "9729335b70a1b862373b7a8a8c9fa2a775b60a0c04868c807e008576c9b47064",
    "source": "d5aa43b9d50c8b94f8a229b2a6c29791956644fb138177b7e693101813c9dd7b",
    # build: changed once on purpose, by the epoch rule in its document (README, "Changes").
    "build": "4943e0f6c6eb2abb35828d0a1120145431c26e79e8dbeb0d6622a5c17262ac12",
}


def test_list_keys_prints_the_same_keys_in_two_checkouts_with_two_caches(tmp_path: Path) -> None:
    import subprocess
    import sys
    from test_recipe import REPO
    locked_recipe(tmp_path / "checkout-a")
    shutil.copytree(tmp_path / "checkout-a", tmp_path / "other" / "checkout-b")
    printed = []
    for checkout, cache in (("checkout-a", "cache-a"), ("other/checkout-b", "cache-b")):
        result = subprocess.run([sys.executable, "-m", "buildbox", "list", "--keys", "hello.toml",
                                 "--cache", str(tmp_path / cache)], cwd=tmp_path / checkout, capture_output=True,
                                text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        printed.append(result.stdout)
    assert printed[0] == printed[1]
    assert printed[0].splitlines() == [f"{stage} hello {key}" for stage, key in GOLDEN.items()]
    assert not (tmp_path / "cache-b").exists(), "list made a cache"


def test_the_reasons_name_each_difference_between_two_key_documents_in_fixed_words(tmp_path: Path) -> None:
    recipe = locked_recipe(tmp_path)
    old = keys.build_document(P(PINS), recipe)
    libc = {"version": "2.36-9+deb12u9", "arch": "amd64", "sha256": "4" * 64}
    newer = {**PINS, "sets": ["b" * 64], "source": {**PINS["source"], "commit": "d" * 40},
             "packages": {"git": PINS["packages"]["git"],
                          "golang-go": {**PINS["packages"]["golang-go"], "version": "2:1.19~2"},
                          "libc6": libc}}
    changed = dataclasses.replace(recipe, script="other\n", env=(("A", "1"),),
                                  limits=dataclasses.replace(recipe.limits, files=99), network=True)
    assert keys.reasons(old, keys.build_document(P(newer), changed)) == [
        "set 1 changed", "package golang-go 2:1.19~1 -> 2:1.19~2", "package libc6 added 2.36-9+deb12u9",
        f"commit {'d' * 7} (was {'c' * 7})", "env changed", "limits changed", "network changed", "script changed"]
    fewer = {**PINS, "packages": {"golang-go": PINS["packages"]["golang-go"]}}
    assert keys.reasons(old, keys.build_document(P(fewer), recipe)) == [
        "package git removed (was 1:2.39.5-0+deb12u2)"]
    assert keys.reasons(old, old) == []

    layer = keys.layer_document("e" * 64, packages=P({**PINS, "packages": {"libc6": libc}}).packages)
    upgraded = keys.layer_document("e" * 64, packages=P({**PINS, "packages": {"libc6": {**libc, "version": "2.36-9+deb12u10"}}}).packages)
    assert keys.reasons(layer, upgraded) == ["package libc6 2.36-9+deb12u9 -> 2.36-9+deb12u10"]
    assert keys.reasons(layer, keys.layer_document("f" * 64, packages=P({**PINS, "packages": {"libc6": libc}}).packages)) == ["base changed"]
    asked = keys.layer_document("e" * 64, install=("git",))
    assert keys.reasons(asked, keys.layer_document("e" * 64, install=("git", "make"))) == ["install changed"]
    assert keys.reasons(keys.base_document(["a" * 64, "b" * 64]), keys.base_document(["a" * 64, "c" * 64])) == [
        "set 2 changed"]
    tarball = keys.source_document(TarballPin("/x.tar", "1" * 64))
    assert keys.reasons(tarball, keys.source_document(TarballPin("/y.tar", "2" * 64))) == [
        f"tarball sha256 {'2' * 12} (was {'1' * 12})"]
    debian = {"debian": "caddy", "version": "2.6.2-5", "dsc": "caddy_2.6.2-5.dsc", "dsc-sha256": "3" * 64}
    assert keys.reasons(keys.source_document(source_pin(debian)),
                       keys.source_document(source_pin({**debian, "version": "2.6.2-6"}))) == [
        "debian source caddy 2.6.2-6 (was 2.6.2-5)"]
    assert keys.reasons({**old, "format": 3}, old) == [f"key format 3 -> {keys.FORMAT}"]


def test_the_build_key_says_where_the_epoch_comes_from_by_the_kind_of_source(tmp_path: Path) -> None:
    # A Debian source builds at its changelog's date, a git one at its commit's: the rule is in the
    # key (the date itself is the source's, which its pin keys), the fixed epoch for the rest.
    digest = "a" * 64
    rules = {}
    for name, source in (("deb", 'debian = "hello"'), ("gitted", 'git = "https://example.org/x.git"'),
                         ("tarred", f'url = "https://example.org/x.tar"\nsha256 = "{digest}"')):
        recipe = load_recipe(write(tmp_path, f"[source]\n{source}\n[build]\nscript = 'true'\n", name))
        rules[name] = keys.build_document(P(PINS), recipe)["inputs"]["epoch"]
    assert rules == {"deb": "debian/changelog", "gitted": "git committer time", "tarred": 1700000000}
