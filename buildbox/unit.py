"""The systemd unit of a service's runtime root (`buildbox install --unit`): the same root, user,
capabilities, state and limits as `buildbox exec` gives it, in systemd's words."""

from __future__ import annotations

import os
import re
from pathlib import Path

from buildbox.roots import BIN, RuntimeRoot
from buildbox.store import write_atomically

UNIT_DIR = Path("/etc/systemd/system")
PLAIN = re.compile(r"[A-Za-z0-9_./:=@+,-]+")


def unit_name(name: str) -> str:
    return f"buildbox-{name}.service"


def _value(text: str) -> str:
    """A value as systemd reads it: its specifiers (%) and variables ($) taken literally; never
    a line break, which would be a line of its own (recipe.py refuses them first)."""
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise ValueError(f"a control character in a unit value: {text!r}")
    return text.replace("%", "%%")


def _word(text: str) -> str:
    """One word of a command line or a list, quoted for systemd when it must be."""
    if PLAIN.fullmatch(text):
        return _value(text).replace("$", "$$")
    return '"' + _value(text).replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def unit_text(root: RuntimeRoot) -> str:
    service, recipe, user = root.service, root.recipe, root.user
    program = service.exec[0] if service.exec[0].startswith("/") else f"{BIN}/{service.exec[0]}"
    caps = " ".join(service.capabilities)
    state = root.path / "state"
    lines = [
        f"# Written by `buildbox install --unit {recipe.path}`: {recipe.name} in its runtime root.",
        "[Unit]",
        f"Description={_value(recipe.name)} (buildbox runtime root {_value(str(root.path))})",
        "After=network.target",
        "",
        "[Service]",
        f"ExecStart={' '.join(_word(word) for word in (program, *service.exec[1:]))}",
        f"RootDirectory={_value(str(root.path / 'current'))}",
        f"User={user.uid}",
        f"Group={user.uid}",
        f"Environment={_word('HOME=' + user.home)} LANG=C.UTF-8 PATH={BIN}",
        "NoNewPrivileges=yes",
        f"CapabilityBoundingSet={caps}",
        f"AmbientCapabilities={caps}",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        *([f"BindPaths={' '.join(_word(f'{state}{place}:{place}') for place in service.state)}",
           f"ReadWritePaths={' '.join(_word(place) for place in service.state)}"] if service.state else []),
        f"MemoryMax={recipe.limits.memory}",
        f"TasksMax={recipe.limits.processes}",
        f"LimitNOFILE={recipe.limits.files}",
        "Restart=on-failure",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def write_unit(root: RuntimeRoot, directory: Path = UNIT_DIR) -> Path:
    path = directory / unit_name(root.recipe.name)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(path, unit_text(root))
    os.chmod(path, 0o644)
    return path


def systemd_running() -> bool:
    """Whether PID 1 is systemd (sd_booted's test)."""
    return os.path.isdir("/run/systemd/system")
