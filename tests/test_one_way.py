"""One way through the code: keys computed without I/O, one map from errors to exit statuses
(an unexpected exception is an internal error, exit 70, on one line, from `run`, `-j 2` and
dodo.py alike), and one list of the variables a fetch recipe's build may not set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from buildbox.constants import FETCH_ENV, OFFLINE_ENV
from buildbox.errors import InputError
from buildbox.lock import load_recipe
from conftest import GOOD, REPO, Workspace, shell_recipe, write

# Computes every stage key of the recipe given, on the cache given, under an audit hook that
# records what must not happen: a process started, a program executed, a foreign function
# called (mount, unshare), a file opened for writing or anything opened under the cache, a
# directory made. Run in a child: an audit hook cannot be removed.
AUDITED = textwrap.dedent("""
    import sys
    from pathlib import Path
    recipe_path, cache = Path(sys.argv[1]), str(Path(sys.argv[2]).absolute())
    from buildbox.lock import load_recipe
    from buildbox.store import Store
    from buildbox.tasks import Graph
    recipe = load_recipe(recipe_path)
    graph = Graph(Store(Path(cache)), [recipe], Path("out"))
    seen = []

    def hook(event, args):
        if event in ("subprocess.Popen", "os.system", "os.posix_spawn", "os.fork", "os.mkdir",
                     "ctypes.dlopen", "ctypes.call_function") or event.startswith("os.exec"):
            seen.append(f"{event} {args!r:.120}")
        elif event == "open":
            path, mode = str(args[0]), args[1]
            writing = isinstance(mode, str) and any(c in mode for c in "wax+")
            flags = args[2] if isinstance(args[2], int) else 0
            if writing or flags & 0o3 or path.startswith(cache):
                seen.append(f"open {path} {mode!r} {flags:o}")
    sys.addaudithook(hook)
    stages = graph.stages(recipe)
    print("\\n".join(seen) if seen else "nothing")
    print("keys:", " ".join(f"{s.name}={s.key if isinstance(s.key, str) else '-'}" for s in stages.values()))
""")


def keys_under_audit(recipe: Path, cache: Path) -> tuple[str, str]:
    result = subprocess.run([sys.executable, "-c", AUDITED, str(recipe), str(cache)], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=recipe.parent, timeout=60)
    assert result.returncode == 0, result.stderr
    seen, keys = result.stdout.rstrip("\n").rsplit("\n", 1)
    return seen, keys


def test_the_keys_of_a_locked_recipe_need_no_process_no_mount_and_nothing_of_the_cache(tmp_path: Path) -> None:
    from test_keys import GOLDEN, locked_recipe
    recipe = locked_recipe(tmp_path / "checkout")
    seen, keys = keys_under_audit(tmp_path / "checkout" / "hello.toml", tmp_path / "empty-cache")
    assert seen == "nothing"
    assert keys == "keys: " + " ".join(f"{stage}={key}" for stage, key in GOLDEN.items())
    assert not (tmp_path / "empty-cache").exists() and recipe.lock


def test_the_keys_of_an_unlocked_git_recipe_say_not_resolved_instead_of_asking_the_repository(tmp_path: Path) -> None:
    # Before, computing the source key resolved the ref: a box, mounts and `git ls-remote`.
    write(tmp_path, GOOD)
    seen, keys = keys_under_audit(tmp_path / "hello.toml", tmp_path / "empty-cache")
    assert seen == "nothing"
    assert "source=- build=-" in keys and "layer=-" not in keys


@pytest.mark.parametrize("name", sorted({*FETCH_ENV, *OFFLINE_ENV}))
def test_a_fetch_recipe_whose_build_env_names_a_variable_buildbox_sets_is_refused_on_its_line(
        tmp_path: Path, name: str) -> None:
    # Before, GOPROXY was refused but PIP_NO_INDEX or npm_config_offline silently overridden.
    recipe = write(tmp_path, f"""\
        [source]
        git = "https://example.org/x.git"
        [fetch]
        script = "true"
        [build]
        env = {{ {name} = "0" }}
        script = "true"
        """)
    with pytest.raises(InputError) as refused:
        load_recipe(recipe)
    assert refused.value.where == f"{recipe}:6"
    assert f"{name} is set by buildbox for the build of a recipe with [fetch]" in refused.value.message


# -- the internal-error path ---------------------------------------------------------------------
INTERNAL = "buildbox: error: internal error: RuntimeError: BUILDBOX_TEST_FAULT asked for a fault in the build stage"


def faulty(ws: Workspace, *args: str | Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "buildbox", *map(str, args), "--cache", str(ws.cache)]
    return subprocess.run(argv, cwd=ws.root, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=str(REPO), BUILDBOX_TEST_FAULT="build"))


@pytest.mark.integration
def test_an_unexpected_exception_in_a_stage_is_an_internal_error_exit_70_on_one_line(workspace: Workspace) -> None:
    one = shell_recipe(workspace, "faulty", 'echo > "$OUT/x"')
    two = shell_recipe(workspace, "faulty-too", 'echo 2 > "$OUT/x"')
    for args in (["run", one], ["run", "-j", "2", one, two]):
        result = faulty(workspace, *args)
        assert result.returncode == 70, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("buildbox: error")]
        assert errors == [f"{INTERNAL}; rerun with --debug for the traceback, and report it"], result.stderr
        assert "Traceback" not in result.stderr
    debug = faulty(workspace, "run", one, "--debug")
    assert debug.returncode == 70 and "Traceback" in debug.stderr


@pytest.mark.integration
def test_dodo_py_exits_70_on_an_internal_error_too(workspace: Workspace) -> None:
    shutil.copy(REPO / "dodo.py", workspace.root / "dodo.py")
    shell_recipe(workspace, "faulty", 'echo > "$OUT/x"')
    doit = Path(sys.executable).with_name("doit")
    result = subprocess.run([doit, "-f", "dodo.py"], cwd=workspace.root, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PYTHONPATH=str(REPO), BUILDBOX_TEST_FAULT="build",
                                     BUILDBOX_CACHE=str(workspace.cache)))
    assert result.returncode == 70, result.stdout + result.stderr
    assert INTERNAL in result.stdout + result.stderr
