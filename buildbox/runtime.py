"""A build's runtime closure: what its programs need to run in a root of their own (README,
"Running what you built"), so that `buildbox install` needs no layer and a remote hit carries it.

Collected from the box the build was made and checked in, by host code reading the box's tree
from outside it (inroot.Root: the box's links lead nowhere on the host): each ELF artifact's
loader and the closure of its NEEDED libraries as the box's loader resolves them (RPATH, RUNPATH,
$ORIGIN, the box's ld.so.conf), a script's #! interpreter the same way, and the box's CA bundle.
The files go to the build entry's runtime/ at their box paths; their links are listed in the
manifest (a remote record carries files, not links), each file with its sha256 and the package
whose dpkg list names it.
"""

from __future__ import annotations

import collections
import hashlib
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from buildbox import log
from buildbox.constants import EPOCH, RUNTIME_MAX_BYTES
from buildbox.elf import ElfInfo, MalformedElf, expand_origin, loader_dirs, read_elf, resolve_needed
from buildbox.errors import BuildFailed
from buildbox.inroot import Root

RUNTIME = "runtime"   # beside files/ in a build entry
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
MAX_LINKS = 40
MAX_OBJECTS = 4096   # libraries in one closure: more is a fan-out, not a program
COPY_CHUNK = 1 << 20


