"""Recipes and bases are checked at the edge: each mistake is one line naming file, line and fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildbox.errors import InputError
from buildbox.lock import load_recipe
from buildbox.recipe import BootstrapSet, DebianSource, GitSource, TarballSet, UrlSource
from conftest import GOOD, REPO, write


def test_a_good_recipe_becomes_a_frozen_recipe(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, GOOD))
    assert recipe.name == "hello"
    assert recipe.install == ("git", "golang-go")
    assert recipe.source == GitSource("https://example.org/hello.git", "v1.0")
    assert recipe.env == (("CGO_ENABLED", "0"),)
    assert recipe.static is True and recipe.verify_run == ("hello",)
    assert recipe.base.sets == (BootstrapSet("bookworm", "http://deb.debian.org/debian", "minbase", ()),)


def test_the_name_defaults_to_the_file_stem_and_other_sources_parse(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, '[source]\ndebian = "caddy"\n[build]\nscript = "true"\n', "mytool"))
    assert recipe.name == "mytool" and recipe.source == DebianSource("caddy")
    digest = "a" * 64
    recipe = load_recipe(write(tmp_path, f'[source]\nurl = "http://x/y.tar.gz"\nsha256 = "{digest}"\n'
                                         '[build]\nscript = "true"\n'))
    assert recipe.source == UrlSource("http://x/y.tar.gz", digest)


BAD = [
    # (recipe text, line, words the message must hold)
    ("[build\nscript = 'x'\n", 1, "not valid TOML"),
    ('nmae = "x"\n[source]\ndebian = "caddy"\n[build]\nscript = "true"\n', 1, "did you mean 'name'"),
    ('[source]\ndebian = "caddy"\n[build]\nscirpt = "true"\n', 4, "did you mean 'script'"),
    ('[source]\ndebian = "caddy"\n[build]\nscript = 3\n', 4, "'script' must be a string"),
    ('[packages]\ninstall = "git"\n[source]\ndebian = "caddy"\n[build]\nscript = "true"\n', 2,
     "must be a list of strings"),
    ('[build]\nscript = "true"\n', 1, "[source] is missing"),
    ('[source]\n[build]\nscript = "true"\n', 1, "names no source"),
    ('[source]\ngit = "https://x/y.git"\ndebian = "caddy"\n[build]\nscript = "true"\n', 3,
     "names both 'git' and 'debian'"),
    ('[source]\nurl = "http://x/y.tgz"\nsha256 = "abc"\n[build]\nscript = "true"\n', 3,
     "not 64 lowercase hex digits"),
    ('[source]\nurl = "http://x/y.tgz"\n[build]\nscript = "true"\n', 2, "needs a sha256"),
    ('[source]\ndebian = "caddy"\nref = "main"\n[build]\nscript = "true"\n', 3, "'ref' goes with a git source"),
    ('[source]\ndebian = "caddy"\n[build]\nscript = """\n\n"""\n', 4, "the build script is empty"),
    # A Debian source with no [build] script is a one-line recipe; any other source needs a script.
    ('[source]\ngit = "https://example.org/x.git"\n', 1, "[build] is missing"),
    ('base = "nope"\n[source]\ndebian = "caddy"\n[build]\nscript = "true"\n', 1, "base 'nope' does not exist"),
    ('name = "../escape"\n[source]\ndebian = "caddy"\n[build]\nscript = "true"\n', 1, "out/../escape"),
    ('[packages]\nbuild-deps = ["Not A Package"]\n[source]\ndebian = "caddy"\n[build]\nscript = "true"\n', 2,
     "not a Debian package name"),
    ('[source]\ndebian = "caddy"\n[build]\nscript = "true"\nenv = { OUT = "/tmp" }\n', 5,
     "OUT is set by buildbox"),
    ('[source]\ndebian = "caddy"\n[build]\nscript = "true"\n[verify]\nstatic = "yes"\n', 6,
     "must be a boolean"),
    ('[source]\ngit = "relative/missing"\n[build]\nscript = "true"\n', 2, "neither a URL nor an existing path"),
    ('[source]\ngit = "https://x/y.git"\n[fetch]\nenv = { A = "b" }\n[build]\nscript = "true"\n', 3,
     "[fetch] has no script"),
    ('[source]\ngit = "https://x/y.git"\n[fetch]\nscript = "go mod download"\nsha265 = "x"\n[build]\nscript = "t"\n', 5,
     "did you mean 'sha256'"),
    ('[source]\ngit = "https://x/y.git"\n[fetch]\nscript = "go mod download"\nsha256 = "abc123"\n'
     '[build]\nscript = "true"\n', 5, "not 64 lowercase hex digits"),
    ('[source]\ngit = "https://x/y.git"\n[fetch]\nscript = "x"\nsha256 = "' + "G" * 64 + '"\n[build]\nscript = "t"\n', 5,
     "not 64 lowercase hex digits"),
    ('[source]\ndebian = "caddy"\n[fetch]\nscript = "go mod download"\n[build]\nscript = "true"\n', 3,
     "a debian source's package already brings everything"),
    ('[source]\ngit = "https://x/y.git"\n[fetch]\nscript = "x"\nenv = { GOMODCACHE = "/tmp" }\n'
     '[build]\nscript = "true"\n', 5, "GOMODCACHE is set by buildbox for the fetch"),
    ('[source]\ndebian = "caddy"\n[build]\nscript = "true"\nsecret-env = ["API_TOKEN", "PATH"]\n', 5,
     "secret-env PATH is set by buildbox for the build itself"),
    ('[source]\ndebian = "caddy"\n[build]\nscript = "true"\n[limits]\ndisk = "1"\n', 6,
     "disk = '1' is less than a build can work with (16M)"),
    ('[source]\ndebian = "caddy"\n[build]\nscript = "true"\n[limits]\nprocesses = 2\n', 6,
     "processes = 2 is less than a build can work with (8)"),
]


BAD += [
    # [debian] and the one-line form (README, "Recipes from Debian").
    ('[source]\ngit = "https://x/y.git"\n[build]\nscript = "true"\n[debian]\ndebs = true\n', 5,
     "[debian] goes with a debian or dsc source"),
    ('[source]\ndebian = "tree"\n[build]\nscript = "true"\n[debian]\nbinaries = ["tree"]\n', 6,
     "binaries picks the executables of a recipe with no [build] script"),
    ('[source]\ndebian = "tree"\n[debian]\nbinaries = []\n', 4, "[debian] binaries names no package"),
    ('[source]\ndebian = "tree"\n[debian]\nbinaries = ["-x"]\n', 4, "'-x' is not a Debian package name"),
    ('[source]\ndebian = "tree"\n[debian]\ndebs = "yes"\n', 4, "'debs' must be a boolean"),
    ('[source]\ndsc = "nowhere/foo_1.0.dsc"\n', 2, "does not exist"),
    ('[source]\ndsc = "foo.tar.gz"\n', 2, "names no .dsc file"),
]


def test_a_debian_source_with_no_script_is_a_one_line_recipe_named_by_its_source(tmp_path: Path) -> None:
    from buildbox import debian
    recipe = load_recipe(write(tmp_path, '[source]\ndebian = "tree"\n', "whatever"))
    assert recipe.name == "tree" and recipe.build_deps == ("tree",)
    assert recipe.script.startswith(debian.BUILD) and "dpkg-scanpackages" in recipe.script   # debs: the default
    picked = load_recipe(write(tmp_path, '[source]\ndebian = "rust-fd-find"\n[debian]\nbinaries = ["fd-find"]\n'
                               'debs = false\n'))
    assert "for package in fd-find; do" in picked.script and "dpkg-scanpackages" not in picked.script
    # A recipe with a script keeps it as it was, and keeps no .debs unless it asks.
    import tomlkit
    caddy = load_recipe(REPO / "recipes" / "caddy.toml")
    assert caddy.script == tomlkit.parse((REPO / "recipes" / "caddy.toml").read_text())["build"]["script"]


DSC = """\
-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA256

