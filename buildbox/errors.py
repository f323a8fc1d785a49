"""The errors buildbox shows to its users; this module imports nothing else of the package."""

from __future__ import annotations


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
