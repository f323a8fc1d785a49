"""The remote cache's records, and every check a record from another machine must pass.

    cas/<sha256>                 a file of a build entry, by the sha256 of its bytes
    ac/<build key>.json          {document, manifest, files, signer, signatures}
    att/<build key>/<name>.json  {build_key, digests, signer, signatures}: "rebuilt it, got these"

A record is signed over the canonical JSON of all of it but `signatures` (keys.key's form), by
`NAME:base64(ed25519 signature)`. Nothing of a record is used before a trusted key's signature
verifies, its document is this machine's for the key, and its file list is well formed; its
blobs are then re-hashed as they are written (remote/__init__.py).
"""

from __future__ import annotations

import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from buildbox.keys import canonical, key as key_of
from buildbox.records import MANIFEST, Manifest
from buildbox.signing import PublicKey, SigningKey, parse_signature
from buildbox.store import INPUTS, file_sha256

MAX_RECORD = 1 << 20   # bytes: a record larger than this is refused unread
MAX_FILES = 10_000
SHA256_RE = re.compile(r"[0-9a-f]{64}")
CARRIED = (MANIFEST, INPUTS)   # carried in the record itself, not as blobs
LOCAL_ONLY = ("from_remote",)  # manifest fields that say where this machine got the entry


class Refused(Exception):
    """A record that is not taken: why, in words for the warning."""


@dataclass(frozen=True)
class Entry:
    """A build entry as the remote cache has it, its signature checked."""
    key: str
    document: dict[str, Any]
    manifest: dict[str, Any]
    files: dict[str, dict[str, Any]]   # rel -> {sha256, size, mode}
    signer: str

    def digests(self) -> dict[str, str]:
        """The artifacts' sha256, by their path under out/NAME."""
        return {rel.removeprefix("files/"): fact["sha256"] for rel, fact in sorted(self.files.items())
                if rel.startswith("files/")}


def signed(body: dict[str, Any], key: SigningKey) -> bytes:
    """The record: body with its signer, signed; as the bytes to upload."""
    body = {**body, "signer": key.name}
    return json.dumps({**body, "signatures": [key.sign(canonical(body))]}, sort_keys=True, indent=1).encode() + b"\n"


def files_of(entry: Path) -> dict[str, dict[str, Any]]:
    """Every file of a local build entry but those the record carries, with its sha256, size and mode."""
    found = {}
    for path in sorted(p for p in entry.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = str(path.relative_to(entry))
        if rel in CARRIED:
            continue
        st = path.stat()
        found[rel] = {"sha256": file_sha256(path), "size": st.st_size, "mode": stat.S_IMODE(st.st_mode) & 0o755}
    return found


def entry_record(entry: Path, key: str, key_pair: SigningKey) -> bytes:
    """The signed ac record of a local build entry (refused if it would be too big to be taken)."""
    manifest = json.loads((entry / MANIFEST).read_text())
    for name in LOCAL_ONLY:
        manifest.pop(name, None)
    document = json.loads((entry / INPUTS).read_text())
    assert key_of(document) == key, f"build entry {key[:12]} has another key's document"
    record = signed({"document": document, "manifest": manifest, "files": files_of(entry)}, key_pair)
    if len(record) > MAX_RECORD:
        raise Refused(f"its record would be {len(record) >> 10} KiB, over the {MAX_RECORD >> 20} MiB a taker reads")
    return record


def attestation(key: str, digests: dict[str, str], key_pair: SigningKey) -> bytes:
    return signed({"build_key": key, "digests": digests}, key_pair)


def _loads(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_RECORD:
        raise Refused(f"its record is over {MAX_RECORD >> 20} MiB")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):   # RecursionError: nested deeper than Python parses
        raise Refused("its record is not JSON") from None
    if not isinstance(data, dict):
        raise Refused("its record is not a JSON object")
    return data


def _check_signature(data: dict[str, Any], trusted: dict[str, PublicKey], only: str | None = None) -> str:
    """The name of the trusted key whose signature of data verifies; refused with the reason otherwise."""
    signatures = data.get("signatures")
    if not signatures or not isinstance(signatures, list):
        raise Refused("it is unsigned")
    body = canonical({k: v for k, v in data.items() if k != "signatures"})
    names, failed = [], []
    for text in signatures:   # every one is tried: a bad signature put first vetoes nothing
        found = parse_signature(text) if isinstance(text, str) else None
        if found is None:
            continue
        name, signature = found
        names.append(name)
        if name in trusted and (only is None or name == only):
            if trusted[name].verifies(signature, body):
                return name
            failed.append(name)
    if failed:
        raise Refused(f"its signature by {failed[0]} does not verify (forged or altered)")
    if not names:
        raise Refused("it is unsigned (no well-formed signature)")
    raise Refused(f"it is signed only by keys this machine does not trust ({', '.join(sorted(set(names)))})")


def check_record(raw: bytes, key: str, document: dict[str, Any], trusted: dict[str, PublicKey]) -> Entry:
    """The ac record of `key`, if a trusted signature verifies, its document is this key's and
    this machine's, and its files are well formed."""
    data = _loads(raw)
    signer = _check_signature(data, trusted)
    theirs = data.get("document")
    if not isinstance(theirs, dict) or key_of(theirs) != key:
        raise Refused("its document's sha256 is not its build key")
    if theirs != document:
        raise Refused("its document is not this machine's for the key")
    manifest, files = data.get("manifest"), data.get("files")
    if not isinstance(manifest, dict) or not isinstance(files, dict) or len(files) > MAX_FILES:
        raise Refused("its manifest or file list is malformed")
    for rel, fact in files.items():
        if not _safe(rel) or not isinstance(fact, dict) or not isinstance(fact.get("sha256"), str) \
                or not SHA256_RE.fullmatch(fact["sha256"]) or type(fact.get("size")) is not int or fact["size"] < 0 \
                or type(fact.get("mode")) is not int:
            raise Refused(f"its file list is malformed at {rel[:80]!r}")
    if manifest.get("key") != key or manifest.get("build_key") != key:
        raise Refused("its manifest is another build's")
    entry = Entry(key, theirs, manifest, files, signer)
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, dict) or not artifacts or \
            {rel: fact.get("sha256") if isinstance(fact, dict) else None for rel, fact in artifacts.items()} \
            != entry.digests() or \
            any(fact.get("size") != files[f"files/{rel}"]["size"] for rel, fact in artifacts.items()):
        raise Refused("its manifest names other artifacts, digests or sizes than its files")
    if Manifest.read_document(manifest) is None:
        raise Refused("its manifest is malformed")
    return entry


def check_attestation(raw: bytes, key: str, name: str, trusted: dict[str, PublicKey]) -> dict[str, str] | None:
    """The digests a trusted key `name` attests it got rebuilding `key`, or None (whatever the bytes)."""
    try:
        data = _loads(raw)
        _check_signature(data, trusted, only=name)
    except Refused:
        return None
    digests = data.get("digests")
    if data.get("build_key") != key or data.get("signer") != name or not isinstance(digests, dict):
        return None
    return digests


def _safe(rel: object) -> bool:
    """A relative path below the entry: no '..', no absolute path, nothing the record carries,
    nothing a filesystem cannot name (a lone surrogate, a control character)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or rel in CARRIED or len(rel) > 1024 \
            or any(ord(c) < 32 or 0xD800 <= ord(c) < 0xE000 for c in rel):
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and str(path) == rel and ".." not in path.parts and "." not in rel.split("/")

