"""The remote cache over HTTP: GET and HEAD to read, WebDAV PUT to write (nginx's dav module, or
any server that takes PUT). Credentials: ~/.netrc (requests reads it) or $BUILDBOX_REMOTE_TOKEN,
sent as a bearer token; neither is ever printed."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import requests

from buildbox.remote.transport import TIMEOUT, Unreachable, WriteRefused

TOKEN_ENV = "BUILDBOX_REMOTE_TOKEN"
CHUNK = 1 << 20


class WebDav:
    def __init__(self, url: str) -> None:
        self.base = url.rstrip("/")
        self.local = threading.local()   # a requests session per thread

    def _session(self) -> requests.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            token = os.environ.get(TOKEN_ENV)
            if token:
                session.headers["Authorization"] = f"Bearer {token}"
        return session

    def _request(self, method: str, path: str, **options: object) -> requests.Response:
        try:
            response = self._session().request(method, f"{self.base}/{path}", timeout=TIMEOUT,
                                               allow_redirects=False, **options)   # type: ignore[arg-type]
        except requests.RequestException as err:
            raise Unreachable(_reason(err)) from None
        if response.status_code >= 500:
            response.close()
            raise Unreachable(f"HTTP {response.status_code} for {method} {path}")
        return response

    def get(self, path: str, limit: int) -> bytes | None:
        with self._request("GET", path, stream=True) as response:
            if response.status_code == 404:
                return None
            _expect(response, "GET", path)
            data = bytearray()
            try:
                for chunk in response.iter_content(CHUNK):
                    data += chunk
                    if len(data) > limit:
                        break
            except requests.RequestException as err:
                raise Unreachable(_reason(err)) from None
            return bytes(data[:limit + 1])

    def download(self, path: str, dest: Path, limit: int) -> bool:
        with self._request("GET", path, stream=True) as response:
            if response.status_code == 404:
                return False
            _expect(response, "GET", path)
            written = 0
            try:
                with open(dest, "wb") as f:
                    for chunk in response.iter_content(CHUNK):
                        f.write(chunk[:limit + 1 - written])
                        written += len(chunk)
                        if written > limit:
                            break
            except requests.RequestException as err:
                raise Unreachable(_reason(err)) from None
            return True

    def exists(self, path: str) -> bool:
        with self._request("HEAD", path) as response:
            if response.status_code == 404:
                return False
            _expect(response, "HEAD", path)
            return True

    def put(self, path: str, data: bytes | Path, *, once: bool) -> bool:
        headers = {"If-None-Match": "*"} if once else {}
        if isinstance(data, Path):
            with open(data, "rb") as body:
                response = self._request("PUT", path, data=body, headers=headers)
        else:
            response = self._request("PUT", path, data=data, headers=headers)
        with response:
            if response.status_code == 412:
                return False
            if response.status_code in (401, 403, 405):
                raise WriteRefused(f"HTTP {response.status_code} for PUT {path}")
            _expect(response, "PUT", path)
            return True


def _expect(response: requests.Response, method: str, path: str) -> None:
    if not 200 <= response.status_code < 300:
        raise (WriteRefused if method == "PUT" else Unreachable)(f"HTTP {response.status_code} for {method} {path}")


def _reason(err: requests.RequestException) -> str:
    """What went wrong, without the URL (it may hold credentials)."""
    if isinstance(err, requests.Timeout):
        return "timed out"
    if isinstance(err, requests.ConnectionError):
        return "connection failed"
    return type(err).__name__
