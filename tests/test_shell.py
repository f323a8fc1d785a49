"""`buildbox shell`: a person types into the recipe's prepared box, under tmux, as people do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
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


@pytest.mark.parametrize("flags,prompt,uid", [((), "shelly:~ $", "1000"), (("--root",), "shelly:~ #", "0")])
def test_the_shell_opens_in_the_prepared_box_with_a_prompt_naming_it_and_leaves_nothing(
        workspace: Workspace, flags: tuple[str, ...], prompt: str, uid: str) -> None:
    recipe = shell_recipe(workspace, "shelly", 'echo > "$OUT/x"')
    session = f"bbtest{os.getpid()}{len(flags)}"
    command = " ".join([sys.executable, "-m", "buildbox", "shell", *flags, str(recipe), "--cache", str(workspace.cache),
                        ";", "echo", "SHELL-ENDED;", "sleep", "60"])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "30",
                    f"cd {workspace.root} && PYTHONPATH={REPO} {command}"], check=True)
    try:
        wait_for(session, prompt)
        assert mounts_under(workspace.cache), "the box is mounted while the shell runs"
        subprocess.run(["tmux", "send-keys", "-t", session, "echo MARK-$(id -u)-$(hostname); cat /build/src/README",
                        "Enter"], check=True)
        shown = wait_for(session, f"MARK-{uid}-buildbox")
        assert "nothing to see" in shown, shown
        subprocess.run(["tmux", "send-keys", "-t", session, "exit", "Enter"], check=True)
        wait_for(session, "SHELL-ENDED")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert mounts_under(workspace.cache) == []
    assert list((workspace.cache / "boxes").iterdir()) == []
