"""`buildbox shell`: a person types into the recipe's prepared box, under tmux, as people do."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, Workspace, mounts_under
from test_lifecycle import shell_recipe

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux (apt-get install tmux)")]


def screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-t", session, "-p"], capture_output=True, text=True).stdout


def wait_for(session: str, text: str, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        shown = screen(session)
        if text in shown:
            return shown
        time.sleep(0.2)
    raise AssertionError(f"never saw {text!r} on the screen:\n{screen(session)}")


@contextlib.contextmanager
def shell_in_tmux(workspace: Workspace, *args: str | Path) -> Iterator[str]:
    """`buildbox shell ARGS` in a tmux session, as a person would start it; yields the session."""
    session = f"bbtest{os.getpid()}{abs(hash(args)) % 1000}"
    command = " ".join([sys.executable, "-m", "buildbox", "shell", *map(str, args), "--cache", str(workspace.cache),
                        ";", "echo", "SHELL-ENDED;", "sleep", "60"])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "30",
                    f"cd {workspace.root} && PYTHONPATH={REPO} {command}"], check=True)
    try:
        yield session
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def type_in(session: str, keys: str) -> None:
    subprocess.run(["tmux", "send-keys", "-t", session, keys, "Enter"], check=True)


@pytest.mark.parametrize("flags,prompt,uid", [((), "shelly:~ $", "1000"), (("--root",), "shelly:~ #", "0")])
def test_the_shell_opens_in_the_prepared_box_with_a_prompt_naming_it_and_leaves_nothing(
        workspace: Workspace, flags: tuple[str, ...], prompt: str, uid: str) -> None:
    recipe = shell_recipe(workspace, "shelly", 'echo > "$OUT/x"')
    with shell_in_tmux(workspace, *flags, recipe) as session:
        wait_for(session, prompt)
        assert mounts_under(workspace.cache), "the box is mounted while the shell runs"
        type_in(session, "echo MARK-$(id -u)-$(hostname); cat /build/src/README")
        shown = wait_for(session, "nothing to see")
        assert f"MARK-{uid}-buildbox" in shown, shown
        type_in(session, "exit")
        wait_for(session, "SHELL-ENDED")
    assert mounts_under(workspace.cache) == []
    assert list((workspace.cache / "boxes").iterdir()) == []


def test_after_a_failed_build_shell_failed_enters_the_box_the_build_left(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "halfway", 'echo half-done > half.txt\necho "$HOME" > "$HOME/seen"\nexit 3')
    shutil.rmtree(workspace.cache / "failed" / "halfway", ignore_errors=True)   # the session's cache is shared
    never = workspace.buildbox("shell", "--failed", recipe, check=2)
    assert "halfway has no failed build" in never.stderr and "Traceback" not in never.stderr

    failed = workspace.buildbox("run", recipe, "-q", check=1)
    assert f"`buildbox shell --failed {recipe}`" in failed.stderr, failed.stderr
    for attempt in range(2):   # the failed box stays for as many looks as wanted
        with shell_in_tmux(workspace, "--failed", recipe) as session:
            wait_for(session, "halfway:/build/src $")
            type_in(session, "cat half.txt ~/seen; echo MARK-$(id -u)")
            shown = wait_for(session, "MARK-1000\n")
            assert "half-done\n/home/builder\nMARK-1000" in shown, shown
            type_in(session, "exit")
            wait_for(session, "SHELL-ENDED")
        assert mounts_under(workspace.cache) == []
