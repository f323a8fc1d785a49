"""What buildbox tells the person at the terminal: steps, notes and warnings, all on stderr."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

_lock = threading.Lock()
quiet = False


def say(text: str) -> None:
    """Print one line for the user (stderr keeps stdout for results)."""
    with _lock:
        print(text, file=sys.stderr, flush=True)


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
