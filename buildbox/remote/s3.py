"""The remote cache in an S3 bucket (s3://BUCKET/PREFIX), through boto3 and its usual credentials
(environment, ~/.aws); write-once by put_object's IfNoneMatch="*"."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from buildbox.remote.transport import TIMEOUT, Unreachable, WriteRefused

CHUNK = 1 << 20


class S3:
    def __init__(self, url: str, endpoint: str | None) -> None:
        import boto3
        from botocore.config import Config
        parts = urlparse(url)
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        session = boto3.session.Session()
        self.client = session.client("s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1",
                                     config=Config(connect_timeout=TIMEOUT[0], read_timeout=TIMEOUT[1],
                                                   retries={"max_attempts": 1}))

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _call(self, what: str, path: str, **options: object):   # type: ignore[no-untyped-def]
        """The client's call, None for a missing object; Unreachable or WriteRefused otherwise."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return getattr(self.client, what)(Bucket=self.bucket, Key=self._key(path), **options)
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = err.response.get("Error", {}).get("Code", "")
            if status == 404 or code in ("NoSuchKey", "404", "NotFound"):
                return None
            if status == 412 or code == "PreconditionFailed":
                return False
            if status >= 500:
                raise Unreachable(f"S3 {code or status} for {path}") from None
            raise (WriteRefused if what == "put_object" else Unreachable)(f"S3 {code or status} for {path}") from None
        except BotoCoreError as err:
            raise Unreachable(type(err).__name__) from None

    def get(self, path: str, limit: int) -> bytes | None:
        found = self._call("get_object", path)
        if not found:
            return None
        from botocore.exceptions import BotoCoreError
        try:
            with found["Body"] as body:
                return body.read(limit + 1)
        except BotoCoreError as err:   # a timeout or a dropped connection while reading
            raise Unreachable(type(err).__name__) from None

    def download(self, path: str, dest: Path, limit: int) -> bool:
        found = self._call("get_object", path)
        if not found:
            return False
        from botocore.exceptions import BotoCoreError
        written = 0
        try:
            with found["Body"] as body, open(dest, "wb") as f:
                while written <= limit:
                    chunk = body.read(min(CHUNK, limit + 1 - written))
                    if not chunk:
                        break
                    f.write(chunk)
                    written += len(chunk)
        except BotoCoreError as err:
            raise Unreachable(type(err).__name__) from None
        return True

    def exists(self, path: str) -> bool:
        return bool(self._call("head_object", path))

    def put(self, path: str, data: bytes | Path, *, once: bool) -> bool:
        options = {"IfNoneMatch": "*"} if once else {}
        if isinstance(data, Path):
            with open(data, "rb") as body:
                return self._call("put_object", path, Body=body, **options) is not False
        return self._call("put_object", path, Body=data, **options) is not False
