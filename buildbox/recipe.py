"""Recipes and bases: TOML read with tomlkit, checked once, turned into frozen dataclasses.

Everything past this module trusts what it gets; every mistake in a file is reported here, on one
line that names the file, the line and what to write instead.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Union
from urllib.parse import urlparse

import tomlkit
import tomlkit.exceptions

from buildbox import debian
from buildbox.constants import CAPABILITIES, FETCH_ENV, OFFLINE_ENV
from buildbox.debian import PACKAGE_RE, DscSource
from buildbox.errors import InputError
from buildbox.pins import Pins

DEFAULT_BASE = "debian-bookworm"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
SUITE_RE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")
# A Debian source is unpacked with dpkg-source and built with dpkg-buildpackage as the build user:
# the layer gets them whether the recipe lists them or not, as sbuild installs them for every build.
DEBIAN_SOURCE_NEEDS = ("dpkg-dev", "fakeroot")
# Set by buildbox for the fetch and the build, so that the common tools keep what they download
# in $FETCH with no configuration (README, "Recipes from upstream").
# Set by buildbox for every build; a recipe may not change what they mean.
RESERVED_ENV = ("HOME", "USER", "LOGNAME", "OUT")
# What buildbox sets in a build's environment itself (build.build_env): the build user's login
# (BuildUser.login_env), the one time, $OUT; and for a recipe with [fetch], FETCH_ENV and these
# offline switches (build.offline_env; GOFLAGS is kept, with -mod=mod appended). A secret-env of
# one of these names would replace buildbox's value, or be replaced by it.
BOX_ENV = ("HOME", "USER", "LOGNAME", "PATH", "SHELL", "LANG", "TZ", "SOURCE_DATE_EPOCH", "OUT")


@dataclass(frozen=True)
class TarballSet:
    """A file-set tarball (OpenBSD-style sets), fetched and checked against its sha256."""
    url: str
    sha256: str
    where: str = field(default="", compare=False)   # file:line, for errors found later


@dataclass(frozen=True)
class BootstrapSet:
    """A Debian bootstrap made by mmdebstrap into a tarball."""
    suite: str
    mirror: str
    variant: str
    packages: tuple[str, ...]
    where: str = field(default="", compare=False)


Set = Union[TarballSet, BootstrapSet]


@dataclass(frozen=True)
class UnpackLimits:
    """How big a tarball (a set, a source) may unpack: a gzip bomb is an error, not a full disk."""
    unpacked: int = 20 << 30      # bytes of files
    members: int = 2_000_000


@dataclass(frozen=True)
class Base:
    name: str
    path: Path
    sets: tuple[Set, ...]
    unpack: UnpackLimits = UnpackLimits()


@dataclass(frozen=True)
class GitSource:
    url: str          # a remote URL, or an absolute local path / file:// URL bound read-only into the box
    ref: str

    @property
    def local_path(self) -> Path | None:
        if self.url.startswith("file://"):
            return Path(urlparse(self.url).path)
        return Path(self.url) if self.url.startswith("/") else None


@dataclass(frozen=True)
class UrlSource:
    url: str
    sha256: str


@dataclass(frozen=True)
class DebianSource:
    package: str


Source = Union[GitSource, UrlSource, DebianSource, DscSource]
# The sources that are Debian source packages: unpacked by dpkg-source, dated by debian/changelog.
DEBIAN_KINDS = (DebianSource, DscSource)


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_amount(text: str, kind: str) -> int | None:
    """A size ("512M", "4G"), a time ("90s", "20m", "2h", "7d") or a count, as an int; None if malformed."""
    match = re.fullmatch(r"(\d+)([A-Za-z]?)", text.strip())
    if not match or int(match.group(1)) <= 0:
        return None
    unit = match.group(2).upper() if kind == "size" else match.group(2)
    units = SIZE_UNITS if kind == "size" else TIME_UNITS if kind == "time" else {"": 1}
    return int(match.group(1)) * units[unit] if unit in units else None


@dataclass(frozen=True)
class Limits:
    """What one build may use; exceeding any of them fails the build, naming the limit."""
    memory: int = 16 << 30        # bytes of memory of the whole box (its cgroup)
    processes: int = 4096         # processes and threads of the build user
    files: int = 4096             # open files per process
    cpu: int = 4 * 3600           # seconds of CPU per process
    file_size: int = 8 << 30      # bytes, the largest file the build may write
    timeout: int = 3 * 3600       # seconds of wall-clock time for the whole build
    silence: int = 30 * 60        # seconds without output before the build is taken as hung
    log: int = 1 << 30            # bytes of the build's output kept in its log
    artifacts: int = 8 << 30      # bytes of artifacts (apparent sizes) the build may leave in $OUT
    disk: int = 64 << 30          # bytes the build may write in its box
    address_space: int | None = None   # bytes of address space per process (none by default)

    def rlimits(self) -> dict[str, int]:
        """The limits set per process with setrlimit (memory and processes are the box's cgroup's)."""
        return {"processes": self.processes, "files": self.files, "cpu": self.cpu, "file-size": self.file_size,
                **({"address-space": self.address_space} if self.address_space else {})}

    def value(self, key: str) -> int | None:
        """A limit by its name in [limits] (address-space, file-size, ...)."""
        return getattr(self, key.replace("-", "_"))


# The least a limit can be and a build still start: below, it fails late or strangely (mkfs.ext4
# wants room for its journal and the build's files; enter.py, a shell and the commands it starts
# count against memory, processes and open files).
LIMIT_MINIMUMS = {"disk": "16M", "memory": "16M", "address-space": "16M", "processes": "8", "files": "16"}
LIMIT_KEYS = {"memory": "size", "processes": "count", "files": "count", "cpu": "time", "file-size": "size",
              "timeout": "time", "silence": "time", "log": "size", "artifacts": "size", "address-space": "size",
              "disk": "size"}
UNPACK_KEYS = {"unpacked": "size", "members": "count"}


@dataclass(frozen=True)
class Fetch:
    """[fetch]: run as the build user with outbound network before the build; only $FETCH is kept,
    pinned by sha256 (here, or in the lock). host_ports: the TCP ports of the host's loopback the
    fetch reaches at its own 127.0.0.1 (a module proxy on the host); in no key, as where a proxy
    is does not change what the digest pins."""
    script: str
    env: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None
    host_ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class Lock:
    """A recipe's lock as lock.py read it: the pins, in the one form the keys take them (lock.py's
    docstring), and the line of each for errors."""
    path: Path
    pins: Pins = field(compare=False)
    lines: dict[str, int] = field(compare=False)   # "set.N", "source", package name -> line

    def at(self, what: str) -> str:
        return f"{self.path}:{self.lines.get(what, 1)}"


USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Where a runtime root's own files are, and what [install] cannot put there or keep as state.
ROOT_OWN = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf",
            "/etc/ld.so.cache", "/etc/ssl/certs/ca-certificates.crt")
NOT_STATE = ("/usr", "/etc", "/dev", "/proc", "/tmp", "/bin", "/sbin", "/lib", "/lib64", "/sys", "/run")


@dataclass(frozen=True)
class Service:
    """[install]: how `buildbox install` puts the build in a runtime root of its own and how
    `buildbox exec` runs it there (README, "Running what you built"). In no key: a new config
    file is not a new build."""
    exec: tuple[str, ...]
    user: str
    files: tuple[tuple[str, str], ...] = ()    # path in the root -> the file, relative to `folder`
    state: tuple[str, ...] = ()                 # writable directories, kept across generations
    ca_certificates: bool = False
    capabilities: tuple[str, ...] = ()
    check: tuple[str, ...] = ()
    lines: tuple[tuple[str, int], ...] = ()
    folder: Path = Path(".")                  # the recipe's folder, which `files` names files of

    def at(self, path: Path, key: str) -> str:
        return f"{path}:{dict(self.lines).get(key, 1)}"


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    base: Base
    install: tuple[str, ...]
    build_deps: tuple[str, ...]
    source: Source
    env: tuple[tuple[str, str], ...]
    script: str
    static: bool
    verify_run: tuple[str, ...]
    network: bool = False
    verify_timeout: int = 60          # seconds each [verify] run command may take
    secret_env: tuple[str, ...] = ()   # taken from the invoking environment; only the names are keyed
    limits: Limits = Limits()
    unpack: UnpackLimits = UnpackLimits()   # not part of any key: a tarball unpacks whole or not at all
    lines: tuple[tuple[str, int], ...] = ()
    lock: Lock | None = field(default=None, compare=False)   # recipes/NAME.lock, if there is one
    fetch: Fetch | None = None
    service: Service | None = None   # [install]

    def at(self, key: str) -> str:
        """file:line of a part of the recipe ("packages", "source", "script"), for errors found later."""
        return f"{self.path}:{dict(self.lines).get(key, 1)}"

    @property
    def implicit(self) -> tuple[str, ...]:
        """Packages the layer gets that the recipe need not list: what its kind of source needs."""
        if isinstance(self.source, DEBIAN_KINDS):
            return tuple(p for p in DEBIAN_SOURCE_NEEDS if p not in self.install)
        return ()

    @property
    def layer_install(self) -> tuple[str, ...]:
        """What the package layer installs: the recipe's install, and the implicit packages."""
        return self.install + self.implicit


