"""buildbox.toml: the machine's settings, for now the remote cache.

The first of `--config FILE`, `$BUILDBOX_CONFIG` and `./buildbox.toml` is read (the first two
must exist); every mistake is an error at file:line, as in a recipe. Flags override the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from buildbox.errors import InputError
from buildbox.recipe import Doc
from buildbox.signing import PublicKey, SigningKey, load_signing_key, parse_public

CONFIG_ENV = "BUILDBOX_CONFIG"
DEFAULT = Path("buildbox.toml")


@dataclass(frozen=True)
class Remote:
    """Where the shared cache is, whether this machine pushes to it, with which key, and whose
    signatures it takes."""
    url: str
    endpoint: str | None = None
    push: bool = False
    signing_key: SigningKey | None = None
    trusted: tuple[PublicKey, ...] = ()
    where: str = ""   # file:line of the url, for errors

    @property
    def shown(self) -> str:
        """The URL without credentials (user:password@), for messages and logs."""
        return shown_url(self.url)

    def trusts(self) -> dict[str, PublicKey]:
        """The trusted keys by name: those configured, and this machine's own."""
        keys = {key.name: key for key in self.trusted}
        if self.signing_key:
            keys.setdefault(self.signing_key.name, self.signing_key.public())
        return keys


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    remote: Remote | None = None


def shown_url(url: str) -> str:
    """url without its user and password."""
    parts = urlparse(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="…@" + parts.netloc.rpartition("@")[2]).geturl()


def find(flag: Path | None) -> Path | None:
    """The config file to read: --config, then $BUILDBOX_CONFIG, then ./buildbox.toml if there."""
    chosen = flag or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if chosen is not None:
        if not chosen.is_file():
            source = "--config" if flag else f"${CONFIG_ENV}"
            raise InputError(f"{source} {chosen}: no such file", hint="name a buildbox.toml, or leave it out")
        return chosen
    return DEFAULT if DEFAULT.is_file() else None


def load(flag: Path | None = None) -> Config:
    path = find(flag)
    if path is None:
        return Config()
    doc = Doc(path)
    doc.check_keys(doc.data, (), {"remote": dict})
    table = doc.data.get("remote")
    if table is None:
        return Config(path)
    section = ("remote",)
    doc.check_keys(table, section, {"url": str, "endpoint": str, "push": bool, "signing-key": str,
                                     "trusted-keys": list})
    if "url" not in table:
        doc.fail(section, None, "[remote] has no url", 'add url = "https://cache.example.org/buildbox" or "s3://bucket/prefix"')
    url = table["url"]
    problem = url_problem(url)
    if problem:
        doc.fail(section, "url", f"url {shown_url(url)!r} {problem}", 'write url = "https://HOST/PATH" or "s3://BUCKET/PREFIX"')
    endpoint = table.get("endpoint")
    if endpoint is not None and (urlparse(endpoint).scheme not in ("http", "https") or not urlparse(endpoint).netloc):
        doc.fail(section, "endpoint", f"endpoint {endpoint!r} is not an http(s) URL", 'write endpoint = "http://127.0.0.1:9000"')
    if endpoint is not None and not url.startswith("s3://"):
        doc.fail(section, "endpoint", "endpoint goes with an s3:// url", "remove endpoint")
    here = path.parent
    key = None
    if "signing-key" in table:
        key = load_signing_key(here / table["signing-key"], f"{path}:{doc.line_of(section, 'signing-key')}")
    if table.get("push") and key is None:
        doc.fail(section, "push", "push = true needs a signing key", 'add signing-key = "/etc/buildbox/NAME.key" '
                 "(buildbox key generate NAME writes one)")
    trusted: list[PublicKey] = []
    for item in table.get("trusted-keys", []):
        found = parse_public(item)
        if found is None:
            file = here / item
            if not file.is_file():
                doc.fail(section, "trusted-keys", f"trusted-keys entry {item!r} is neither NAME:BASE64 (32 bytes) nor a file",
                         "give a NAME.pub line as `buildbox key generate` writes it, or the path of a file of them")
            try:
                text = file.read_text()
            except (OSError, UnicodeError) as err:
                raise InputError(f"trusted-keys file {file} cannot be read ({getattr(err, 'strerror', None) or 'not text'})",
                                 where=f"{path}:{doc.line_of(section, 'trusted-keys')}",
                                 hint="name a file of NAME:BASE64 lines") from None
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    found = parse_public(line)
                    if found is None:
                        raise InputError(f"not a public key (NAME:BASE64 of 32 bytes): {line.strip()[:40]!r}",
                                         where=f"{file}:{number}", hint="one NAME.pub line per key")
                    trusted.append(found)
        else:
            trusted.append(found)
    return Config(path, Remote(url, endpoint, bool(table.get("push", False)), key, tuple(trusted),
                               f"{path}:{doc.line_of(section, 'url')}"))


def url_problem(url: str) -> str | None:
    parts = urlparse(url)
    try:
        parts.port   # raises on a port that is not a number from 0 to 65535
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    if parts.scheme == "s3" and re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,62}", parts.netloc or ""):
        return None
    return "is not an http(s):// or s3://bucket/prefix URL"


def remote(config: Config, *, url: str | None = None, off: bool = False, push: bool = False) -> Remote | None:
    """The remote a command uses: the file's, with --remote URL, --no-remote and --push applied."""
    if off:
        return None
    found = config.remote
    if url:
        problem = url_problem(url)
        if problem:
            raise InputError(f"--remote {shown_url(url)!r} {problem}", hint="give --remote https://HOST/PATH or s3://BUCKET/PREFIX")
        found = replace(found, url=url, where="--remote") if found else Remote(url, where="--remote")
    if push:
        if found is None:
            raise InputError("--push names no remote cache", hint="give --remote URL, or set [remote] url in buildbox.toml")
        if found.signing_key is None:
            raise InputError("--push needs a signing key", hint="set signing-key in [remote] of buildbox.toml "
                             "(buildbox key generate NAME writes one)")
        found = replace(found, push=True)
    return found
