"""Debian sources first-class: a local .dsc, the recipe of one line, the .debs as an apt
repository, the shared layer of build essentials (README, "Recipes from Debian")."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, Workspace

pytestmark = pytest.mark.integration

CHANGELOG_DATE = "Mon, 03 Jan 2022 12:00:00 +0000"
# What gcc's __DATE__ and __TIME__ give under SOURCE_DATE_EPOCH = the changelog's date.
STAMP = "built Jan  3 2022 12:00:00"
RULES = """\
#!/usr/bin/make -f
# No debhelper: the fixture needs nothing of the archive but the compiler.
build build-arch build-indep:
\t$(CC) -O2 -o stamp-date stamp-date.c
binary binary-arch: build
\tinstall -D -m 0755 stamp-date debian/stamp-date/usr/bin/stamp-date
\tinstall -D -m 0755 stamp-extra debian/stamp-extra/usr/bin/stamp-extra
\tln -s stamp-extra debian/stamp-extra/usr/bin/stamp-extra-link
\tset -e; for p in stamp-date stamp-extra; do mkdir -p debian/$$p/DEBIAN; \\
\t    dpkg-gencontrol -p$$p -Pdebian/$$p; dpkg-deb --root-owner-group --build debian/$$p ..; done
binary-indep:
clean:
\trm -rf stamp-date debian/stamp-date debian/stamp-extra debian/files debian/substvars
"""
CONTROL = """\
Source: stamp-date
Section: misc
Priority: optional
Maintainer: buildbox tests <tests@buildbox.invalid>
Build-Depends: libc6-dev
Rules-Requires-Root: no
Standards-Version: 4.6.2

Package: stamp-date
Architecture: any
Description: prints the date it was built
 A fixture of buildbox's tests.

Package: stamp-extra
Architecture: any
Description: a second binary package
 A fixture of buildbox's tests.
"""


@pytest.fixture(scope="module")
def dsc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Debian source package made here with dpkg-source -b: a C program printing __DATE__, two
    binary packages, a debian/changelog of a fixed date."""
    if not shutil.which("dpkg-source"):
        pytest.skip("dpkg-source is missing (README's first command installs dpkg-dev)")
    where = tmp_path_factory.mktemp("dsc")
    tree = where / "stamp-date-1.0"
    (tree / "debian" / "source").mkdir(parents=True)
    (tree / "stamp-date.c").write_text('#include <stdio.h>\nint main(void) { puts("built " __DATE__ " " __TIME__); '
                                       "return 0; }\n")
    (tree / "stamp-extra").write_text("#!/bin/sh\necho extra\n")
    (tree / "debian" / "control").write_text(CONTROL)
    (tree / "debian" / "changelog").write_text(
        f"stamp-date (1.0) unstable; urgency=medium\n\n  * A fixture.\n\n"
        f" -- buildbox tests <tests@buildbox.invalid>  {CHANGELOG_DATE}\n")
    (tree / "debian" / "source" / "format").write_text("3.0 (native)\n")
    (tree / "debian" / "rules").write_text(RULES)
    (tree / "debian" / "rules").chmod(0o755)
    subprocess.run(["dpkg-source", "-b", tree.name], cwd=where, check=True, capture_output=True)
    shutil.rmtree(tree)
    return where / "stamp-date_1.0.dsc"


def dsc_recipe(ws: Workspace, dsc: Path, name: str, extra: str = "") -> Path:
    """A recipe of the fixture's .dsc, by a path relative to the recipe's folder."""
    return ws.recipe(name, f'{extra}\n[source]\ndsc = "{os.path.relpath(dsc, ws.root / "recipes")}"\n')


