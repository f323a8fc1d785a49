"""The shared remote cache: build entries signed by the machines that made them, taken by the
machines that trust those keys, write-once (remote/entry.py has the records and their checks).

- take(): look build keys up, in one parallel batch; an entry that passes every check becomes a
  local build entry through store.ensure, its blobs re-hashed as they are written and the host's
  checks run on its files; anything less is refused with a warning, and the build runs here.
- push(): blobs first, then the record, never over another record: other bits under a key are
  said and left as they are.
- A server that is down, slow or failing is said once a run; from then on the run works alone.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buildbox import log
from buildbox.config import Remote
from buildbox.errors import BuildboxError, Interrupted
from buildbox.records import Manifest
from buildbox.remote.entry import (MAX_RECORD, Entry, Refused, attestation, check_attestation, check_record,
                                   entry_record)
from buildbox.remote.transport import Transport, Unreachable, WriteRefused, connect
from buildbox.constants import EPOCH
from buildbox.store import Store, file_sha256

PARALLEL = 8
MAX_TREE = 20 << 30   # bytes of a fetched tree's tarball (a tree unpacks within the recipe's [limits] too)


@dataclass(frozen=True)
class Wanted:
    """A build entry this run would take from the remote: its recipe's name, key and document,
    and the most bytes of files it may hold (the recipe's [limits] artifacts, with room for the rest)."""
    name: str
    key: str
    document: dict[str, Any]
    limit: int = 8 << 30


@dataclass(frozen=True)
class Found:
    entry: Entry
    reproduced_by: int

    def said(self) -> str:
        more = f"; reproduced by {self.reproduced_by}" if self.reproduced_by else ""
        return f"signed by {self.entry.signer}{more}"


def ac(key: str) -> str:
    return f"ac/{key}.json"


def att(key: str, name: str) -> str:
    return f"att/{key}/{name}.json"


class _Missing(Exception):
    """Not on the server: no warning, the stage runs here."""


class RemoteCache:
    def __init__(self, config: Remote, transport: Transport | None = None) -> None:
        self.config = config
        self.transport = transport or connect(config)
        self.trusted = config.trusts()
        self.down: str | None = None       # why the server is not asked any more this run
        self.failures: list[str] = []      # pushes that did not land, said as warnings
        self.looked: dict[str, Found | None] = {}
        self.taken: set[str] = set()
        self._lock = threading.Lock()

    # -- reading -----------------------------------------------------------------------------
    def _unreachable(self, err: Unreachable) -> None:
        with self._lock:
            if self.down is None:
                self.down = str(err)
                log.warn(f"remote cache {self.config.shown} is unreachable ({err}): building here, "
                         "not asking it again this run")

    def look_up(self, wanted: list[Wanted]) -> dict[str, Found | None]:
        """The remote's verified record of each wanted key (None: missing or refused), asked in
        one parallel batch; each key is asked once a run."""
        todo = [w for w in wanted if w.key not in self.looked]
        if todo and self.down is None:
            with ThreadPoolExecutor(min(PARALLEL, len(todo))) as pool:
                for w, found in zip(todo, pool.map(self._look_up_one, todo)):
                    self.looked[w.key] = found
        return {w.key: self.looked.get(w.key) for w in wanted}

    def _look_up_one(self, wanted: Wanted) -> Found | None:
        if self.down is not None:
            return None
        try:
            raw = self.transport.get(ac(wanted.key), MAX_RECORD)
            if raw is None:
                return None
            entry = check_record(raw, wanted.key, wanted.document, self.trusted)
            return Found(entry, self._reproductions(entry))
        except Refused as err:
            self._refuse(wanted, str(err))
        except Unreachable as err:
            self._unreachable(err)
        except Exception as err:   # whatever else a record's bytes provoke, it is only refused
            self._refuse(wanted, f"its record is malformed ({type(err).__name__})")
        return None

    def _reproductions(self, entry: Entry) -> int:
        """How many other trusted keys attest they rebuilt the entry with the same digests."""
        digests = entry.digests()
        count = 0
        for name in sorted(self.trusted):
            if name == entry.signer:
                continue
            raw = self.transport.get(att(entry.key, name), MAX_RECORD)
            if raw is not None and check_attestation(raw, entry.key, name, self.trusted) == digests:
                count += 1
        return count

    def _refuse(self, wanted: Wanted, reason: str) -> None:
        log.warn(f"remote cache entry for {wanted.name} (build key {wanted.key[:12]}) refused: {reason}; "
                 "building it here")

    def take(self, store: Store, wanted: Wanted, check: Callable[[Path], None]) -> Found | None:
        """Make the build entry from the remote's record if it passes every check (check(files)
        runs the host's checks on its files); None, having said why, otherwise."""
        found = self.look_up([wanted])[wanted.key]
        if found is None or self.down is not None or wanted.key in self.taken:
            return None   # (taken once already this run: a second time would be the same bits)
        self.taken.add(wanted.key)
        entry = found.entry
        total = sum(fact["size"] for fact in entry.files.values())
        if total > wanted.limit:
            self._refuse(wanted, f"its files come to {total} bytes, past this recipe's limit ({wanted.limit})")
            return None

        def fill(tmp: Path) -> None:
            for rel, fact in sorted(entry.files.items()):
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not self.transport.download(f"cas/{fact['sha256']}", dest, fact["size"]):
                    raise Refused(f"its blob {fact['sha256'][:12]} ({rel}) is missing")
                size = dest.stat().st_size
                if size != fact["size"]:
                    raise Refused(f"its blob {fact['sha256'][:12]} ({rel}) is {'truncated' if size < fact['size'] else 'too long'}")
                digest = file_sha256(dest)
                if digest != fact["sha256"]:
                    raise Refused(f"its blob for {rel} has other content (sha256 {digest[:12]}, "
                                  f"not {fact['sha256'][:12]})")
                dest.chmod(fact["mode"] & 0o755)
                os.utime(dest, (EPOCH, EPOCH))
            check(tmp / "files")
            Manifest.write(tmp, {**entry.manifest, "recipe": wanted.name,   # the key is the same under any name
                                 "from_remote": {"signer": entry.signer, "reproduced_by": found.reproduced_by}})
        try:
            store.ensure("builds", wanted.key, fill, inputs=wanted.document)
        except Refused as err:
            self.looked[wanted.key] = None
            self._refuse(wanted, str(err))
            return None
        except Interrupted:
            raise
        except BuildboxError as err:   # the host's checks: these bits are not for this host
            self.looked[wanted.key] = None
            self._refuse(wanted, f"its files fail this host's checks ({err})")
            return None
        except Unreachable as err:
            self._unreachable(err)
            return None
        except (OSError, UnicodeError) as err:   # paths that cannot all be written (a file where a folder is)
            self.looked[wanted.key] = None
            self._refuse(wanted, f"its files cannot be written here ({getattr(err, 'strerror', None) or err})")
            return None
        return found

    # -- writing -----------------------------------------------------------------------------
    def push(self, store: Store, name: str, key: str, *, fetched: str | None = None) -> bool:
        """Push the build entry: its blobs (and the fetched tree it stands on, as a tarball), then
        its signed record, never over another record. False, said as a warning, if it did not land."""
        assert self.config.signing_key is not None
        if self.down is not None:   # said once already
            self.failures.append(f"push {name}: not pushed: the remote cache is unreachable ({self.down})")
            return False
        entry = store.entry("builds", key)
        try:
            record = entry_record(entry, key, self.config.signing_key)
        except Refused as err:
            return self._failed(f"push {name}: not pushed: {err}")
        ours = json.loads(record)
        try:
            for rel, fact in sorted(ours["files"].items()):
                path = f"cas/{fact['sha256']}"
                if not self.transport.exists(path):
                    self.transport.put(path, entry / rel, once=True)
            if fetched and store.intact("fetches", fetched) and not self.transport.exists(f"fetch/{fetched}.tar"):
                self._push_tree(store, fetched)
            there = self.transport.get(ac(key), MAX_RECORD)
            if there is None and self.transport.put(ac(key), record, once=True):
                there = self.transport.get(ac(key), MAX_RECORD)   # read back: a server may ignore If-None-Match
                if there == record:
                    log.say(f"push {name}: pushed build key {key[:12]} to {self.config.shown}")
                    return True
            elif there is None:
                there = self.transport.get(ac(key), MAX_RECORD)
        except Unreachable as err:
            self._unreachable(err)
            self.failures.append(f"push {name}: not pushed: the remote cache is unreachable ({err})")
            return False
        except WriteRefused as err:
            return self._failed(f"push {name}: the remote cache refuses the write ({err})")
        if there is not None and _digests(there) == _digests(record):
            log.say(f"push {name}: the remote cache has build key {key[:12]} already, with the same bits")
            return True
        return self._failed(f"remote has different bits for {name} (build key {key}): not overwritten")

    def _push_tree(self, store: Store, digest: str) -> None:
        from buildbox.fetch import pack
        folder = store.dir("tmp")
        tarball = folder / f"fetch-{digest}-{os.getpid()}-{threading.get_ident()}.tar"
        try:
            pack(store.entry("fetches", digest) / "tree", tarball)
            self.transport.put(f"fetch/{digest}.tar", tarball, once=True)
        finally:
            tarball.unlink(missing_ok=True)

    def take_fetch(self, store: Store, name: str, digest: str, unpack: Callable[[Path, Path], str],
                   limit: int = MAX_TREE) -> bool:
        """The fetched tree `digest` from the remote's fetch/<digest>.tar, unpacked and digested
        again by unpack(tarball, entry); False (a refusal said) if it is not there or not that tree."""
        if self.down is not None:
            return False

        def make(tmp: Path) -> str:
            tarball = tmp / "fetched.tar"
            if not self.transport.download(f"fetch/{digest}.tar", tarball, limit):
                raise _Missing()
            if tarball.stat().st_size > limit:
                raise Refused(f"its tarball is over {limit} bytes, the recipe's [limits] unpacked")
            try:
                return unpack(tarball, tmp)
            finally:
                tarball.unlink(missing_ok=True)
        try:
            store.add("fetches", make)
        except _Missing:
            return False
        except Unreachable as err:
            self._unreachable(err)
            return False
        except Interrupted:
            raise
        except (Refused, BuildboxError, OSError) as err:
            log.warn(f"remote cache's fetched tree for {name} (sha256 {digest[:12]}) refused: {err}; fetching it here")
            return False
        return True

    def attest(self, name: str, key: str, digests: dict[str, str]) -> bool:
        """Publish this machine's signed "rebuilt `key`, got these digests"."""
        assert self.config.signing_key is not None
        signer = self.config.signing_key.name
        try:
            written = self.transport.put(att(key, signer), attestation(key, digests, self.config.signing_key),
                                         once=False)
        except (Unreachable, WriteRefused) as err:
            return self._failed(f"verify {name}: attestation not published ({err})")
        if written:
            log.say(f"verify {name}: published the attestation of {signer} for build key {key[:12]}")
        else:   # a write-once server keeps the first one
            log.say(f"verify {name}: the remote cache has an attestation of {signer} for build key {key[:12]} already")
        return True

    def _failed(self, message: str) -> bool:
        log.warn(message)
        self.failures.append(message)
        return False


def _digests(raw: bytes) -> dict[str, Any] | None:
    """The artifacts' digests a record names (whoever signed it: only compared, never used)."""
    try:
        files = json.loads(raw)["files"]
        return {rel: fact["sha256"] for rel, fact in files.items() if rel.startswith("files/")}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None

