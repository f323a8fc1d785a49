"""The fixed facts every stage shares: where things are in a box, the build user, the one time.

A leaf: it imports nothing of buildbox, so every module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

BUILD_DIR = "/build"
SRC = f"{BUILD_DIR}/src"        # the source tree the build runs in
OUT = f"{BUILD_DIR}/out"        # $OUT: what the build leaves here is copied out
FETCH = f"{BUILD_DIR}/fetch"    # $FETCH: what a [fetch] script downloads, read-only to the build
# The one fixed time of buildbox: SOURCE_DATE_EPOCH of bootstraps and builds, the artifacts' mtime.
EPOCH = 1700000000


@dataclass(frozen=True)
class BuildUser:
    name: str
    uid: int
    gid: int

    @property
    def home(self) -> str:
        return f"/home/{self.name}"

    @property
    def spec(self) -> str:
        return f"{self.uid}:{self.gid}"

    @property
    def path(self) -> str:
        return f"{self.home}/bin:/usr/local/bin:/usr/bin:/bin"

    def login_env(self) -> dict[str, str]:
        """The environment of a login as this user: what a doas `setenv` rule gives on OpenBSD."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "PATH": self.path,
                "SHELL": "/bin/sh", "LANG": "C.UTF-8", "TZ": "UTC"}


BUILDER = BuildUser("builder", 1000, 1000)
