"""Inputs found only when buildbox meets them: each is one line, never a traceback, with the
documented status (2 bad input or usage, 1 a failure at run time)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, Workspace, mounts_under, shell_recipe

pytestmark = pytest.mark.integration


def one_line(result: subprocess.CompletedProcess[str], words: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("buildbox: error: ") and words in last, result.stderr[-3000:]
    return last


def test_a_recipe_that_is_a_fifo_or_a_device_is_refused_without_reading_it(workspace: Workspace) -> None:
    fifo = workspace.root / "recipes" / "fifo.toml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/null")):
        result = subprocess.run([sys.executable, "-m", "buildbox", "run", str(path), "--cache", str(workspace.cache)],
                                cwd=workspace.root, capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert result.returncode == 2
        one_line(result, f"{path}: not a regular file")


def test_a_cache_or_out_that_is_a_file_and_a_manifest_that_is_not_one_are_usage_errors(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "plainfile", 'echo > "$OUT/x"')
    a_file = workspace.root / "a-file"
    a_file.write_text("not a directory\n")
    one_line(workspace.buildbox("run", recipe, "--cache", a_file, check=2), f"--cache {a_file} is not a directory")
    one_line(workspace.buildbox("run", recipe, "--out", a_file, check=2), f"--out {a_file} is not a directory")
    one_line(workspace.buildbox("verify", recipe, "--against", a_file, check=2), "not a buildbox manifest")
    colon = workspace.root / "a:cache"
    one_line(workspace.buildbox("run", recipe, "--cache", colon, check=2), "holds ':', ','")
    assert not colon.exists()
    assert a_file.read_text() == "not a directory\n"


def malformed_elf() -> bytes:
    """An ELF header whose program headers lie far past the end of the file."""
    header = b"\x7fELF\x02\x01\x01" + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x401000, 0x7FFFFFFF, 0, 0, 64, 56, 9, 64, 0, 0)
    return header + bytes(64)


ELF_OCTAL = "".join("\\%03o" % b for b in malformed_elf())   # for printf in the build script


@pytest.mark.parametrize("script,limits,words", [
    ("true", "", "left $OUT (/build/out) empty"),
    (f"printf '{ELF_OCTAL}' > \"$OUT/broken\"", "",
     "broken is not a well-formed ELF file"),
    ("for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done; wait", "processes = 8", "hit its processes limit"),
])
def test_run_time_failures_are_one_line_with_status_1(workspace: Workspace, script: str, limits: str,
                                                     words: str) -> None:
    recipe = shell_recipe(workspace, "failing", script)
    if limits:
        recipe.write_text(recipe.read_text() + f"[limits]\n{limits}\n")
    one_line(workspace.buildbox("run", recipe, "-q", check=1), words)
    assert not (workspace.root / "out" / "failing").exists()
    assert mounts_under(workspace.cache) == []


def test_an_artifact_named_with_a_newline_is_printed_escaped_on_one_line(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "newline", 'echo x > "$OUT/$(printf "a\\nb")"')
    result = workspace.buildbox("run", recipe, "-q")
    digest, out = hashlib.sha256(b"x\n").hexdigest(), workspace.root / "out" / "newline"
    assert result.stdout.splitlines() == [f"{digest}  {out}/a\\nb"], result.stdout
    recipe.write_text(recipe.read_text().replace("echo x > ", "mkfifo "))
    one_line(workspace.buildbox("run", recipe, "-q", check=1), "$OUT/a\\nb is not a regular file")


def test_a_full_disk_names_the_filesystem_and_the_file(workspace: Workspace, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small], check=True)
    try:
        recipe = shell_recipe(workspace, "big", 'head -c 4194304 /dev/zero > "$OUT/big"')
        last = one_line(workspace.buildbox("run", recipe, "-q", "--out", small, check=1),
                        f"no space left on the filesystem at {small} while writing {small}/")
        assert "gc --max-size" in last
        assert sorted(p.name for p in small.iterdir()) == []   # the half-copied folder is gone
    finally:
        subprocess.run(["umount", small], check=True)


def test_a_read_only_cache_is_listed_and_refused_for_a_run_in_one_line(workspace: Workspace, tmp_path: Path) -> None:
    recipe = shell_recipe(workspace, "readonly", 'echo > "$OUT/x"')
    workspace.buildbox("run", recipe, "-q")
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", workspace.cache, frozen], check=True)
    try:
        listed = workspace.buildbox("list", recipe, "--cache", frozen)
        assert "readonly" in listed.stdout and "up to date" in listed.stdout, listed.stdout
        shutil.rmtree(workspace.root / "out")
        one_line(workspace.buildbox("run", recipe, "-q", "--cache", frozen, check=2), "read-only filesystem")
    finally:
        subprocess.run(["umount", frozen], check=True)


def test_a_mirror_that_answers_404_says_so_with_the_url(workspace: Workspace, tmp_path: Path) -> None:
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(empty)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/debian"
    try:
        workspace.base("gone", f'[[set]]\nsuite = "bookworm"\nmirror = "{url}"\n')
        recipe = shell_recipe(workspace, "onmissing", 'echo > "$OUT/x"')
        recipe.write_text('base = "gone"\n' + recipe.read_text())
        last = one_line(workspace.buildbox("run", recipe, "-q", check=2), "gone.toml:3: 404 ")
        assert f": {url} bookworm Release" in last   # the status as the server said it, then the URL
    finally:
        server.shutdown()
        server.server_close()


def test_the_shell_exits_with_the_status_of_the_shell_inside(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "exits", 'echo > "$OUT/x"')
    result = subprocess.run([sys.executable, "-m", "buildbox", "shell", str(recipe), "--cache", str(workspace.cache)],
                            cwd=workspace.root, input="exit 7\n", capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 7, result.stderr
    assert mounts_under(workspace.cache) == []


def test_doit_exits_as_the_command_does_on_bad_input(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    shutil.copy(REPO / "dodo.py", tmp_path / "dodo.py")
    (tmp_path / "recipes" / "bad.toml").write_text("[build]\nscript = 'x'\n")
    result = subprocess.run([sys.executable, "-m", "doit", "list"], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "[source] is missing" in result.stderr and "Traceback" not in result.stderr
