"""`buildbox verify`: two builds under varied host conditions must give the same bytes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import Workspace, go_recipe, go_repo, mounts_under, shell_recipe

pytestmark = pytest.mark.integration


def differing(report: str) -> list[str]:
    """The artifacts verify's report names as differing, sorted."""
    return sorted(line.split(": ")[1] for line in report.splitlines() if line.startswith("differs: "))


def test_the_go_program_is_reproducible_twice_over_and_against_a_manifest(workspace: Workspace,
                                                                            tmp_path: Path) -> None:
    recipe = go_recipe(workspace, go_repo(tmp_path / "hello"))
    verify_dir = workspace.cache / "verify"
    before = set(verify_dir.iterdir()) if verify_dir.exists() else set()
    result = workspace.buildbox("verify", recipe)
    assert "hello is reproducible" in result.stdout
    workspace.buildbox("run", recipe, "-q")
    manifest = workspace.root / "out" / "hello" / "manifest.json"
    assert "reproducible" in workspace.buildbox("verify", recipe, "--against", manifest).stdout
    assert mounts_under(workspace.cache) == []
    assert set(verify_dir.iterdir()) == before, "the verify builds are removed"


def test_a_build_that_embeds_the_time_is_reported_as_differing_naming_the_file(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "stamped", 'date +%s%N > "$OUT/stamp"\ncp /bin/true "$OUT/tool"')
    result = workspace.buildbox("verify", recipe, check=1)
    assert "differs: stamp" in result.stdout
    assert "tool" not in result.stdout
    assert "stamped is not reproducible: 1 artifact(s) differ" in result.stdout


def test_the_second_build_runs_a_year_ahead_so_a_build_that_embeds_the_date_differs(workspace: Workspace) -> None:
    # Builds seconds apart on the same day agree on the date: only the shifted clock tells.
    recipe = shell_recipe(workspace, "dated", 'date -u +%F > "$OUT/day"\necho "$SOURCE_DATE_EPOCH" > "$OUT/epoch"')
    result = workspace.buildbox("verify", recipe, check=1)
    assert "the clock 373 days ahead" in result.stderr
    assert "not varied" not in result.stderr
    assert differing(result.stdout) == ["day"], result.stdout


def test_a_differing_binary_is_explained_by_the_elf_sections_that_differ(workspace: Workspace) -> None:
    from test_pipeline import c_recipe
    recipe = c_recipe(workspace, "stampbin", """\
        printf '#include <stdio.h>\\nint main(void) { puts(STAMP); return 0; }\\n' > stamp.c
        gcc -DSTAMP="\\"$(date +%s%N)\\"" -o "$OUT/stampbin" stamp.c
        """)
    result = workspace.buildbox("verify", recipe, check=1)
    assert "differs: stampbin" in result.stdout
    sections = result.stdout.split("ELF sections that differ: ")[1].splitlines()[0].split(", ")
    assert ".rodata" in sections and ".text" not in sections, sections


def test_the_second_build_runs_under_another_uid_and_a_build_that_records_it_differs(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "whoami", 'id -u > "$OUT/uid"\nid -un > "$OUT/name"\n'
                          'stat -c %u /build/src/README "$HOME" > "$OUT/owners"\nuname -n > "$OUT/node"')
    result = workspace.buildbox("verify", recipe, check=1)
    assert "host name elsewhere.invalid, build user uid 2000" in result.stderr
    # The uid and what the user owns change; the user's name and the box's host name do not.
    assert differing(result.stdout) == ["owners", "uid"], result.stdout


def test_the_second_builds_host_name_is_another_and_the_hosts_own_comes_back() -> None:
    import socket
    from buildbox.verify import VARIATIONS, host_conditions
    ours = socket.gethostname()
    with host_conditions(VARIATIONS[1]):
        assert socket.gethostname() == "elsewhere.invalid"
        assert subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() == "elsewhere.invalid"
    assert socket.gethostname() == ours
    assert subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() == ours


def test_verify_takes_out_quiet_and_keep_as_run_does_and_says_each_build_and_the_sha256s(workspace: Workspace,
                                                                                     tmp_path: Path) -> None:
    import hashlib
    import json
    import shutil
    recipe = shell_recipe(workspace, "verified", 'echo same > "$OUT/same"\necho build log line')
    out = tmp_path / "delivered"
    result = workspace.buildbox("verify", "--out", out, "-q", recipe)
    # A line as each build starts and as it ends, with its time; the log is not streamed with -q.
    for label in ("first", "second"):
        assert f"verify: verified: the {label} build starts" in result.stderr, result.stderr
        assert f"verify: verified: the {label} build took " in result.stderr, result.stderr
    assert "build log line" not in result.stderr
    # The identical artifacts go to DIR/NAME/ with their manifest, and their sha256 is printed.
    delivered = out / "verified" / "same"
    assert delivered.read_text() == "same\n"
    digest = hashlib.sha256(b"same\n").hexdigest()
    assert f"{digest}  {delivered}" in result.stdout.splitlines(), result.stdout
    assert json.loads((out / "verified" / "manifest.json").read_text())["artifacts"]["same"]["sha256"] == digest
    # Without -q the build log streams; without --out nothing is written, and the sha256 is still said.
    streamed = workspace.buildbox("verify", recipe)
    assert "build log line" in streamed.stderr
    assert f"{digest}  same" in streamed.stdout.splitlines(), streamed.stdout
    assert not (workspace.root / "out" / "verified").exists()

    # A build that differs is not delivered.
    stamped = shell_recipe(workspace, "unstable", 'date +%s%N > "$OUT/stamp"')
    workspace.buildbox("verify", "--out", out, "-q", stamped, check=1)
    assert not (out / "unstable").exists()
    # --out over a folder buildbox did not make: refused before any build.
    (out / "foreign").mkdir()
    refused = workspace.buildbox("verify", "--out", out, "-q", shell_recipe(workspace, "foreign", "true"), check=2)
    assert "exists and was not made by buildbox" in refused.stderr and "build starts" not in refused.stderr
    # A build that fails says so, with its time.
    failing = shell_recipe(workspace, "failing", "exit 3")
    failed = workspace.buildbox("verify", "-q", failing, check=1)
    assert "verify: failing: the first build failed after " in failed.stderr, failed.stderr

    # --keep leaves both boxes and both builds, and says where.
    before = set(mounts_under(workspace.cache))
    boxes: list[Path] = []
    places: list[Path] = []
    try:
        kept = workspace.buildbox("verify", "--keep", "-q", recipe, check=None)
        boxes = [Path(m) for m in mounts_under(workspace.cache) if m.endswith("/root") and m not in before]
        places = [Path(line.split(" at ", 1)[1]) for line in kept.stderr.splitlines()
                  if "build's files and manifest at" in line]
        assert kept.returncode == 0, kept.stderr
        assert len(boxes) == 2 and kept.stderr.count("kept the box") == 2, kept.stderr
        assert sorted(p.name.split("-")[0] for p in places) == ["first", "second"]
        assert all((p / "files" / "same").read_text() == "same\n" for p in places)
    finally:
        for box in boxes:
            subprocess.run(["umount", "-R", box], check=True)
            if (box.parent / "disk").is_mount():
                subprocess.run(["umount", box.parent / "disk"], check=True)
            shutil.rmtree(box.parent)
        for place in places:
            shutil.rmtree(place)