def keys_of(ws: Workspace, recipe: Path) -> dict[str, str]:
    listed = ws.buildbox("list", "--keys", recipe).stdout
    return {line.split()[0]: line.split()[2] for line in listed.splitlines()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_local_dsc_in_one_line_builds_its_executables_at_its_changelogs_date_and_its_debs_install_with_apt(
        workspace: Workspace, dsc: Path) -> None:
    recipe = dsc_recipe(workspace, dsc, "stamp")
    workspace.buildbox("run", recipe)
    out = workspace.root / "out" / "stamp-date"   # the name is the source's
    said = (workspace.cache / "logs" / "stamp-date" / "build.log").read_text()   # of the run that built it
    assert "SOURCE_DATE_EPOCH=1641211200: the date of debian/changelog's latest entry" in said
    # Every package's executables, the link as what it names, and nothing the recipe named.
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["manifest.json", "stamp-date", "stamp-extra",
                                                                    "stamp-extra-link"]
    assert subprocess.run([out / "stamp-date"], capture_output=True, text=True, check=True).stdout == f"{STAMP}\n"
    assert (out / "stamp-extra-link").read_bytes() == (out / "stamp-extra").read_bytes()
    debs = out / "debs"
    assert sorted(p.name for p in debs.iterdir()) == ["Packages", "Release", "stamp-date_1.0_amd64.buildinfo",
                                                      "stamp-date_1.0_amd64.deb", "stamp-extra_1.0_amd64.deb"]
    manifest = json.loads((out / "manifest.json").read_text())
    for deb in ("stamp-date_1.0_amd64.deb", "stamp-extra_1.0_amd64.deb"):
        assert manifest["artifacts"][f"debs/{deb}"]["sha256"] == sha256(debs / deb)
    packages = (debs / "Packages").read_text()
    assert f" {sha256(debs / 'Packages')} {len(packages.encode())} Packages" in (debs / "Release").read_text()
    assert "Build-Date: Mon, 03 Jan 2022 12:00:00 +0000" in (debs / "stamp-date_1.0_amd64.buildinfo").read_text()
    # The key of a local .dsc is its sha256: the source's pin says so, and the one-line script is keyed.
    assert manifest["inputs"]["source"]["dsc-sha256"] == sha256(dsc)

    # The repository, as a user's sources.list takes it, in a fresh box of the same base.
    sys.path.insert(0, str(REPO))
    from buildbox.box import Box
    from buildbox.store import Store
    keys = keys_of(workspace, recipe)
    layers = [workspace.cache / "bases" / keys["base"] / "root", workspace.cache / "bootstraps" / keys["set1"] / "root"]
    apt = ["apt-get", "-o", "Dir::Etc::SourceList=/srv/local.list", "-o", "Dir::Etc::SourceParts=/nonexistent"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    with Box(Store(workspace.cache), layers, label="test-apt") as box:
        box.bind(debs, "/srv/debs")
        box.write("/srv/local.list", "deb [trusted=yes] file:/srv/debs ./\n")
        box.run([*apt, "update", "-q"], what="apt-get update", env=env)
        box.run([*apt, "install", "-y", "-q", "--", "stamp-date"], what="apt-get install", env=env)
        said = box.run(["stamp-date"], what="stamp-date", env=env, capture=True)
    assert said == f"{STAMP}\n"


def test_binaries_picks_the_packages_whose_executables_a_one_line_recipe_takes(workspace: Workspace,
                                                                                 dsc: Path) -> None:
    recipe = dsc_recipe(workspace, dsc, "extra", 'name = "extra"\n[debian]\nbinaries = ["stamp-extra"]\ndebs = false')
    workspace.buildbox("run", recipe)
    out = workspace.root / "out" / "extra"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "stamp-extra", "stamp-extra-link"]

    missing = dsc_recipe(workspace, dsc, "none", 'name = "none"\n[debian]\nbinaries = ["stamp-gone"]')
    failed = workspace.buildbox("run", missing, check=1)
    assert "[debian] binaries names stamp-gone, which this build made no .deb of" in failed.stderr


def test_locking_a_debian_recipe_keeps_its_packages_and_its_build_key(workspace: Workspace, dsc: Path) -> None:
    recipe = dsc_recipe(workspace, dsc, "stamp")
    workspace.buildbox("run", recipe)
    unlocked = keys_of(workspace, recipe)
    workspace.buildbox("lock", recipe)
    locked = keys_of(workspace, recipe)
    # The lock pins the shared layer's packages too: the same build, though its layer is one of its own.
    assert locked["build"] == unlocked["build"]
    assert "essentials" in unlocked and "essentials" not in locked
    assert "debhelper" in (workspace.root / "recipes" / "stamp.lock").read_text()


def test_a_file_beside_the_dsc_that_is_not_what_it_says_is_refused_naming_it(workspace: Workspace, dsc: Path,
                                                                             tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(dsc.parent, copy)
    tarball = copy / "stamp-date_1.0.tar.xz"
    tarball.write_bytes(tarball.read_bytes()[:-1] + b"\0")   # the same size, other bytes
    # A .dsc of its own (a field more), so that its source is not the fixture's, cached already.
    text = (copy / dsc.name).read_text()
    (copy / dsc.name).write_text(text.replace("Standards-Version:", "Homepage: https://example.invalid\nStandards-Version:"))
    recipe = dsc_recipe(workspace, copy / dsc.name, "tampered", '[build]\nscript = "true"')
    failed = workspace.buildbox("run", recipe, check=2)
    assert re.search(rf"{re.escape(str(tarball))} does not have the sha256 [0-9a-f]{{64}} its "
                     r"Checksums-Sha256 says", failed.stderr), failed.stderr
    assert "Traceback" not in failed.stderr
    assert not list((workspace.cache / "sources").glob(".tmp-*")), "a half-made source entry was left"


def test_two_debian_recipes_share_one_layer_of_build_essentials(workspace: Workspace, dsc: Path) -> None:
    shipped = [workspace.root / "recipes" / f"{name}.toml" for name in ("tree", "pv")]
    for path in shipped:
        shutil.copy(REPO / "recipes" / path.name, path)
    first = dsc_recipe(workspace, dsc, "stamp")
    workspace.buildbox("run", first, *shipped)   # and their [verify] run commands pass
    assert subprocess.run([workspace.root / "out" / "tree" / "tree", "--version"], capture_output=True,
                          text=True, check=True).stdout.startswith("tree v2.1.0")
    assert (workspace.root / "out" / "pv" / "debs" / "pv_1.6.20-1_amd64.deb").is_file()
    assert (workspace.root / "out" / "tree" / "debs" / "tree-dbgsym_2.1.0-1_amd64.deb").is_file()   # dbgsym kept
    keys = [keys_of(workspace, recipe) for recipe in (first, *shipped)]
    assert len({k["essentials"] for k in keys}) == 1
    assert len({k["layer"] for k in keys}) == 3
    # tree's own layer installs only its own dependencies: none of the build essentials again.
    logs = workspace.cache / "logs"
    setting_up = lambda log: set(re.findall(r"^Setting up (\S+) ", log.read_text(), re.MULTILINE))  # noqa: E731
    essentials = set().union(*map(setting_up, logs.glob("*/essentials.log")))   # whichever recipe made it
    own = setting_up(logs / "tree" / "packages.log")
    assert {"debhelper", "dpkg-dev", "gcc", "make"} <= essentials
    assert not own & essentials, own & essentials
    assert len(own) < len(essentials)


@pytest.fixture
def throwaway_user() -> str:
    """A host account made for one test, with the subordinate id range useradd gives it, removed after."""
    name = f"bbsb{os.getpid() % 100000}"
    subprocess.run(["userdel", "--remove", name], capture_output=True)   # one a killed run left
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True)
    try:
        if not any(line.startswith(f"{name}:") for line in Path("/etc/subuid").read_text().splitlines()):
            subprocess.run(["usermod", "--add-subuids", "200000-265535", "--add-subgids", "200000-265535", name],
                           check=True)
        yield name
    finally:
        subprocess.run(["pkill", "-u", name], capture_output=True)
        subprocess.run(["userdel", "--remove", name], capture_output=True)


def deb_data(deb: Path) -> bytes:
    """A .deb's data: the tar of the files it installs."""
    return subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout


def test_a_dsc_built_by_buildbox_and_by_sbuild_gives_the_same_binaries_and_debs(
        workspace: Workspace, dsc: Path, throwaway_user: str) -> None:
    missing = [tool for tool in ("sbuild", "newuidmap", "mmdebstrap") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing (README's first command installs sbuild and uidmap)")
    workspace.buildbox("run", dsc_recipe(workspace, dsc, "stamp"))
    ours = workspace.root / "out" / "stamp-date" / "debs"

    home = Path(f"/home/{throwaway_user}")
    as_user = ["runuser", "-u", throwaway_user, "--"]
    sources = home / "src"
    shutil.copytree(dsc.parent, sources)
    chroots = home / ".cache" / "sbuild"
    chroots.mkdir(parents=True)
    # sbuild's unshare mode takes ~/.cache/sbuild/SUITE-ARCH.tar: a buildd bootstrap by mmdebstrap.
    subprocess.run(["mmdebstrap", "--quiet", "--variant=buildd", "bookworm", chroots / "bookworm-amd64.tar",
                    "http://deb.debian.org/debian"], check=True, capture_output=True)
    subprocess.run(["chown", "-R", f"{throwaway_user}:", home], check=True)
    built = home / "built"
    built.mkdir()
    shutil.chown(built, throwaway_user)
    result = subprocess.run([*as_user, "sbuild", "--chroot-mode=unshare", "--dist=bookworm", "--arch=amd64",
                             "--no-run-lintian", "--no-run-piuparts", "--no-run-autopkgtest", "--no-source",
                             f"--build-dir={built}", str(sources / dsc.name)],
                            cwd=home, capture_output=True, text=True, env={"PATH": os.environ["PATH"], "HOME": str(home)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for deb in ("stamp-date_1.0_amd64.deb", "stamp-extra_1.0_amd64.deb"):
        assert deb_data(built / deb) == deb_data(ours / deb), f"{deb}: sbuild's data differs from buildbox's"
    unpacked = workspace.root / "sbuild-unpacked"
    subprocess.run(["dpkg-deb", "-x", built / "stamp-date_1.0_amd64.deb", unpacked], check=True)
    binary = unpacked / "usr" / "bin" / "stamp-date"
    assert binary.read_bytes() == (workspace.root / "out" / "stamp-date" / "stamp-date").read_bytes()
    assert subprocess.run([binary], capture_output=True, text=True, check=True).stdout == f"{STAMP}\n"
