"""What buildbox tells the person at the terminal: steps, notes and warnings, all on stderr."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

_lock = threading.Lock()
quiet = False


# Control characters a terminal acts on (C0 but tab and newline, DEL, C1): shown, never obeyed.
_CONTROLS = {code: f"^{chr(code ^ 0x40)}" for code in (*range(0x20), 0x7F) if code not in (0x09, 0x0A)}
_CONTROLS.update({code: f"\\x{code:02x}" for code in range(0x80, 0xA0)})


def printable(text: str) -> str:
    """text with every terminal control character shown as ^X or \\xNN (as git does with what a
    remote sends): a build's output or a tarball's member name cannot move the cursor, retitle
    the window, or answer for the user."""
    return text.replace("\r\n", "\n").translate(_CONTROLS)


def say(text: str) -> None:
    """Print one line for the user (stderr keeps stdout for results)."""
    with _lock:
        print(printable(text), file=sys.stderr, flush=True)


def note(text: str) -> None:
    if not quiet:
        say(f"    {text}")


def error(err: Exception) -> None:
    """Show an error as users see it: the output's last lines, then the one line that says it all."""
    tail = getattr(err, "tail", "")
    if tail:
        say("---- last lines of output ----\n" + tail + "\n------------------------------")
    say(f"buildbox: error: {err}")


def warn(text: str) -> None:
    say(f"buildbox: warning: {text}")


@contextlib.contextmanager
def step(text: str) -> Iterator[None]:
    """Announce a step and, when it ends well, how long it took; a failing step is left to the error."""
    if not quiet:
        say(f"==> {text}")
    started = time.monotonic()
    yield
    if not quiet:
        say(f"    done in {time.monotonic() - started:.1f}s: {text}")
