"""Signing keys: Ed25519 in Nix's formats, from the `cryptography` library.

A secret key file holds one line `NAME:base64(64 bytes: the seed, then the public key)`, mode
0600; a public key is `NAME:base64(32 bytes)`, as Nix's `nix key generate-secret` and
`trusted-public-keys` write them. A signature is `NAME:base64(64 bytes)`.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from buildbox.errors import InputError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


@dataclass(frozen=True)
class PublicKey:
    name: str
    raw: bytes   # 32 bytes

    def line(self) -> str:
        return f"{self.name}:{base64.b64encode(self.raw).decode()}"

    def verifies(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    name: str
    seed: bytes   # 32 bytes
    path: Path

    def public(self) -> PublicKey:
        return PublicKey(self.name, self._key().public_key().public_bytes_raw())

    def sign(self, data: bytes) -> str:
        """`NAME:base64(signature)` over data."""
        return f"{self.name}:{base64.b64encode(self._key().sign(data)).decode()}"

    def _key(self):   # type: ignore[no-untyped-def]
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        return Ed25519PrivateKey.from_private_bytes(self.seed)


def generate(name: str, folder: Path) -> tuple[Path, Path]:
    """Write folder/NAME.key (0600) and folder/NAME.pub; an existing key is never overwritten."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    if not NAME_RE.fullmatch(name):
        raise InputError(f"key name {name!r} is not a valid name", hint="use letters, digits and . _ + -, e.g. farm1")
    secret, public = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (secret, public):
        if os.path.lexists(path):
            raise InputError(f"{path} exists: a signing key is never overwritten",
                             hint="pick another name, or remove the old key first if it is really unused")
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    seed, raw = key.private_bytes_raw(), key.public_key().public_bytes_raw()
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{name}:{base64.b64encode(seed + raw).decode()}\n")
    fd = os.open(public, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(PublicKey(name, raw).line() + "\n")
    return secret, public


def load_signing_key(path: Path, where: str) -> SigningKey:
    """A secret key file, readable by its owner alone (as ssh wants of its keys)."""
    try:
        st = path.stat()
        text = path.read_text().strip() if stat.S_ISREG(st.st_mode) else ""
    except (OSError, UnicodeError) as err:
        raise InputError(f"signing-key {path}: {getattr(err, 'strerror', None) or 'not a text file'}", where=where,
                         hint="name the .key file `buildbox key generate NAME` wrote") from None
    if st.st_mode & 0o077:
        raise InputError(f"signing-key {path} can be read by other users (mode {stat.S_IMODE(st.st_mode):04o})",
                         where=where, hint=f"chmod 600 {path}")
    name, raw = _split(text)
    if name is None or raw is None or len(raw) != 64:
        raise InputError(f"signing-key {path} is not a secret key (NAME:base64 of 64 bytes)", where=where,
                         hint="name the .key file `buildbox key generate NAME` wrote, not the .pub")
    key = SigningKey(name, raw[:32], path)
    if key.public().raw != raw[32:]:
        raise InputError(f"signing-key {path}: its public half does not match its seed", where=where,
                         hint="the file is damaged: generate a new key")
    return key


def parse_public(text: str) -> PublicKey | None:
    """A `NAME:base64(32 bytes)` line, or None."""
    name, raw = _split(text.strip())
    return PublicKey(name, raw) if name is not None and raw is not None and len(raw) == 32 else None


def parse_signature(text: str) -> tuple[str, bytes] | None:
    name, raw = _split(text) if isinstance(text, str) else (None, None)
    return (name, raw) if name is not None and raw is not None and len(raw) == 64 else None


def _split(text: str) -> tuple[str | None, bytes | None]:
    name, colon, encoded = text.partition(":")
    if not colon or not NAME_RE.fullmatch(name):
        return None, None
    try:
        return name, base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None, None
