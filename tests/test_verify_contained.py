"""[verify] run commands are contained like builds: a host view of only what running a host
binary needs (no host unix socket, no /var, no ptys), and the recipe's memory and process limits."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest

from conftest import Workspace, shell_recipe

pytestmark = pytest.mark.integration


def verified(workspace: Workspace, name: str, commands: list[str], limits: str = "") -> Path:
    recipe = shell_recipe(workspace, name, 'echo tool > "$OUT/tool"')
    text = recipe.read_text() + "[verify]\nstatic = false\nrun = [" + ", ".join(json.dumps(c) for c in commands) + "]\n"
    recipe.write_text(text + (f"[limits]\n{limits}\n" if limits else ""))
    return recipe


def test_a_verify_command_reaches_no_host_socket_and_sees_no_host_state(workspace: Workspace, tmp_path: Path) -> None:
    place = tmp_path / "sock"
    place.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    path = place / "daemon.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, 0o777)   # a world-connectable daemon socket
    server.listen(4)
    accepted: list[bool] = []

    def accept() -> None:
        server.settimeout(30)
        try:
            server.accept()
            accepted.append(True)
        except OSError:
            pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    checks = [f"! perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Peer => \"{path}\") or exit 1'",
              "test ! -e /dev/ptmx", "test ! -e /var/log", "test -z \"$(ls -A /run)$(ls -A /home)$(ls -A /root)$(ls -A /var)\"",
              "test -x /bin/sh", "test -r /etc/passwd", f"test ! -e {workspace.cache}"]
    result = workspace.buildbox("run", verified(workspace, "nosock", checks), check=None)
    server.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert not accepted, "a verify command connected to a host unix socket"


def test_a_verify_command_is_held_to_the_recipes_memory_limit(workspace: Workspace) -> None:
    hog = "perl -e '$x = \"a\" x 400000000; print length $x'"
    result = workspace.buildbox("run", verified(workspace, "hog", [hog], 'memory = "96M"'), check=1)
    line = result.stderr.strip().splitlines()[-1]
    assert "it hit its memory limit ([limits] memory = " in line, line
