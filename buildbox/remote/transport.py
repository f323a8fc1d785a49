"""How the remote cache is reached: the few operations its records need, over WebDAV (http, https)
or S3. A transport says "missing" (None, False) for what is not there and raises Unreachable
for a server that is down, slow or failing (5xx): the caller then stops asking for the run."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from buildbox.config import Remote

TIMEOUT = (5, 60)   # seconds: to connect, and between bytes


class Unreachable(Exception):
    """The server is down, timed out or failed (5xx); the message never holds credentials."""


class WriteRefused(Exception):
    """The server answers but will not take the write (401, 403, 405: a read-only consumer)."""


class Transport(Protocol):
    def get(self, path: str, limit: int) -> bytes | None:
        """The object at path, at most limit + 1 bytes of it (the caller tells a bigger one); None if missing."""

    def download(self, path: str, dest: Path, limit: int) -> bool:
        """Write the object at path to dest, at most limit + 1 bytes; False if missing."""

    def exists(self, path: str) -> bool: ...

    def put(self, path: str, data: bytes | Path, *, once: bool) -> bool:
        """Write the object; with once, never over an existing one: False if it was there."""


def connect(remote: Remote) -> Transport:
    if remote.url.startswith("s3://"):
        from buildbox.remote.s3 import S3
        return S3(remote.url, remote.endpoint)
    from buildbox.remote.webdav import WebDav
    return WebDav(remote.url)