Format: 3.0 (quilt)
Source: foo
Version: 1:1.0-2
Build-Depends: debhelper-compat (= 13),
 libfoo-dev
Checksums-Sha256:
 {digest} 3 foo_1.0.orig.tar.gz
-----BEGIN PGP SIGNATURE-----

abc
-----END PGP SIGNATURE-----
"""


def test_a_dsc_is_read_with_its_files_and_build_depends_and_a_bad_one_is_refused_on_its_line(tmp_path: Path) -> None:
    import hashlib
    from buildbox.debian import DscFile, read_dsc, stage
    digest = hashlib.sha256(b"abc").hexdigest()
    path = tmp_path / "foo_1.0-2.dsc"
    path.write_text(DSC.format(digest=digest))
    (tmp_path / "foo_1.0.orig.tar.gz").write_bytes(b"abc")
    found = read_dsc(path, "recipe:2")
    assert (found.package, found.version) == ("foo", "1:1.0-2")
    assert found.files == (DscFile("foo_1.0.orig.tar.gz", digest, 3),)
    assert found.depends == (("Build-Depends", "debhelper-compat (= 13), libfoo-dev"),)
    assert found.pin.dsc_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    staged = stage(found, tmp_path / "staged")
    assert (staged.parent / "foo_1.0.orig.tar.gz").read_bytes() == b"abc"
    for bad, line, words in [(DSC.replace("Source: foo", "Source: -foo"), 5, "Source field '-foo'"),
                             (DSC.replace(" foo_1.0.orig", " ../foo_1.0.orig"), 10, "is not 'SHA256 SIZE NAME'"),
                             (DSC.replace("Version: 1:1.0-2", "Version: --help"), 6, "Version field")]:
        path.write_text(bad.format(digest=digest))
        with pytest.raises(InputError) as caught:
            read_dsc(path, "recipe:2")
        assert str(caught.value).startswith(f"{path}:{line}: ") and words in str(caught.value), str(caught.value)
    # Renamed, it is the same source: the pin names it as dpkg-source does (what a lock reads back).
    path.write_text(DSC.format(digest=digest))
    renamed = tmp_path / "my.dsc"
    renamed.write_bytes(path.read_bytes())
    assert read_dsc(renamed, "recipe:2").pin == found.pin and found.pin.dsc == "foo_1.0-2.dsc"
    # A file beside it that is not what it says is refused, naming it (not saying its digest).
    path.write_text(DSC.format(digest=digest))
    (tmp_path / "foo_1.0.orig.tar.gz").write_bytes(b"abd")
    with pytest.raises(InputError) as caught:
        stage(read_dsc(path, "recipe:2"), tmp_path / "again")
    assert "foo_1.0.orig.tar.gz does not have the sha256" in str(caught.value), str(caught.value)
    assert hashlib.sha256(b"abd").hexdigest() not in str(caught.value)
    (tmp_path / "foo_1.0.orig.tar.gz").write_bytes(b"abcd")   # the size is checked before a byte is copied
    with pytest.raises(InputError) as caught:
        stage(read_dsc(path, "recipe:2"), tmp_path / "thrice")
    assert "is 4 bytes, not the 3 its Checksums-Sha256 says" in str(caught.value)


@pytest.mark.parametrize("text,line,words", BAD, ids=[b[2] for b in BAD])
def test_bad_recipes_are_refused_naming_file_line_and_fix(tmp_path: Path, text: str, line: int,
                                                          words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message
    assert "\n" not in message


def test_no_secret_env_can_stand_for_a_variable_buildbox_sets_for_the_build(tmp_path: Path) -> None:
    from buildbox.build import build_env
    head = '[source]\ngit = "https://x/y.git"\n[fetch]\nscript = "go mod download"\n[build]\nscript = "true"\n'
    # GOFLAGS stays the recipe's (buildbox appends -mod=mod to it); every other name is buildbox's.
    for name in sorted(set(build_env(load_recipe(write(tmp_path, head)))) - {"GOFLAGS"}):
        path = write(tmp_path, head + f'secret-env = ["{name}"]\n')
        with pytest.raises(InputError) as caught:
            load_recipe(path)
        assert str(caught.value).startswith(f"{path}:7: secret-env {name} is set by buildbox"), str(caught.value)
        assert caught.value.exit_code == 2


@pytest.mark.parametrize("text,words", [
    ("[[set]]\nurl = 'http://x/base.tgz'\n", "needs a sha256"),
    ("[[set]]\nurl = 'http://x/base.tgz'\nsha256 = 'XYZ'\n", "not 64 lowercase hex digits"),
    ("[[set]]\nsuite = 'bookworm'\n", "needs a mirror"),
    ("[[set]]\nsuite = 'bookworm'\nmirror = 'http://m'\nvariant = 'tiny'\n", "not an mmdebstrap variant"),
    ("[[set]]\nsuite = 'bookworm'\nurl = 'http://m'\n", "not both"),
    ("set = 1\n", "must be an array of tables"),
    ("", "at least one [[set]]"),
])
def test_bad_bases_are_refused_naming_their_file(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, 'base = "mine"\n[source]\ndebian = "caddy"\n[build]\nscript = "true"\n')
    (tmp_path / "base" / "mine.toml").write_text(text)
    with pytest.raises(InputError) as caught:
        load_recipe(path)
    assert str(caught.value).startswith(f"{tmp_path / 'base' / 'mine.toml'}:")
    assert words in str(caught.value)


def test_a_tarball_set_with_a_relative_path_is_read_from_beside_the_base(tmp_path: Path) -> None:
    path = write(tmp_path, 'base = "mine"\n[source]\ndebian = "caddy"\n[build]\nscript = "true"\n')
    (tmp_path / "base" / "mine.toml").write_text(f"[[set]]\nurl = 'sets/base.tgz'\nsha256 = '{'b' * 64}'\n")
    assert load_recipe(path).base.sets == (TarballSet(str(tmp_path / "base/sets/base.tgz"), "b" * 64),)


def test_the_command_reports_a_bad_recipe_on_one_line_with_status_2(tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\ndebian = "caddy"\n[build]\nscirpt = "true"\n')
    result = subprocess.run([sys.executable, "-m", "buildbox", "run", str(path), "--cache", str(tmp_path / "c")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"buildbox: error: {path}:4: unknown key 'scirpt' in [build]; did you mean 'script'?"]
    assert not (tmp_path / "c").exists(), "bad input must write nothing"


def test_unknown_flags_are_usage_errors_with_status_2() -> None:
    result = subprocess.run([sys.executable, "-m", "buildbox", "run", "--frobnicate", "x.toml"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_an_option_a_command_does_not_know_is_named_alone_not_with_the_arguments_after_it() -> None:
    # argparse would say "unrecognized arguments: --bogus x.toml", the recipe lumped in.
    result = subprocess.run([sys.executable, "-m", "buildbox", "verify", "--bogus", "somewhere", "x.toml"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["buildbox: error: verify: unknown option --bogus; "
                                          "see `buildbox verify --help`"], result.stderr


def test_a_base_is_found_beside_the_recipe_then_in_recipes_base_then_among_the_shipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildbox.recipe import SHIPPED_BASES
    elsewhere = tmp_path / "anywhere" / "tool.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text('[source]\ndebian = "caddy"\n[build]\nscript = "true"\n')
    monkeypatch.chdir(tmp_path)
    # Nothing beside it, no ./recipes/base/: the shipped debian-bookworm.
    assert load_recipe(elsewhere).base.sets == (BootstrapSet("bookworm", "http://deb.debian.org/debian", "minbase", ()),)
    assert (SHIPPED_BASES / "debian-bookworm.toml").is_file()
    # ./recipes/base/ comes before the shipped one, and a base beside the recipe before both.
    (tmp_path / "recipes" / "base").mkdir(parents=True)
    (tmp_path / "recipes" / "base" / "debian-bookworm.toml").write_text(f"[[set]]\nurl = 'cwd.tgz'\nsha256 = '{'c' * 64}'\n")
    assert load_recipe(elsewhere).base.sets == (TarballSet(str(tmp_path / "recipes/base/cwd.tgz"), "c" * 64),)
    (elsewhere.parent / "base").mkdir()
    (elsewhere.parent / "base" / "debian-bookworm.toml").write_text(f"[[set]]\nurl = 'near.tgz'\nsha256 = '{'d' * 64}'\n")
    assert load_recipe(elsewhere).base.sets == (TarballSet(str(elsewhere.parent / "base/near.tgz"), "d" * 64),)


def test_a_base_found_nowhere_names_every_place_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildbox.recipe import SHIPPED_BASES
    path = tmp_path / "anywhere" / "tool.toml"
    path.parent.mkdir()
    path.write_text('base = "nosuch"\n[source]\ndebian = "caddy"\n[build]\nscript = "true"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as caught:
        load_recipe(path)
    said = str(caught.value)
    assert said.startswith(f"{path}:1:") and "base 'nosuch' does not exist" in said, said
    for place in (path.parent / "base", Path("recipes") / "base", SHIPPED_BASES):
        assert str(place / "nosuch.toml") in said, said
    assert "known bases: debian-bookworm" in said


def test_a_base_another_account_could_have_planted_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Run from a shared folder, ./recipes/base/ may hold a base another host user wrote.
    recipe = tmp_path / "mine" / "tool.toml"
    recipe.parent.mkdir()
    recipe.write_text('[source]\ndebian = "caddy"\n[build]\nscript = "true"\n')
    planted = tmp_path / "recipes" / "base" / "debian-bookworm.toml"
    planted.parent.mkdir(parents=True)
    planted.write_text(f"[[set]]\nurl = 'evil.tgz'\nsha256 = '{'e' * 64}'\n")
    monkeypatch.chdir(tmp_path)
    os.chown(planted, 12345, 12345)
    with pytest.raises(InputError) as caught:
        load_recipe(recipe)
    assert "is not taken" in str(caught.value) and "uid 12345" in str(caught.value)
    os.chown(planted, 0, 0)
    os.chmod(planted.parent, 0o777)
    with pytest.raises(InputError) as caught:
        load_recipe(recipe)
    assert "mode 777" in str(caught.value)
    os.chmod(planted.parent, 0o755)
    assert isinstance(load_recipe(recipe).base.sets[0], TarballSet)


INSTALL_BASE = GOOD + "[install]\n"
BAD_INSTALL = [
    ('exec = []\n', "[install] exec names no program"),
    ('exec = ["hello"]\nfiles = { "/etc/hello.conf" = "missing.conf" }\n', "no such file"),
    ('exec = ["hello"]\nfiles = { "/etc/hello.conf" = "../outside.conf" }\n', "is outside the recipe's folder"),
    ('exec = ["hello"]\nfiles = { "etc/hello.conf" = "hello.conf" }\n', "is not an absolute path in the root"),
    ('exec = ["hello"]\nfiles = { "/etc/passwd" = "hello.conf" }\n', "which buildbox makes itself"),
    ('exec = ["hello"]\nstate = ["var/lib/hello"]\n', "is not an absolute path in the root"),
    ('exec = ["hello"]\nstate = ["/usr/share/hello"]\n', "is in /usr"),
    ('exec = ["hello"]\nstate = ["/var/lib/../../etc"]\n', "is not an absolute path in the root"),
    ('exec = ["hello"]\ncapabilities = ["CAP_NET_BIND_SERVCE"]\n', "did you mean CAP_NET_BIND_SERVICE?"),
    ('exec = ["hello"]\nuser = "root"\n', "is not a service user's name"),
    ('exec = ["hello"]\nrestart = true\n', "unknown key 'restart' in [install]"),
    ('exec = ["hello", "a\\nExecStartPre=+/bin/sh"]\n', "exec holds a control character"),
    ('exec = ["hello"]\ncheck = ["hello\\nid"]\n', "holds a control character"),
    ('exec = ["hello"]\nfiles = { "/etc" = "hello.conf" }\n', "which buildbox makes itself"),
]


@pytest.mark.parametrize("table,words", BAD_INSTALL, ids=[b[1] for b in BAD_INSTALL])
def test_a_bad_install_table_is_refused_at_its_line(tmp_path: Path, table: str, words: str) -> None:
    (tmp_path / "outside.conf").write_text("x\n")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "hello.conf").write_text("x\n")
    path = write(tmp_path / "recipes", INSTALL_BASE + table)
    with pytest.raises(InputError) as caught:
        load_recipe(path)
    message = str(caught.value)
    line = INSTALL_BASE.count("\n") + (1 if table.startswith("exec = []") else table.count("\n"))
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message and "\n" not in message


def test_an_install_table_is_in_no_key(tmp_path: Path) -> None:
    from buildbox.keys import build_key
    from buildbox.pins import Pins
    pins = Pins.from_dict({"sets": ["a" * 64], "packages": {}, "source": {"git": "https://example.org/hello.git",
                                                                            "commit": "c" * 40}})
    (tmp_path / "hello.conf").write_text("x\n")
    plain = load_recipe(write(tmp_path, GOOD))
    served = load_recipe(write(tmp_path, INSTALL_BASE + 'exec = ["hello", "serve"]\nstate = ["/var/lib/hello"]\n'
                                          'files = { "/etc/hello.conf" = "hello.conf" }\n'
                                          'capabilities = ["cap_net_bind_service"]\n'))
    assert served.service and served.service.capabilities == ("CAP_NET_BIND_SERVICE",)
    assert served.service.user == "hello" and served.service.files[0][0] == "/etc/hello.conf"
    assert build_key(pins, served) == build_key(pins, plain)