class Closure:
    """The runtime closure being collected from one box's tree into dest (entry/runtime)."""

    def __init__(self, root: Path, dest: Path, out_dir: str) -> None:
        self.root, self.dest, self.out_dir = root, dest, out_dir
        self.tree = Root(root)
        self.dirs = loader_dirs(root)
        self.files: dict[str, dict[str, Any]] = {}
        self.links: dict[str, str] = {}
        self.names: dict[str, set[str]] = {}   # a file's real path -> every path that named it
        self.needs: dict[str, list[str]] = {}
        self.missing: dict[str, list[str]] = {}
        self.bytes = 0

    def close(self) -> None:
        self.tree.close()

    # -- the box's tree, read from outside --------------------------------------------------
    def trace(self, path: str) -> tuple[str, list[tuple[str, str]], list[str]]:
        """Where path leads in the box, each link on the way (its path, its target), and every
        whole path it was named by on the way, followed as the box's loader would: an absolute
        target restarts at the box's /, '..' stops there."""
        parts = collections.deque(p for p in path.split("/") if p)
        resolved: list[str] = []
        links: list[tuple[str, str]] = []
        names = [path]
        while parts:
            part = parts.popleft()
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            here = "/" + "/".join([*resolved, part])
            found = self.tree.lstat(here)
            if found is not None and stat.S_ISLNK(found.st_mode):
                if len(links) >= MAX_LINKS:
                    raise OSError(f"too many levels of links resolving {path} in the box")
                dirfd, name = self.tree.parent(here)
                try:
                    target = os.readlink(name, dir_fd=dirfd)
                finally:
                    os.close(dirfd)
                links.append((here, target))
                if target.startswith("/"):
                    resolved = []
                parts.extendleft(reversed([p for p in target.split("/") if p]))
                names.append(os.path.normpath("/" + "/".join([*resolved, *parts])))
                continue
            resolved.append(part)
        return "/" + "/".join(resolved), links, names

    def open(self, path: Path | str) -> BinaryIO:
        """A regular file of the box, for reading (never a FIFO or a device it names)."""
        fd = self.tree.open(str(path), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{path} is not a regular file")
        return os.fdopen(fd, "rb")

    def take(self, path: str) -> str:
        """Copy the file path names in the box into dest at its real box path (once), keeping the
        links on the way; its real path. OSError when the box has no such regular file."""
        real, chain, names = self.trace(path)
        if len(self.files) >= MAX_OBJECTS and real not in self.files:
            raise BuildFailed(f"the runtime closure holds more than {MAX_OBJECTS} files (a fan-out of libraries?)")
        with self.open(real) as source:
            for link, target in chain:
                self.links[link] = target
            self.names.setdefault(real, set()).update([*names, real])
            if real in self.files:
                return real
            dest = self.dest / real.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            digest, size = hashlib.sha256(), 0
            with open(dest, "xb") as f:
                while chunk := source.read(COPY_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    self.bytes += len(chunk)
                    if self.bytes > RUNTIME_MAX_BYTES:
                        raise BuildFailed(f"the runtime closure comes to more than {RUNTIME_MAX_BYTES >> 20} MiB "
                                          f"(at {log.escaped(real)})")
                    f.write(chunk)
            mode = 0o755 if os.fstat(source.fileno()).st_mode & 0o111 else 0o644
            os.chmod(dest, mode)
            os.utime(dest, (EPOCH, EPOCH))
        self.files[real] = {"sha256": digest.hexdigest(), "size": size, "mode": mode, "package": None}
        return real

    # -- what each artifact needs -----------------------------------------------------------
    def add_artifact(self, rel: str, host_path: Path) -> None:
        """The closure of one artifact (host_path: its file in the box, resolved there)."""
        box_path = "/" + str(host_path.relative_to(self.root))
        self.needs[rel], self.missing[rel] = [], []
        try:
            info = read_elf(host_path)
        except MalformedElf:
            return   # the build's own check names it
        if info is None:
            interpreter = shebang(host_path)
            if interpreter:
                self._program(rel, interpreter)
            return
        self._objects(rel, info, os.path.dirname(box_path))

    def _program(self, rel: str, path: str) -> None:
        """A program the artifact runs (its #! interpreter), and what it needs in turn."""
        try:
            real = self.take(path)
        except OSError:
            self.missing[rel].append(path)
            return
        self.needs[rel].append(real)
        try:
            info = read_elf(self.dest / real.lstrip("/"))
        except MalformedElf:
            info = None
        if info is None:
            self.missing[rel].append(f"{path} (not an ELF program)")
            return
        self._objects(rel, info, os.path.dirname(path))

    def _objects(self, rel: str, first: ElfInfo, origin: str) -> None:
        """The loader and the NEEDED closure of an ELF object, breadth first, as ld.so loads it."""
        queue: collections.deque[tuple[ElfInfo, str, tuple[Path, ...]]] = collections.deque([(first, origin, ())])
        seen: set[str] = set()
        while queue:
            info, here, inherited = queue.popleft()
            if info.interpreter:
                try:
                    real = self.take(info.interpreter)
                    if real not in self.needs[rel]:
                        self.needs[rel].append(real)
                except OSError:
                    self.missing[rel].append(info.interpreter)
            # DT_RPATH reaches the libraries an object loads (with no RUNPATH of their own).
            passed = inherited if info.runpath else (*inherited, *expand_origin(info.rpath, Path(here)))
            for name, where in resolve_needed(info, Path(here), self.dirs, opener=self.open,
                                              inherited=inherited).items():
                if where is None:
                    self.missing[rel].append(name)
                    continue
                if str(where).startswith(self.out_dir + "/"):
                    continue   # another artifact: installed as one, at the same place beside this one
                try:
                    real = self.take(str(where))
                except OSError:
                    self.missing[rel].append(name)
                    continue
                if real not in self.needs[rel]:
                    self.needs[rel].append(real)
                if real in seen:
                    continue
                seen.add(real)
                try:
                    library = read_elf(self.dest / real.lstrip("/"))
                except MalformedElf:
                    library = None
                if library is not None:
                    queue.append((library, os.path.dirname(str(where)), passed))

    def add_ca_bundle(self) -> str | None:
        """The box's CA bundle, when it has one."""
        try:
            return self.take(CA_BUNDLE)
        except OSError:
            return None

    def name_packages(self) -> None:
        """Each file's package: the dpkg list (dpkg -S's source) that names one of its paths."""
        wanted = {name: real for real, names in self.names.items() for name in names}
        try:
            fd = self.tree.open("/var/lib/dpkg/info", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            lists = sorted(name for name in os.listdir(fd) if name.endswith(".list"))
        finally:
            os.close(fd)
        for name in lists:
            try:
                with self.open(f"/var/lib/dpkg/info/{name}") as f:
                    lines = f.read(64 << 20).decode(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                real = wanted.get(line)
                if real is not None and self.files[real]["package"] is None:
                    self.files[real]["package"] = name.removesuffix(".list")

    def document(self, ca_bundle: str | None) -> dict[str, Any]:
        return {"files": dict(sorted(self.files.items())), "links": dict(sorted(self.links.items())),
                "needs": self.needs, "missing": {rel: names for rel, names in self.missing.items() if names},
                "ca-bundle": ca_bundle}


def shebang(path: Path) -> str | None:
    """The interpreter a script's #! line names, or None."""
    try:
        with open(path, "rb") as f:
            first = f.read(256).split(b"\n", 1)[0]
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if words and words[0].startswith("/") else None


def collect(root: Path, artifacts: dict[str, Path], dest: Path, out_dir: str) -> dict[str, Any]:
    """Fill dest (a build entry's runtime/) from the box at root with what artifacts need to run;
    return the manifest's "runtime" section."""
    dest.mkdir()
    closure = Closure(root, dest, out_dir)
    try:
        for rel, path in sorted(artifacts.items()):
            closure.add_artifact(rel, path)
        bundle = closure.add_ca_bundle()
        closure.name_packages()
        document = closure.document(bundle)
    finally:
        closure.close()
    if document["missing"]:
        rel, names = next(iter(document["missing"].items()))
        log.note(f"runtime closure: {log.escaped(rel)} needs {', '.join(map(log.escaped, names))}, "
                 "which the box does not have (`buildbox install` will say so)")
    return document
