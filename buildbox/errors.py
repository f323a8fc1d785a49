"""The errors buildbox shows to its users; this module imports nothing else of the package."""

from __future__ import annotations

import errno
import os


class BuildboxError(Exception):
    """Something the user must act on: what went wrong, where, and what to do about it."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return f"{text}; {self.hint}" if self.hint else text


class InputError(BuildboxError):
    """Bad input: a recipe, a base, a flag. Nothing was built or written."""

    exit_code = 2


class BuildFailed(BuildboxError):
    """A stage ran and failed: a download that did not verify, a build script, a verification."""

    exit_code = 1

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None,
                 tail: str = "") -> None:
        super().__init__(message, where=where, hint=hint)
        self.tail = tail


class Interrupted(BuildboxError):
    """Ctrl-C or SIGTERM: the running stage was stopped and its box taken down."""

    exit_code = 130


def os_failure(err: OSError, place: str | os.PathLike[str] | None = None) -> BuildboxError:
    """An error of the operating system as users see it, on one line: what, on which file, and
    for a full disk or a read-only filesystem, which filesystem and what to do. `place` is where
    the work went on (a stage's: the cache), for an error that names no file: a write() that
    failed names none."""
    where = err.filename or "a file"
    if err.errno == errno.ENOSPC:
        at = err.filename or place
        return BuildFailed(f"no space left on the filesystem at {mount_point(at)} while writing "
                           f"{'' if err.filename else 'in '}{at}" if at else "no space left on a filesystem",
                           hint="free some space (`buildbox gc --max-size SIZE` trims the cache) and run again")
    if err.errno == errno.EROFS:
        return InputError(f"{where} is on a read-only filesystem ({mount_point(where)})",
                          hint="point --cache and --out at writable directories")
    return BuildFailed(f"{where}: {err.strerror or err}")


def mount_point(path: str | os.PathLike[str]) -> str:
    """The mount point of the filesystem that holds path (or would hold it)."""
    here = os.path.abspath(path)
    while not os.path.exists(here):
        here = os.path.dirname(here)
    while here != "/" and not os.path.ismount(here):
        here = os.path.dirname(here)
    return here


class InternalError(BuildboxError):
    """A bug in buildbox: an exception none of its checks expected. Said on one line, exit 70
    (EX_SOFTWARE), never as a failed build (1) or bad input (2)."""

    exit_code = 70

    def __init__(self, err: BaseException) -> None:
        what = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        super().__init__(f"internal error: {' '.join(what.split())}",
                         hint="rerun with --debug for the traceback, and report it")
        self.original = err


def failure_of(err: BaseException, place: str | os.PathLike[str] | None = None) -> BuildboxError:
    """The one map from what went wrong to what the user is told, with its exit status: buildbox's
    own errors as they are, the operating system's in words (os_failure), Ctrl-C as Interrupted,
    anything else an internal error."""
    if isinstance(err, BuildboxError):
        return err
    if isinstance(err, KeyboardInterrupt):
        return Interrupted("interrupted")
    if isinstance(err, OSError):
        return os_failure(err, place)
    return InternalError(err)
