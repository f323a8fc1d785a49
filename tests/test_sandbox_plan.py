"""A box is a printable plan (mkosi's habit): its operations describe themselves, `--debug`
prints them before each command, and a failed build keeps its plan beside its box with a hint
that names a command that brings the box back to run the failed command again."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, Workspace, mounts_under, shell_recipe

pytestmark = pytest.mark.integration

SECRET = "not-for-any-plan-7f3e"   # an environment value that no plan line may show


def base_layers(cache: Path) -> list[Path]:
    """A cached base over its bootstrap: the layers of a box made by hand (as test_private_ids)."""
    base = next(p for p in sorted((cache / "bases").iterdir()) if (p / "root").is_dir())
    return [base / "root", *sorted(p / "root" for p in (cache / "bootstraps").iterdir() if (p / "root").is_dir())[:1]]


def test_a_box_plan_lists_its_layers_top_first_its_binds_and_the_user_and_no_env_value(
        workspace: Workspace, tmp_path: Path) -> None:
    workspace.buildbox("run", shell_recipe(workspace, "planwarm", 'echo > "$OUT/x"'), "-q")
    sys.path.insert(0, str(REPO))
    from buildbox.box import Box
    from buildbox.sandbox import Bind, Command, IdMap, Overlay, User
    from buildbox.store import Store
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "seen").write_text("from the host\n")
    store = Store(workspace.cache)
    layers = base_layers(workspace.cache)
    with Box(store, layers, label="test-plan") as box:
        box.bind(shared, "/mnt/shared")
        host_half = box.plan
        said = box.run(["cat", "/mnt/shared/seen"], what="cat", user="1000:1000", capture=True,
                       env={"PATH": "/usr/bin:/bin", "PLAN_TOKEN": SECRET})
        plan = box.last_plan
    assert said == "from the host\n"
    overlay = next(op for op in host_half.ops if isinstance(op, Overlay))
    assert overlay.layers == tuple(layers) and overlay.target == box.root
    assert [op for op in host_half.ops if isinstance(op, Bind)] == [Bind(shared, "/mnt/shared", readonly=True,
                                                                         idmapped=True)]
    lines = plan.describe()
    assert lines[0] == (f"overlay l0..l1 (top first): {layers[0]}, {layers[1]}; upper {box.upper} "
                        f"(nosuid,nodev, layers idmapped onto the box's ids) at {box.root}"), lines
    assert f"bind {shared} -> /mnt/shared (ro, nosuid,nodev, idmapped)" in lines, lines
    assert "user 1000:1000 (builder), groups 1000" in lines, lines
    assert any(line.startswith("seccomp filter of sandbox version") for line in lines), lines
    assert "run cat /mnt/shared/seen in /, env PATH PLAN_TOKEN" in lines, lines
    assert SECRET not in "\n".join(lines) and SECRET not in repr(plan)
    # What enter.py was given is the serialisation of the same plan.
    doc = plan.to_enter()
    ids = next(op for op in plan.ops if isinstance(op, IdMap))
    command = next(op for op in plan.ops if isinstance(op, Command))
    assert doc["root"] == str(box.root) and doc["ids"] == ids.line() and doc["user"] == [1000, 1000]
    assert doc["argv"] == list(command.argv) and doc["env"]["PLAN_TOKEN"] == SECRET
    assert doc["seccomp"] and doc["no_new_privs"] and doc["drop_capabilities"]
    assert next(op for op in plan.ops if isinstance(op, User)).name == "builder"


def test_debug_prints_the_build_box_plan_before_it_runs_and_no_env_value(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "plandebug", 'echo > "$OUT/x"')
    recipe.write_text(recipe.read_text().replace(
        "[build]\n", f'[build]\nnetwork = true\nenv = {{ PLAN_TOKEN = "{SECRET}" }}\n'))
    result = workspace.buildbox("run", recipe, "--debug", "-q")
    lines = [line.removeprefix("buildbox: debug: ") for line in result.stderr.splitlines()
             if line.startswith(("buildbox: debug: box build-plandebug: ", "box build-plandebug: "))]
    said = "\n".join(lines)
    assert re.search(r"^box build-plandebug: overlay l0\.\.l\d+ \(top first\): /", said, re.M), result.stderr
    assert re.search(r"^box build-plandebug: bind /\S*resolv.conf -> /etc/resolv.conf \(ro, nosuid,nodev, idmapped\)$",
                     said, re.M), said
    assert "box build-plandebug: network: pasta, outbound" in said, said
    assert "box build-plandebug: user 1000:1000 (builder), groups 1000" in said, said
    assert re.search(r"^box build-plandebug: run sh -e -c '\. /buildbox/build\.sh' plandebug in /build/src, "
                     r"env .*PLAN_TOKEN", said, re.M), said
    # The plan comes before the command: its overlay line before the build's first output.
    assert SECRET not in result.stderr and SECRET not in result.stdout


def test_a_failed_build_keeps_its_plan_and_its_hint_names_a_command_that_reruns_it(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "planfail", 'echo "left by $((6 * 7))" > part.txt\necho RERAN-$((40 + 2))\nexit 3')
    failed = workspace.buildbox("run", recipe, "-q", check=1)
    assert "command: setpriv" not in failed.stderr and "plan-" not in failed.stderr, failed.stderr
    hint = re.search(r"rerun it: `([^`]+)`, then, in (\S+), `([^`]+)` \(the box's plan: (\S+)\)", failed.stderr)
    assert hint, failed.stderr
    shell, cwd, command, plan_file = hint.groups()
    assert shell == f"buildbox shell --failed {recipe}"
    assert (cwd, command) == ("/build/src", "sh -e -c '. /buildbox/build.sh' planfail")
    saved = workspace.cache / "failed" / "planfail"
    assert Path(plan_file) == saved / "plan.txt"
    plan = (saved / "plan.txt").read_text()
    assert (saved / "failed.json").exists()
    assert f"# to get this box back: buildbox shell --failed {recipe}\n" in plan
    assert re.search(r"^box build-planfail: overlay l0\.\.l\d+ \(top first\): ", plan, re.M), plan
    assert "box build-planfail: user 1000:1000 (builder), groups 1000\n" in plan, plan
    assert f"box build-planfail: run {command} in {cwd}, env " in plan, plan
    # The hinted command brings the box back as the build left it, and the command then fails as
    # the build did.
    argv = shlex.split(shell)
    assert argv[0] == "buildbox"
    again = subprocess.run([sys.executable, "-m", *argv, "--cache", str(workspace.cache)], cwd=workspace.root,
                           input=f"cd {cwd} && cat part.txt; {command}; exit $?\n", capture_output=True,
                           text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert again.returncode == 3, again
    assert "left by 42" in again.stdout and "RERAN-42" in again.stdout, again
    assert mounts_under(workspace.cache) == []
