"""What buildbox tells the person at the terminal: steps, notes and warnings, all on stderr."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator

_lock = threading.Lock()
quiet = False
debugging = False   # --debug: tracebacks, and what each box is made of


# Control characters a terminal acts on (C0 but tab and newline, DEL, C1): shown, never obeyed.
_CONTROLS = {code: f"^{chr(code ^ 0x40)}" for code in (*range(0x20), 0x7F) if code not in (0x09, 0x0A)}
_CONTROLS.update({code: f"\\x{code:02x}" for code in range(0x80, 0xA0)})


def printable(text: str) -> str:
    """text with every terminal control character shown as ^X or \\xNN (as git does with what a
    remote sends): a build's output or a tarball's member name cannot move the cursor, retitle
    the window, or answer for the user."""
    return text.replace("\r\n", "\n").translate(_CONTROLS)


_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escaped(name: str) -> str:
    """A name (a file, a path, a ref) on one line: \\n, \\t and \\r, other control and unprintable
    characters as \\xNN or \\uNNNN, the bytes that are not UTF-8 (os.fsdecode's surrogates) as
    \\xNN. A file in $OUT named "a\\nb" cannot break the one-line error or the `sha256  path`
    line that names it, nor move the cursor."""
    if name.isprintable():
        return name
    shown = []
    for char in name:
        code = ord(char)
        if char.isprintable():
            shown.append(char)
        elif char in _NAMED:
            shown.append(_NAMED[char])
        elif 0xDC80 <= code <= 0xDCFF:   # surrogateescape: the byte os.fsdecode could not decode
            shown.append(f"\\x{code - 0xDC00:02x}")
        else:
            shown.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(shown)


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
    say(f"buildbox: error: {escaped(str(err))}")   # one line, whatever a name in it holds


def debug(text: str) -> None:
    if debugging:
        say(f"buildbox: debug: {text}")


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
