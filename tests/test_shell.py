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

from conftest import REPO, Workspace, mounts_under, shell_recipe

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux (apt-get install tmux)")]


@pytest.fixture(scope="module", autouse=True)
def tmux_server() -> Iterator[None]:
    """One tmux server for the module: a server that exits with its last session races the next
    test's new-session ("server exited unexpectedly")."""
    name = f"bbkeep{os.getpid()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "sleep 3600"], check=True)
    yield
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


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


# A command planted in the box pushes keys into its terminal (TIOCSTI: plainly, and with bit 32 of
# the request set, which a seccomp rule comparing all 64 bits lets through while the kernel reads
# 32), then kills the shell, so that the keys wait for whoever reads the terminal next.
PLANTED = r"""#!/bin/sh
perl -e 'for $bit (0, 1 << 32) { $n = 0; for (split //, "touch $ENV{MARK}\n") { $n++ if syscall(16, 0, 0x5412 | $bit, $_) != -1 } print $n ? "pushed:$bit\n" : "refused:$bit:$!\n" }'
kill -9 $PPID
"""


@pytest.mark.parametrize("flags,command", [((), "ls"), (("--root",), "/home/builder/bin/ls")])
def test_keys_a_box_pushes_into_its_terminal_never_reach_the_users_shell(
        workspace: Workspace, tmp_path: Path, flags: tuple[str, ...], command: str) -> None:
    mark = tmp_path / "host-ran-it"
    script = f"cat > \"$HOME/bin/ls\" <<'PLANT'\n{PLANTED}PLANT\nchmod 755 \"$HOME/bin/ls\"\nexit 3"
    recipe = shell_recipe(workspace, "planter", script)
    recipe.write_text(recipe.read_text().replace("[build]\n", f'[build]\nenv = {{ MARK = "{mark}" }}\n'))
    shutil.rmtree(workspace.cache / "failed" / "planter", ignore_errors=True)
    workspace.buildbox("run", recipe, "-q", check=1)
    # The user's own interactive shell runs buildbox and reads the terminal after it, as at a desk.
    session = f"bbkeys{os.getpid()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "30",
                    "bash --norc --noprofile -i"], check=True)
    try:
        type_in(session, f"cd {workspace.root} && PYTHONPATH={REPO} {sys.executable} -m buildbox shell --failed "
                         f"{' '.join(flags)} {recipe} --cache {workspace.cache}; echo SHELL-$((1 + 1))-ENDED")
        wait_for(session, "planter:/build/src")
        type_in(session, command)
        wait_for(session, "SHELL-2-ENDED")
        type_in(session, "echo HOST-SHELL-$((6 * 7))")
        shown = wait_for(session, "HOST-SHELL-42")
        assert not mark.exists(), shown
        if not flags:   # the build user's seccomp filter refuses the ioctl both ways
            assert "refused:0:Operation not permitted" in shown and \
                f"refused:{1 << 32}:Operation not permitted" in shown, shown
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert mounts_under(workspace.cache) == []