class list_of_tables(list):
    """Marker type for check_keys: an array of tables, [[name]]."""


class Doc:
    """One TOML file being checked: finds the line of a key so that every error can name it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # Never open a FIFO or a device: reading one blocks, or never ends.
            if not stat.S_ISREG(path.stat().st_mode):
                raise InputError("not a regular file", where=str(path), hint="name a .toml file")
            raw = path.read_bytes()
        except FileNotFoundError:
            raise InputError("no such file", where=str(path)) from None
        except OSError as err:
            raise InputError(f"cannot read it: {err.strerror}", where=str(path)) from None
        if raw.startswith(b"\xef\xbb\xbf"):
            raise InputError("the file starts with a UTF-8 byte order mark, which TOML does not allow",
                             where=f"{path}:1", hint="save it as UTF-8 without a BOM")
        try:
            self.text = raw.decode()
        except UnicodeDecodeError as err:
            line = raw[:err.start].count(b"\n") + 1
            raise InputError("not UTF-8 text", where=f"{path}:{line}", hint="save it as UTF-8") from None
        try:
            self.data = tomlkit.parse(self.text).unwrap()
        except tomlkit.exceptions.ParseError as err:
            message = re.sub(r" at line \d+ col \d+$", "", str(err))
            raise InputError(f"not valid TOML: {message}", where=f"{path}:{err.line}",
                             hint="fix the syntax at that line") from None

    def line_of(self, table: tuple[str, ...], key: str | None = None, index: int = 0) -> int:
        """The line where `key` of `table` (the index-th, for arrays of tables) is written; 1 if unknown."""
        current: tuple[str, ...] = ()
        seen = -1
        header_line = 1
        for number, line in enumerate(self.text.splitlines(), start=1):
            header = re.match(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", line)
            if header:
                current = tuple(part.strip().strip("\"'") for part in header.group(1).split("."))
                if current == table:
                    seen += 1
                    if seen == index:
                        header_line = number
                        if key is None:
                            return number
                continue
            if key and current == table and (not table or seen == index):
                if re.match(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
                    return number
        if table and key:
            # An inline table (`source = { git = ... }`): point at the line that opened it.
            parent = self.line_of(table[:-1], table[-1]) if len(table) == 1 else header_line
            return max(parent, header_line)
        return header_line

    def fail(self, table: tuple[str, ...], key: str | None, message: str, hint: str | None = None,
             index: int = 0) -> NoReturn:
        raise InputError(message, where=f"{self.path}:{self.line_of(table, key, index)}", hint=hint)

    def check_keys(self, data: dict[str, Any], table: tuple[str, ...], allowed: dict[str, type],
                   index: int = 0) -> None:
        """Reject unknown keys (suggesting the closest) and values of the wrong type."""
        where = f"[{'.'.join(table)}]" if table else "the top level"
        for key, value in data.items():
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
                self.fail(table, key, f"unknown key '{key}' in {where}", hint, index)
            expected = allowed[key]
            if expected is list_of_tables:
                if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                    self.fail(table, key, f"'{key}' must be an array of tables", f"write [[{key}]]", index)
            elif expected is list:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    self.fail(table, key, f"'{key}' must be a list of strings", f'write {key} = ["..."]',
                              index)
            elif expected is dict:
                if not isinstance(value, dict):
                    self.fail(table, key, f"'{key}' must be a table", f"write it as [{key}]", index)
            elif not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                self.fail(table, key, f"'{key}' must be a {_type_name(expected)}, not "
                          f"{_type_name(type(value))}", None, index)


def _type_name(kind: type) -> str:
    return {str: "string", bool: "boolean (true or false)", int: "number", float: "number",
            list: "list", dict: "table"}.get(kind, kind.__name__)


def _check_sha256(doc: Doc, table: tuple[str, ...], value: str, index: int = 0) -> str:
    if not SHA256_RE.fullmatch(value):
        doc.fail(table, "sha256", f"sha256 '{value}' is not 64 lowercase hex digits",
                 "write the full digest that `sha256sum FILE` prints", index)
    return value


def _check_packages(doc: Doc, table: tuple[str, ...], key: str, names: list[str],
                    index: int = 0) -> tuple[str, ...]:
    for name in names:
        if not PACKAGE_RE.fullmatch(name):
            doc.fail(table, key, f"'{name}' is not a Debian package name",
                     "use lowercase letters, digits and + . -", index)
    return tuple(names)


# The bases shipped with buildbox (package data): where a base is found when no folder has it.
SHIPPED_BASES = Path(__file__).parent / "bases"


def base_places(recipes_dir: Path) -> list[Path]:
    """Where a recipe in recipes_dir finds its bases, in order: base/ beside it, ./recipes/base/,
    the bases shipped with buildbox."""
    places = [recipes_dir / "base", Path("recipes") / "base", SHIPPED_BASES]
    unique: list[Path] = []
    for place in places:
        if not any(os.path.abspath(place) == os.path.abspath(seen) for seen in unique):
            unique.append(place)
    return unique


def _trusted_base(path: Path, *, where: str) -> None:
    """A base found in a folder (beside the recipe, or ./recipes/base/ of wherever buildbox runs)
    is taken only if it and its folder are the invoking user's or root's and no one else may write
    them: another host account cannot plant a base in a shared working directory (/tmp)."""
    for place in (path, path.parent):
        st = os.stat(place)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise InputError(f"base {path} is not taken: {place} belongs to uid {st.st_uid} or others may "
                             f"write it (mode {stat.S_IMODE(st.st_mode):o})", where=where,
                             hint=f"chown it to yourself and chmod go-w it, or remove {path}")


def load_base(name: str, recipes_dir: Path, *, where: str) -> Base:
    """Read the base NAME.toml from the first of base_places(recipes_dir) that has it."""
    if not NAME_RE.fullmatch(name):
        raise InputError(f"base '{name}' is not a valid name", where=where,
                         hint="use letters, digits and . _ + -")
    places = base_places(recipes_dir)
    path = next((p / f"{name}.toml" for p in places if (p / f"{name}.toml").is_file()), None)
    if path is None:
        known = sorted({p.stem for place in places for p in place.glob("*.toml")})
        looked = ", ".join(str(p / f"{name}.toml") for p in places)
        raise InputError(f"base '{name}' does not exist (looked for {looked})", where=where,
                         hint=f"known bases: {', '.join(known)}" if known
                         else f"create {places[0] / f'{name}.toml'}")
    _trusted_base(path, where=where)
    doc = Doc(path)
    doc.check_keys(doc.data, (), {"set": list_of_tables, "limits": dict})
    sets = doc.data.get("set")
    if not sets:
        doc.fail((), None, "a base needs at least one [[set]]",
                 'add [[set]] with url and sha256, or with suite and mirror')
    parsed: list[Set] = []
    for index, entry in enumerate(sets):
        table = ("set",)
        if "url" in entry and "suite" in entry:
            doc.fail(table, "suite", "a set has either url (a tarball) or suite (a bootstrap), not both",
                     "split it into two [[set]] tables", index)
        if "url" in entry:
            doc.check_keys(entry, table, {"url": str, "sha256": str}, index)
            if "sha256" not in entry:
                doc.fail(table, "url", "a tarball set needs a sha256", "add sha256 = \"...\"", index)
            url = entry["url"]
            if not urlparse(url).scheme in ("http", "https"):
                local = Path(url.removeprefix("file://"))
                url = str(local if local.is_absolute() else (path.parent / local).resolve())
            parsed.append(TarballSet(url, _check_sha256(doc, table, entry["sha256"], index),
                                     where=f"{path}:{doc.line_of(table, 'url', index)}"))
        elif "suite" in entry:
            doc.check_keys(entry, table, {"suite": str, "mirror": str, "variant": str, "packages": list},
                           index)
            if "mirror" not in entry:
                doc.fail(table, "suite", "a bootstrap set needs a mirror",
                         'add mirror = "http://deb.debian.org/debian"', index)
            if not SUITE_RE.fullmatch(entry["suite"]):
                doc.fail(table, "suite", f"suite {entry['suite']!r} is not a Debian suite name",
                         'write a suite such as "bookworm" or "stable"', index)
            mirror = urlparse(entry["mirror"])
            if mirror.scheme not in ("http", "https", "file") or not (mirror.netloc or mirror.scheme == "file") \
                    or any(c.isspace() or c in "[]" for c in entry["mirror"]):
                doc.fail(table, "mirror", f"mirror {entry['mirror']!r} is not an http(s) or file URL",
                         'write mirror = "http://deb.debian.org/debian"', index)
            variant = entry.get("variant", "minbase")
            if variant not in ("extract", "custom", "essential", "apt", "required", "minbase",
                               "buildd", "important", "debootstrap", "standard"):
                doc.fail(table, "variant", f"'{variant}' is not an mmdebstrap variant",
                         "use minbase, buildd, required or important", index)
            parsed.append(BootstrapSet(entry["suite"], entry["mirror"].rstrip("/"), variant,
                                       _check_packages(doc, table, "packages",
                                                       entry.get("packages", []), index),
                                       where=f"{path}:{doc.line_of(table, 'mirror', index)}"))
        else:
            doc.fail(table, None, "a set needs url and sha256 (a tarball) or suite and mirror (a bootstrap)",
                     None, index)
    _, unpack = _parse_limits(doc, doc.data.get("limits", {}), UNPACK_KEYS)
    return Base(name, path, tuple(parsed), unpack)


def read_recipe(path: Path) -> Recipe:
    """Read and check one recipe file (its lock is lock.py's: `lock.load_recipe` reads both)."""
    doc = Doc(path)
    data = doc.data
    doc.check_keys(data, (), {"name": str, "base": str, "packages": dict, "source": dict, "fetch": dict,
                              "build": dict, "debian": dict, "verify": dict, "limits": dict, "install": dict})
    source = _parse_source(doc, data.get("source"))
    build = data.get("build")
    # A Debian source with no [build] script is built as sbuild builds it (README, "Recipes from Debian").
    one_line = isinstance(source, DEBIAN_KINDS) and (build is None or "script" not in build)
    name = data.get("name", source.package if one_line else path.stem)   # type: ignore[union-attr]
    if not NAME_RE.fullmatch(name):
        doc.fail((), "name" if "name" in data else None,
                 f"recipe name '{name}' is not allowed: it names the directory out/{name}",
                 "use letters, digits and . _ + - (no slashes, not starting with a dot)")
    base = load_base(data.get("base", DEFAULT_BASE), path.parent,
                     where=f"{path}:{doc.line_of((), 'base')}")

    packages = data.get("packages", {})
    doc.check_keys(packages, ("packages",), {"install": list, "build-deps": list})
    install = _check_packages(doc, ("packages",), "install", packages.get("install", []))
    build_deps = _check_packages(doc, ("packages",), "build-deps", packages.get("build-deps", []))
    if isinstance(source, GitSource) and "git" not in install:
        install += ("git",)   # a git source is resolved and cloned with the box's own git
    if one_line and isinstance(source, DebianSource) and source.package not in build_deps:
        build_deps += (source.package,)   # its Build-Depends, as sbuild installs them (a .dsc's: packages.py)

    if build is None:
        if not one_line:
            doc.fail((), None, "[build] is missing", "add [build] with script = '''...'''")
        build = {}
    doc.check_keys(build, ("build",), {"script": str, "env": dict, "network": bool, "secret-env": list})
    binaries, debs = _parse_debian(doc, data.get("debian"), source, one_line)
    if one_line:
        script = debian.BUILD + debian.executables_script(binaries)
    else:
        script = build.get("script", "")
        if not script.strip():
            doc.fail(("build",), "script" if "script" in build else None, "the build script is empty",
                     "write the commands that build into $OUT in script = '''...'''")
    if debs:
        script = script.rstrip("\n") + "\n" + debian.debs_script(name)
    env = _check_env(doc, ("build",), build.get("env", {}))
    secret_env = build.get("secret-env", [])
    fetch_set = (*FETCH_ENV, *OFFLINE_ENV) if "fetch" in data else ()
    for key in secret_env:
        if key in BOX_ENV or key in fetch_set:
            own = BOX_ENV if key in BOX_ENV else fetch_set
            doc.fail(("build",), "secret-env", f"secret-env {key} is set by buildbox for the build itself"
                     f"{'' if key in BOX_ENV else ' (a recipe with [fetch])'}",
                     f"remove {key} from secret-env: buildbox sets {', '.join(own)}")
        if not ENV_NAME_RE.fullmatch(key) or key in env:
            doc.fail(("build",), "secret-env", f"secret-env {key!r} is not a free environment variable name",
                     "name variables that are not in [build] env")
    if "\0" in script:
        doc.fail(("build",), "script", "the build script holds a NUL byte, which no shell can be given",
                 "remove the \\u0000")

    fetch = _parse_fetch(doc, data.get("fetch"), source)
    if fetch:
        # Every one of them, or buildbox's value would silently win over the recipe's.
        clash = sorted(set(env) & {*FETCH_ENV, *OFFLINE_ENV})
        if clash:
            doc.fail(("build",), "env", f"{clash[0]} is set by buildbox for the build of a recipe with [fetch]",
                     f"remove {clash[0]} from [build] env (buildbox sets {', '.join([*FETCH_ENV, *OFFLINE_ENV])}; "
                     "GOFLAGS is kept, with -mod=mod appended)")

    verify = data.get("verify", {})
    doc.check_keys(verify, ("verify",), {"static": bool, "run": list, "timeout": object})
    verify_timeout = parse_amount(str(verify.get("timeout", 60)), "time")
    if verify_timeout is None or isinstance(verify.get("timeout"), bool):
        doc.fail(("verify",), "timeout", f"timeout = {verify.get('timeout')!r} is not a time", 'write timeout = "60s"')
    if any("\0" in command for command in verify.get("run", [])):
        doc.fail(("verify",), "run", "a verify command holds a NUL byte, which no shell can be given",
                 "remove the \\u0000")
    limits, unpack = _parse_limits(doc, data.get("limits", {}), {**LIMIT_KEYS, **UNPACK_KEYS})
    service = _parse_install(doc, data["install"], name) if "install" in data else None
    return Recipe(path=path, name=name, base=base, install=install, build_deps=build_deps,
                    source=source, env=tuple(sorted(env.items())), script=script,
                    static=verify.get("static", False), verify_run=tuple(verify.get("run", [])),
                    network=build.get("network", False), verify_timeout=verify_timeout,
                    secret_env=tuple(sorted(set(secret_env))), fetch=fetch,
                    limits=limits, unpack=unpack, service=service,
                    lines=(("packages", doc.line_of(("packages",))), ("source", doc.line_of(("source",))),
                           ("script", doc.line_of(("build",), "script")), ("fetch", doc.line_of(("fetch",)))))


def _check_env(doc: Doc, table: tuple[str, ...], env: dict[str, Any]) -> dict[str, str]:
    where = f"[{'.'.join(table)}] env"
    for key, value in env.items():
        if not ENV_NAME_RE.fullmatch(key):
            doc.fail(table, "env", f"{key!r} is not an environment variable name", "use letters, digits and _")
        if key in RESERVED_ENV:
            doc.fail(table, "env", f"{key} is set by buildbox and cannot be changed", f"remove {key} from {where}")
        if not isinstance(value, str):
            doc.fail(table, "env", f"env value of {key} must be a string", f'write {key} = "..."')
        if "\0" in value:
            doc.fail(table, "env", f"env value of {key} holds a NUL byte, which no program can be given",
                     "remove the \\u0000")
    return env


def _parse_fetch(doc: Doc, fetch: dict[str, Any] | None, source: Source) -> Fetch | None:
    """[fetch]: a script run with the network before the build, whose $FETCH tree is pinned."""
    if fetch is None:
        return None
    table = ("fetch",)
    # host-ports is checked below, whatever its type: check_keys has no "list of ints".
    doc.check_keys({key: value for key, value in fetch.items() if key != "host-ports"}, table,
                   {"script": str, "env": dict, "sha256": str, "host-ports": object})
    if isinstance(source, DEBIAN_KINDS):
        doc.fail(table, None, "[fetch] goes with a git or url source: a debian source's package already "
                 "brings everything its build needs", "remove [fetch], or build from the upstream git or tarball")
    script = fetch.get("script", "")
    if not script.strip():
        doc.fail(table, "script" if "script" in fetch else None, "[fetch] has no script",
                 "write the commands that download into $FETCH in script = '''...''' (e.g. go mod download)")
    if "\0" in script:
        doc.fail(table, "script", "the fetch script holds a NUL byte, which no shell can be given",
                 "remove the \\u0000")
    env = _check_env(doc, table, fetch.get("env", {}))
    reserved = sorted(set(env) & set(FETCH_ENV))
    if reserved:
        doc.fail(table, "env", f"{reserved[0]} is set by buildbox for the fetch and cannot be changed",
                 f"remove {reserved[0]} from [fetch] env")
    digest = _check_sha256(doc, table, fetch["sha256"]) if "sha256" in fetch else None
    ports = fetch.get("host-ports", [])
    if not isinstance(ports, list):
        doc.fail(table, "host-ports", "'host-ports' must be a list of ports", "write host-ports = [3000]")
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            doc.fail(table, "host-ports", f"host-ports holds {port!r}, which is not a TCP port (1 to 65535)",
                     "write host-ports = [3000]: the ports on the host's loopback the fetch may reach")
    return Fetch(script, tuple(sorted(env.items())), digest, tuple(sorted(set(ports))))


def _parse_debian(doc: Doc, table: dict[str, Any] | None, source: Source,
                  one_line: bool) -> tuple[tuple[str, ...], bool]:
    """[debian]: which binary packages' executables a one-line recipe takes (all, unless named),
    and whether the .debs are kept as a repository in out/NAME/debs (a one-line recipe's default)."""
    if table is None:
        return (), one_line
    key = ("debian",)
    doc.check_keys(table, key, {"binaries": list, "debs": bool})
    if not isinstance(source, DEBIAN_KINDS):
        doc.fail(key, None, "[debian] goes with a debian or dsc source",
                 'remove [debian], or build a Debian source package ([source] debian = "PACKAGE")')
    if "binaries" in table and not one_line:
        doc.fail(key, "binaries", "[debian] binaries picks the executables of a recipe with no [build] script, "
                 "and this one has a script", "copy what it should keep into $OUT in the script, or remove binaries")
    if "binaries" in table and not table["binaries"]:
        doc.fail(key, "binaries", "[debian] binaries names no package",
                 "name binary packages (binaries = [\"fd-find\"]), or remove it to take every package's executables")
    return _check_packages(doc, key, "binaries", table.get("binaries", [])), table.get("debs", one_line)


def _root_path(doc: Doc, key: str, path: str, what: str) -> str:
    """An absolute, plain path in a runtime root (no '..', no '//', no trailing '/', printable)."""
    if not path.startswith("/") or path != os.path.normpath(path) or path.startswith("//") or path == "/" \
            or any(ord(c) < 32 or c == "\x7f" for c in path) or ":" in path:
        doc.fail(("install",), key, f"{what} {path!r} is not an absolute path in the root",
                 f'write {key} paths such as "/var/lib/NAME" (absolute, no "..", no ":")')
    return path


def _parse_install(doc: Doc, table: dict[str, Any], name: str) -> Service:
    """[install]: exec, user, files, state, ca-certificates, capabilities, check."""
    key = ("install",)
    doc.check_keys(table, key, {"exec": list, "user": str, "files": dict, "state": list, "ca-certificates": bool,
                                "capabilities": list, "check": list})
    command = table.get("exec", [])
    if not command or not command[0]:
        doc.fail(key, "exec" if "exec" in table else None, "[install] exec names no program",
                 f'write exec = ["{name}", "ARGUMENT", ...]: an artifact of the build and its arguments')
    if any(_control(word) for word in command):
        doc.fail(key, "exec", "[install] exec holds a control character (a newline, a NUL)",
                 "write each argument on one line, with printable characters")
    user = table.get("user", name.lower().replace(".", "-").replace("+", "-"))
    if not USER_RE.fullmatch(user) or user == "root":
        doc.fail(key, "user" if "user" in table else None, f"user {user!r} is not a service user's name",
                 'write user = "NAME": lowercase letters, digits, _ and -, not root')
    files = []
    folder = os.path.realpath(doc.path.parent)
    for there, here in table.get("files", {}).items():
        _root_path(doc, "files", there, "files names")
        if there in ROOT_OWN or there in NOT_STATE or there.startswith(("/usr/", "/dev/", "/proc/", "/tmp/")):
            doc.fail(key, "files", f"files names {there}, which buildbox makes itself",
                     "put the file elsewhere (/etc/NAME/...)")
        if not isinstance(here, str) or not here or "\0" in here:
            doc.fail(key, "files", f"files {there} = {here!r} names no file", f'write "{there}" = "FILE", relative to '
                     "the recipe's folder")
        source = os.path.realpath(os.path.join(doc.path.parent, here))
        if os.path.commonpath([folder, source]) != folder:
            doc.fail(key, "files", f"files {there} = {here!r} is outside the recipe's folder {folder}",
                     "copy the file next to the recipe and name it relative to it")
        if not os.path.isfile(source):
            doc.fail(key, "files", f"files {there} = {here!r}: no such file ({source})",
                     "name a file relative to the recipe's folder")
        files.append((there, os.path.relpath(source, folder)))
    state = []
    for path in table.get("state", []):
        _root_path(doc, "state", path, "state")
        if any(path == top or path.startswith(top + "/") for top in NOT_STATE):
            doc.fail(key, "state", f"state {path} is in {next(t for t in NOT_STATE if path == t or path.startswith(t + '/'))}, "
                     "which the root's generations own", 'keep state in /var/lib/NAME, /srv/NAME or the like')
        state.append(path)
    for path in state:
        if any(other != path and (other.startswith(path + "/")) for other in state) or \
                any(there == path or there.startswith(path + "/") for there, _ in files):
            doc.fail(key, "state", f"state {path} holds another state or files path",
                     "name state directories that hold no other [install] path")
    capabilities = [cap.upper() for cap in table.get("capabilities", [])]
    for cap in capabilities:
        if cap not in CAPABILITIES:
            close = difflib.get_close_matches(cap, CAPABILITIES, n=1)
            doc.fail(key, "capabilities", f"{cap!r} is not a capability",
                     f"did you mean {close[0]}?" if close else "name Linux capabilities, such as CAP_NET_BIND_SERVICE")
    checks = table.get("check", [])
    if any(not c.strip() or _control(c) for c in checks):
        doc.fail(key, "check", "a check command is empty or holds a control character (a newline, a NUL)",
                 'write check = ["NAME --version"], one command per string')
    lines = tuple((k, doc.line_of(key, k)) for k in ("exec", "user", "files", "state", "ca-certificates",
                                                      "capabilities", "check"))
    return Service(tuple(command), user, tuple(sorted(files)), tuple(sorted(state)), table.get("ca-certificates", False),
                   tuple(sorted(set(capabilities))), tuple(checks), (("install", doc.line_of(key)), *lines),
                   Path(folder))


def _control(text: str) -> bool:
    return any(ord(c) < 32 or c == "\x7f" for c in text)


def _kernel_most(key: str) -> int:
    """The largest value setrlimit takes for a limit (open files: the host's fs.nr_open)."""
    if key == "files":
        try:
            return int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            return 1 << 20
    return (1 << 63) - 2   # RLIM_INFINITY and the CPU limit's hard value one above must still fit


def _parse_limits(doc: Doc, table: dict[str, Any], allowed: dict[str, str]) -> tuple[Limits, UnpackLimits]:
    """[limits]: sizes as 512M / 4G (or bytes), times as 90s / 20m / 2h (or seconds), counts as numbers."""
    doc.check_keys(table, ("limits",), {key: object for key in allowed})
    values: dict[str, int] = {}
    for key, value in table.items():
        kind = allowed[key]
        amount = None if isinstance(value, bool) else parse_amount(str(value), kind)
        if amount is None:
            example = {"size": '"4G" or "512M"', "time": '"2h", "20m" or "90s"', "count": "a number such as 1024"}
            doc.fail(("limits",), key, f"{key} = {value!r} is not a {kind}", f"write {key} = {example[kind]}")
        least = LIMIT_MINIMUMS.get(key)
        if least and amount < parse_amount(least, kind):
            written = f'"{least}"' if kind == "size" else least
            doc.fail(("limits",), key, f"{key} = {value!r} is less than a build can work with ({least})",
                     f"write {key} = {written} or more")
        most = _kernel_most(key)
        if amount > most:
            doc.fail(("limits",), key, f"{key} = {value!r} is more than the kernel allows ({most})",
                     f"write {key} = {most} or less")
        values[key.replace("-", "_")] = amount
    return (Limits(**{k: v for k, v in values.items() if k not in UNPACK_KEYS}),
            UnpackLimits(**{k: v for k, v in values.items() if k in UNPACK_KEYS}))


def _parse_source(doc: Doc, source: dict[str, Any] | None) -> Source:
    table = ("source",)
    if source is None:
        doc.fail((), None, "[source] is missing", 'add [source] with git = "URL", url = "URL", debian = "PACKAGE" or dsc = "FILE.dsc"')
    doc.check_keys(source, table, {"git": str, "ref": str, "url": str, "sha256": str, "debian": str, "dsc": str})
    kinds = [k for k in ("git", "url", "debian", "dsc") if k in source]
    if not kinds:
        doc.fail(table, None, "[source] names no source", "add exactly one of git, url, debian or dsc")
    if len(kinds) > 1:
        doc.fail(table, kinds[1], f"[source] names both '{kinds[0]}' and '{kinds[1]}'",
                 "keep exactly one of git, url, debian or dsc")
    kind = kinds[0]
    for key, owner in (("ref", "git"), ("sha256", "url")):
        if key in source and kind != owner:
            doc.fail(table, key, f"'{key}' goes with a {owner} source, not a {kind} source", f"remove {key}")
    if kind == "git":
        url = source["git"]
        if not url.strip() or url.startswith("-"):
            doc.fail(table, "git", f"git = {url!r} names no repository",
                     "write an https:// URL or an absolute path to a local repository")
        if not (re.match(r"(https?|git|ssh|file)://", url) or url.startswith("/") or re.match(r"[\w.-]+@[\w.-]+:", url)):
            local = (doc.path.parent / url).resolve()
            if not local.exists():
                doc.fail(table, "git", f"git source '{url}' is neither a URL nor an existing path",
                         "write an https:// URL or an absolute path to a local repository")
            url = str(local)
        ref = source.get("ref", "HEAD")
        if not ref or ref.startswith("-") or any(c.isspace() for c in ref):
            doc.fail(table, "ref", f"'{ref}' is not a git ref", "name a branch, a tag or a commit")
        return GitSource(url, ref)
    if kind == "url":
        if "sha256" not in source:
            doc.fail(table, "url", "a url source needs a sha256", 'add sha256 = "..." (sha256sum of the tarball)')
        return UrlSource(source["url"], _check_sha256(doc, table, source["sha256"]))
    if kind == "dsc":
        value = source["dsc"]
        if not value.strip() or "\0" in value or not value.endswith(".dsc"):
            doc.fail(table, "dsc", f"dsc = {value!r} names no .dsc file",
                     'write dsc = "path/to/foo_1.0-1.dsc", relative to the recipe\'s folder')
        return debian.read_dsc(Path(os.path.abspath(doc.path.parent / value)),
                               where=f"{doc.path}:{doc.line_of(table, 'dsc')}")
    package = source["debian"]
    if not PACKAGE_RE.fullmatch(package):
        doc.fail(table, "debian", f"'{package}' is not a Debian source package name",
                 "use lowercase letters, digits and + . -")
    return DebianSource(package)


def find_recipes(recipes_dir: Path) -> list[Path]:
    """The recipe files of a directory (its base/ folder holds bases, not recipes)."""
    return sorted(recipes_dir.glob("*.toml"))
