"""The cache and out/ are trusted for their content, not for existing; the cleaners clean only a
buildbox cache; out/NAME is replaced only where buildbox made it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from buildbox.errors import BuildFailed
from buildbox.store import CACHEDIR_TAG, MARKER, remove_tree
from conftest import REPO, Workspace, mounts_under, shell_recipe

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_a_byte(path: Path, *, keep_mtime: bool = False) -> None:
    """Damage a file as a disk does, or (keep_mtime) as someone covering their tracks would."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


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
    flip_a_byte(entry / "tool", keep_mtime=True)   # past the cheap check: the copy's hash sees it
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


def test_fsck_finds_a_byte_flipped_in_a_cached_layer_and_repair_removes_it(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "checked", 'lessecho ok > "$OUT/said"')
    recipe.write_text('[packages]\ninstall = ["less"]\n' + recipe.read_text())
    workspace.buildbox("run", recipe, "-q")
    keys = dict(line.split(" checked ") for line in workspace.buildbox("list", "--keys", recipe).stdout.splitlines())
    layer = workspace.cache / "layers" / keys["layer"]
    clean = workspace.buildbox("fsck", "--cache", workspace.cache)
    assert f"damaged: layers/{layer.name}" not in clean.stdout
    flip_a_byte(layer / "root" / "usr" / "bin" / "lessecho")   # deep inside: only the full check sees it
    found = workspace.buildbox("fsck", "--cache", workspace.cache, check=1)
    assert f"damaged: layers/{layer.name}: content differs" in found.stdout, found.stdout
    repaired = workspace.buildbox("fsck", "--repair", "--cache", workspace.cache)
    assert f"damaged: layers/{layer.name}: content differs" in repaired.stdout and "(removed)" in repaired.stdout
    assert not layer.exists()
    assert "damaged" not in workspace.buildbox("fsck", "--cache", workspace.cache).stdout.split("fsck:")[0]
    (workspace.root / "out" / "checked" / "said").unlink()
    again = workspace.buildbox("run", recipe, "-q")
    assert "--> layer:" in again.stderr and layer.exists()
    assert (workspace.root / "out" / "checked" / "said").read_text() == "ok\n"


def test_a_cached_tree_changed_near_its_top_is_a_miss_and_made_again(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "touched", 'ls /build/src > "$OUT/files"')
    workspace.buildbox("run", recipe, "-q")
    out = workspace.root / "out" / "touched"
    source = json.loads((out / "manifest.json").read_text())["inputs"]["entries"]["sources"][0]
    (workspace.cache / "sources" / source / "build" / "src" / "planted").write_text("x\n")
    (out / "files").unlink()
    again = workspace.buildbox("run", recipe, "-q")
    assert f"the cached sources entry {source[:12]} was changed since it was made" in again.stderr, again.stderr
    assert "planted" not in (out / "files").read_text()


def test_ctrl_c_while_out_is_installed_exits_130_and_leaves_the_old_out_whole(workspace: Workspace) -> None:
    # Many files as well as a big one: the copy to out/ lasts long enough for the signal to land in it.
    script = ('echo {v} > "$OUT/version"\nhead -c 400000000 /dev/zero > "$OUT/big"\n'
              'mkdir "$OUT/many" && for i in $(seq 1500); do echo $i > "$OUT/many/$i"; done')
    recipe = shell_recipe(workspace, "interrupted", script.format(v=1))
    workspace.buildbox("run", recipe, "-q")
    recipe.write_text(recipe.read_text().replace("echo 1", "echo 2"))
    proc = subprocess.Popen([sys.executable, "-m", "buildbox", "run", str(recipe), "-q", "--cache", str(workspace.cache)],
                            cwd=workspace.root, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    for line in proc.stderr:
        if line.startswith("--> out:"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    out = workspace.root / "out"
    assert (out / "interrupted" / "version").read_text() == "1\n"
    assert (out / "interrupted" / "big").stat().st_size == 400000000
    assert sorted(p.name for p in out.iterdir()) == ["interrupted"]
    assert mounts_under(workspace.cache) == []


def test_the_manifest_carries_the_build_key_that_list_keys_prints(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "keyed", 'echo > "$OUT/x"')
    workspace.buildbox("run", recipe, "-q")
    manifest = json.loads((workspace.root / "out" / "keyed" / "manifest.json").read_text())
    listed = dict(line.split(" keyed ") for line in workspace.buildbox("list", "--keys", recipe).stdout.splitlines())
    assert manifest["build_key"] == listed["build"] == manifest["key"]
    assert set(listed) == {"set1", "base", "layer", "source", "build"}
