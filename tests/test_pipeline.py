"""The whole pipeline for real: Debian's archive, mmdebstrap, overlay mounts, chroots."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import HELLO_GO, Workspace, bootstrap_tarball, git, go_recipe, go_repo, mounts_under, ran

pytestmark = pytest.mark.integration

C_PACKAGES = '["gcc", "libc6-dev"]'


def test_a_go_program_from_a_local_git_repository_builds_caches_and_rebuilds_only_what_changed(
        workspace: Workspace, tmp_path: Path) -> None:
    repo = go_repo(tmp_path / "hello")
    recipe = go_recipe(workspace, repo)

    first = workspace.buildbox("run", recipe)
    binary = workspace.root / "out" / "hello" / "hello"
    assert subprocess.run([binary], capture_output=True, text=True).stdout == "hello from buildbox\n"
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    assert f"{digest}  {binary}" in first.stdout
    manifest = json.loads((binary.parent / "manifest.json").read_text())
    assert manifest["inputs"]["source"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert manifest["artifacts"]["hello"]["sha256"] == digest
    assert manifest["artifacts"]["hello"]["elf"]["static"] is True
    assert "golang-go" in manifest["inputs"]["packages"]
    provenance = manifest["provenance"]
    assert provenance["subject"] == [{"name": "hello", "digest": {"sha256": digest}}]
    assert {"uri": f"git+{repo}", "digest": {"gitCommit": git(repo, "rev-parse", "HEAD")}} in provenance["materials"]
    assert provenance["builder"]["host_kernel"] == __import__("os").uname().release

    again = workspace.buildbox("run", recipe)
    assert ran(again) == set(), again.stderr
    assert "up to date: build:hello" in again.stderr

    (repo / "main.go").write_text(HELLO_GO % "a new commit")
    git(repo, "commit", "-qam", "change")
    changed = workspace.buildbox("run", recipe)
    assert ran(changed) == {"source", "build", "out"}, changed.stderr
    assert subprocess.run([binary], capture_output=True, text=True).stdout == "hello from a new commit\n"

    go_recipe(workspace, repo, packages='["git", "golang-go", "file"]')
    repacked = workspace.buildbox("run", recipe)
    # A new package list is a new layer (built now, or found from an earlier test session's cache),
    # and everything above it is rebuilt.
    assert layer_task(repacked) != layer_task(first)
    assert {"build", "out"} <= ran(repacked), repacked.stderr


def layer_task(result) -> str:
    return next(word for line in result.stderr.splitlines() for word in line.split() if word.startswith("layer:"))


def test_a_git_ref_that_does_not_exist_is_bad_input(workspace: Workspace, tmp_path: Path) -> None:
    repo = go_repo(tmp_path / "hello")
    recipe = go_recipe(workspace, repo)
    recipe.write_text(recipe.read_text().replace('ref = "main"', 'ref = "no-such-branch"'))
    result = workspace.buildbox("run", recipe, check=2)
    assert "git ref 'no-such-branch' does not exist" in result.stderr


def test_tarball_sets_over_http_are_verified_and_unpacked_in_order(
        workspace: Workspace, http_server, tmp_path: Path) -> None:
    folder, url = http_server
    # The first set: the Debian bootstrap this cache already holds (made by an earlier recipe or now).
    bootstrap = bootstrap_tarball(workspace, tmp_path / "bootstrap.tar")
    shutil.copy(bootstrap, folder / "debian.tar")
    # The second set overrides a file of the first: sets are unpacked in order.
    with tarfile.open(folder / "extra.tar.gz", "w:gz") as tar:
        for name, text in (("etc/buildbox-marker", "from the second set\n"), ("etc/debian_version", "overridden\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, __import__("io").BytesIO(text.encode()))
    sha = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("debian.tar", "extra.tar.gz")}
    workspace.base("layered", f"""\
        [[set]]
        url = "{url}/debian.tar"
        sha256 = "{sha['debian.tar']}"
        [[set]]
        url = "{url}/extra.tar.gz"
        sha256 = "{sha['extra.tar.gz']}"
        """)
    recipe = workspace.recipe("layered", f"""\
        base = "layered"
        [source]
        url = "{url}/extra.tar.gz"
        sha256 = "{sha['extra.tar.gz']}"
        [build]
        script = '''
        cat /etc/buildbox-marker /etc/debian_version > "$OUT/seen"
        ls > "$OUT/source-files"
        '''
        """)
    workspace.buildbox("run", recipe)
    out = workspace.root / "out" / "layered"
    assert (out / "seen").read_text() == "from the second set\noverridden\n"
    # The tarball's one top-level directory (etc/) is stripped, as with NAME-1.0/ in release tarballs.
    assert (out / "source-files").read_text() == "buildbox-marker\ndebian_version\n"

    wrong = "f" * 64
    workspace.base("layered", f"""\
        [[set]]
        url = "{url}/extra.tar.gz"
        sha256 = "{wrong}"
        """)
    failed = workspace.buildbox("run", recipe, check=1)
    assert f"expected {wrong}, got {sha['extra.tar.gz']}" in failed.stderr
    assert not (workspace.cache / "downloads" / wrong).exists()
    assert not list((workspace.cache / "downloads").glob(".tmp-*"))


def c_recipe(ws: Workspace, name: str, script: str, verify: str = "") -> Path:
    return ws.recipe(name, f"""\
        [packages]
        install = {C_PACKAGES}
        [source]
        url = "{ws.root / 'src.tar'}"
        sha256 = "{_c_source(ws)}"
        [build]
        script = '''
        {script}
        '''
        {verify}
        """)


def _c_source(ws: Workspace) -> str:
    path = ws.root / "src.tar"
    if not path.exists():
        folder = ws.root / "csrc"
        folder.mkdir()
        (folder / "lib.c").write_text("int bb_answer(void) { return 42; }\n")
        (folder / "main.c").write_text('#include <stdio.h>\nint bb_answer(void);\n'
                                       'int main(void) { printf("%d\\n", bb_answer()); return 0; }\n')
        with tarfile.open(path, "w") as tar:
            tar.add(folder, arcname="csrc-1.0")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_binary_needing_a_library_the_host_lacks_fails_verification_naming_it(workspace: Workspace) -> None:
    recipe = c_recipe(workspace, "needslib", """\
        mkdir -p "$HOME/lib"
        gcc -shared -fPIC -Wl,-soname,libbbonlyinbox.so.1 -o "$HOME/lib/libbbonlyinbox.so.1" lib.c
        gcc -o "$OUT/answer" main.c "$HOME/lib/libbbonlyinbox.so.1" -Wl,-rpath,"$HOME/lib"
        """)
    result = workspace.buildbox("run", recipe, check=1)
    assert "answer needs libbbonlyinbox.so.1, which the host does not have" in result.stderr
    assert not (workspace.root / "out" / "needslib").exists()
    recipes = [json.loads(m.read_text())["recipe"] for m in (workspace.cache / "builds").glob("*/manifest.json")]
    assert "needslib" not in recipes, "nothing unverified is cached"


def test_a_symlink_in_out_is_resolved_in_the_box_and_copies_nothing_of_the_host(workspace: Workspace) -> None:
    recipe = c_recipe(workspace, "links", """\
        ln -s /etc/passwd "$OUT/passwd"
        ln -s ../../../../../../../etc/hostname "$OUT/hostname"
        gcc -o "$OUT/answer" main.c lib.c
        """, verify='[verify]\nrun = ["answer | grep -qx 42"]')
    workspace.buildbox("run", recipe)
    out = workspace.root / "out" / "links"
    copied = (out / "passwd").read_text()
    assert "builder:x:1000:1000" in copied
    assert copied != Path("/etc/passwd").read_text()
    assert (out / "hostname").read_text() == "buildbox\n"
    assert not (out / "passwd").is_symlink()


def test_a_failing_build_exits_1_shows_the_log_tail_and_leaves_no_mount(workspace: Workspace) -> None:
    recipe = c_recipe(workspace, "broken", """\
        echo "compiling the broken thing"
        gcc -o "$OUT/x" does-not-exist.c
        """)
    result = workspace.buildbox("run", recipe, check=1)
    assert "compiling the broken thing" in result.stderr
    assert "does-not-exist.c" in result.stderr
    assert "the build of broken failed" in result.stderr
    assert mounts_under(workspace.cache) == []
    assert list((workspace.cache / "boxes").iterdir()) == []


def test_the_build_runs_as_the_unprivileged_user_with_a_clean_fixed_environment(workspace: Workspace) -> None:
    recipe = workspace.recipe("env", f"""\
        [source]
        url = "{workspace.root / 'src.tar'}"
        sha256 = "{_c_source(workspace)}"
        [build]
        env = {{ EXTRA = "yes" }}
        script = '''
        id -u > "$OUT/uid"
        env | sort > "$OUT/env"
        umask > "$OUT/umask"
        if touch /etc/owned 2>/dev/null; then echo yes; else echo no; fi > "$OUT/can-write-etc"
        '''
        """)
    workspace.buildbox("run", recipe)
    out = workspace.root / "out" / "env"
    assert (out / "uid").read_text() == "1000\n"
    assert (out / "can-write-etc").read_text() == "no\n"
    assert (out / "umask").read_text() == "0022\n"
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    assert env["HOME"] == "/home/builder" and env["USER"] == env["LOGNAME"] == "builder"
    assert env["TZ"] == "UTC" and env["LANG"] == "C.UTF-8" and env["EXTRA"] == "yes"
    assert env["OUT"] == "/build/out" and "SOURCE_DATE_EPOCH" in env
    assert not any(k.startswith(("PYTEST", "SSH_", "BUILDBOX")) for k in env), env


def test_a_debian_source_gets_dpkg_dev_and_fakeroot_without_listing_them_and_the_log_says_so(
        workspace: Workspace) -> None:
    recipe = workspace.recipe("debsrc", """\
        [source]
        debian = "caddy"
        [build]
        script = '''
        dpkg-parsechangelog -S Version > "$OUT/version"
        command -v fakeroot > "$OUT/fakeroot"
        '''
        """)
    result = workspace.buildbox("run", recipe, "-q")
    said = "also installing dpkg-dev, fakeroot, which a Debian source needs (as sbuild does)"
    # Said by the run that made the layer: this one, or an earlier test's Debian recipe of the
    # session's cache that stands on the same layer.
    logs = [path.read_text() for path in (workspace.cache / "logs").glob("*/packages.log")]
    assert said in result.stderr or any(said in text for text in logs)
    out = workspace.root / "out" / "debsrc"
    assert (out / "version").read_text().startswith("2.6.2-")
    assert (out / "fakeroot").read_text() == "/usr/bin/fakeroot\n"
