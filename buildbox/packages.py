"""apt inside a box, and package layers: the changes an install made, kept to mount under later boxes."""

from __future__ import annotations

import itertools
import os
import stat
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from buildbox import debian, log
from buildbox.box import Box
from buildbox.context import Context
from buildbox.debian import DSC_DIR, DscSource
from buildbox.errors import BuildFailed, BuildboxError, InputError
from buildbox.store import Store, copy_sparse, file_sha256, remove_tree, write_meta

if TYPE_CHECKING:
    from buildbox.recipe import Lock, Recipe

# apt-get takes `--` as the end of its options (apt 2.6, bookworm's): every package operand comes after
# one. What follows is still apt's syntax (NAME=VERSION, a .deb's path), so each part is checked too.
APT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8"}
APT_OPTS = [
    "-y", "-q", "--no-install-recommends",
    # A layer is rebuilt from scratch if anything goes wrong, so dpkg's fsync after every file
    # buys nothing here and costs most of the install time (mock's nosync found the same).
    "-o", "DPkg::Options::=--force-unsafe-io",
    "-o", "APT::Keep-Downloaded-Packages=true",
]


ARCHIVES = "/var/cache/apt/archives"


def fetch_access(box: Box, store: Store) -> Path:
    """What a box needs to reach the network and the shared .deb cache: the cache under an
    overlay of the box's own (box root writes nothing of the host's); returns where its new
    files are, for keep_debs."""
    box.bind(Path("/etc/resolv.conf").resolve(), "/etc/resolv.conf")
    os.chmod(store.dir("debs"), 0o755)
    return box.overlay(store.dir("debs"), ARCHIVES)


def keep_debs(new: Path, store: Store, index: dict[tuple[str, str, str], str]) -> None:
    """Copy into the shared .deb cache the .debs this box downloaded that are what the archive's
    signed index says (name, version, arch and sha256), as root's plain 0644 files: nothing a
    package, a hook or a mirror left there is taken on its word."""
    expected = {deb_name(name, version, arch): digest for (name, version, arch), digest in index.items()}
    debs = store.dir("debs")
    for entry in sorted(os.scandir(new), key=lambda e: e.name):
        digest = expected.get(entry.name)
        if digest is None or not _regular(Path(entry.path)) or (debs / entry.name).exists():
            continue
        tmp = debs / f".{entry.name}.tmp-{os.getpid()}"
        try:
            copy_sparse(Path(entry.path), tmp)
            if file_sha256(tmp) != digest:
                continue
            os.chmod(tmp, 0o644)
            os.replace(tmp, debs / entry.name)
        finally:
            tmp.unlink(missing_ok=True)


def make_layer(store: Store, lower: list[Path], install: tuple[str, ...], build_deps: tuple[str, ...],
               entry: Path, logfile: Path, *, lock: Lock | None = None, dsc: DscSource | None = None) -> None:
    """Install packages over `lower` and keep what changed as the layer `entry`/root: what the
    recipe asks for (and a local .dsc's Build-Depends), resolved by apt today, or with a lock
    exactly the packages it pins."""
    staged = debian.stage(dsc, entry / ".dsc", with_files=False) if dsc and not lock else None
    try:
        _make_layer(store, lower, install, build_deps, entry, logfile, lock, staged)
    finally:
        if staged:
            remove_tree(staged.parent)


def _make_layer(store: Store, lower: list[Path], install: tuple[str, ...], build_deps: tuple[str, ...],
                entry: Path, logfile: Path, lock: Lock | None, dsc: Path | None) -> None:
    with Box(store, lower, label="layer", upper=entry / "root", log=logfile) as box:
        new_debs = fetch_access(box, store)

        def apt(*args: str, what: str) -> None:
            box.run(["apt-get", *args], what=what, env=APT_ENV, log=logfile, network=True)

        apt("update", "-q", what="apt-get update")
        if lock:
            _install_locked(box, store, lock, apt)
        else:
            if install:
                apt("install", *APT_OPTS, "--", *install, what=f"installing {', '.join(install)}")
            if build_deps:
                apt("build-dep", *APT_OPTS, "--", *build_deps,
                    what=f"installing the Build-Depends of {', '.join(build_deps)}")
            if dsc:   # apt-get build-dep takes a .dsc's path (one ending in .dsc) as the source itself
                box.bind(dsc.parent, DSC_DIR)
                apt("build-dep", *APT_OPTS, "--", f"{DSC_DIR}/{dsc.name}",
                    what=f"installing the Build-Depends of {dsc.name}")
        index = _index_sha256(box.path("/var/lib/apt/lists"))
        packages = _pins(box, index, (new_debs, store.dir("debs")))
        keep_debs(new_debs, store, index)
    if lock:
        _check_locked(packages, lock)
    write_meta(entry, {"install": list(install), "build-deps": list(build_deps), "packages": packages})


def make(ctx: Context, recipe: Recipe, base: list[Path], entry: Path, why: str = "") -> None:
    """The package stage: the recipe's packages installed over its base layers, kept as entry/root."""
    lock = recipe.lock
    if lock:
        what = f"the {len(lock.pins.packages)} packages of {lock.path.name}"
    else:
        dsc = (f"build-deps of {recipe.source.path.name}",) if isinstance(recipe.source, DscSource) else ()
        what = ", ".join(recipe.layer_install + tuple(f"build-deps of {p}" for p in recipe.build_deps) + dsc) \
            or "nothing"
    if recipe.implicit and not lock:
        implicit = (f"layer {recipe.name}: also installing {', '.join(recipe.implicit)}, which a Debian source "
                    "needs (as sbuild does)")
        log.say(implicit)
        why = f"{why}\nbuildbox: {implicit}" if why else implicit
    with log.step(f"Installing packages into a layer ({what})"):
        try:
            make_layer(ctx.store, base, recipe.layer_install, recipe.build_deps, entry,
                       ctx.logfile(recipe.name, "packages", why), lock=lock,
                       dsc=recipe.source if isinstance(recipe.source, DscSource) else None)
        except BuildFailed as err:
            raise explain_apt_failure(err, recipe.at("packages"), lock) from None


def make_essentials(ctx: Context, recipe: Recipe, base: list[Path], entry: Path, why: str = "") -> None:
    """The shared layer of the buildd's build-essential set over a base (keys.ESSENTIALS), made
    once for every recipe of a Debian source on that base."""
    from buildbox.keys import ESSENTIALS
    with log.step(f"Installing the build essentials into a shared layer ({', '.join(ESSENTIALS)})"):
        try:
            make_layer(ctx.store, base, ESSENTIALS, (), entry, ctx.logfile(recipe.name, "essentials", why))
        except BuildFailed as err:
            raise explain_apt_failure(err, recipe.at("packages")) from None


def _installed(box: Box) -> dict[str, tuple[str, str]]:
    """Every package installed in the box: name (name:arch if foreign) -> (version, arch)."""
    out = box.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n"],
                  what="dpkg-query", env=APT_ENV, capture=True)
    native = box.run(["dpkg", "--print-architecture"], what="dpkg --print-architecture", env=APT_ENV,
                     capture=True).strip()
    found = {}
    for line in out.splitlines():
        name, version, arch, status = (line.split("\t") + ["", "", ""])[:4]
        if status.startswith("ii"):
            found[name if arch in (native, "all") else f"{name}:{arch}"] = (version, arch)
    return found


def deb_name(name: str, version: str, arch: str) -> str:
    """The file name apt gives a downloaded .deb (an epoch's colon is written %3a)."""
    return f"{name.split(':')[0]}_{version.replace(':', '%3a')}_{arch}.deb"


def _pins(box: Box, index: dict[tuple[str, str, str], str], places: tuple[Path, ...]) -> dict[str, dict[str, str]]:
    """Every installed package with its version, architecture and .deb sha256: the sha256 of the
    very file apt installed where a .deb cache (the box's new files, the shared cache) has it as a
    regular file, else the one the archive's index gives."""
    pins = {}
    for name, (version, arch) in sorted(_installed(box).items()):
        pin = {"version": version, "arch": arch}
        file = deb_name(name, version, arch)
        cached = next((place / file for place in places if _regular(place / file)), None)
        digest = file_sha256(cached) if cached else index.get((name.split(":")[0], version, arch))
        if digest:
            pin["sha256"] = digest
        pins[name] = pin
    return pins


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _index_sha256(lists: Path) -> dict[tuple[str, str, str], str]:
    """(package, version, arch) -> sha256 of its .deb, from the Packages indexes apt fetched."""
    found = {}
    for index in sorted(lists.glob("*_Packages")):
        record: dict[str, str] = {}
        # Line by line: an index is tens of MB, read whole it took buildbox past 400 MB.
        with open(index, errors="replace") as lines:
            for line in itertools.chain((line.rstrip("\n") for line in lines), [""]):
                if not line:
                    if {"Package", "Version", "Architecture", "SHA256"} <= set(record):
                        found[(record["Package"], record["Version"], record["Architecture"])] = record["SHA256"]
                    record = {}
                elif not line[0].isspace() and ":" in line:
                    key, _, value = line.partition(":")
                    record[key] = value.strip()
    return found


def _install_locked(box: Box, store: Store, lock: Lock, apt: Callable[..., None]) -> None:
    """Install exactly the pinned packages the base lacks: from the .deb cache when it holds the
    pinned file (the archive may have moved on), else that version from the archive. Every part of
    NAME=VERSION and of the .deb's name was checked when the lock was read (lock.read_lock)."""
    base = _installed(box)
    debs = store.dir("debs")
    args = []
    for pin in lock.pins.packages:
        if base.get(pin.name) == (pin.version, pin.arch):
            continue
        cached = debs / deb_name(pin.name, pin.version, pin.arch)
        if pin.sha256 and cached.is_file() and file_sha256(cached) == pin.sha256:
            args.append(f"/var/cache/apt/archives/{cached.name}")
        else:
            args.append(f"{pin.name}={pin.version}")
    if args:
        apt("install", *APT_OPTS, "--allow-downgrades", "--", *args,
            what=f"installing the {len(args)} packages {lock.path.name} pins")


def _check_locked(packages: dict[str, dict[str, str]], lock: Lock) -> None:
    """A locked layer holds exactly the pinned packages, each from the pinned .deb."""
    pinned = lock.pins.packages.as_dict()
    for name in sorted(set(packages) | set(pinned)):
        got, want = packages.get(name), pinned.get(name)
        if want is None:
            raise BuildFailed(f"the locked install brought in {name} {got['version']}, which {lock.path.name} "
                              "does not pin", hint=f"re-lock: `buildbox lock {lock.path.with_suffix('.toml')}`")
        if got is None or (got["version"], got["arch"]) != (want["version"], want["arch"]):
            have = f"{got['version']} ({got['arch']})" if got else "nothing"
            raise BuildFailed(f"the locked install gave {name} {have}, not the pinned {want['version']} "
                              f"({want['arch']})", where=lock.at(name),
                              hint=f"re-lock: `buildbox lock {lock.path.with_suffix('.toml')}`")
        if "sha256" in want and got.get("sha256") not in (None, want["sha256"]):
            raise BuildFailed(f"the .deb of {name} {want['version']} has sha256 {got['sha256']}, not the "
                              f"pinned {want['sha256']}", where=lock.at(name),
                              hint="the archive now serves other bytes under that version: find out why "
                              "before re-locking")


# apt's words for "that package is not in the archive": bad input, not a failed build.
MISSING_PATTERNS = [
    r"E: Unable to locate package (\S+)",
    r"E: Package '([^']+)' has no installation candidate",
    r"E: Unable to find a source package for (\S+)",
    r"E: Can't find a source to download for (\S+)",
]
# ... the mirror answered, with an HTTP error (apt prints the URL, then the status on the next line) ...
HTTP_ERROR_PATTERNS = [r"Failed to fetch (?P<url>\S+)\s+(?P<code>[45]\d\d)\s+(?P<reason>[A-Za-z][A-Za-z ]*?)\s*(\[|$)",
                       r"^(?:Err|Ign):\d+ (?P<url>\S+ \S+ \S+)\s*\n\s+(?P<code>[45]\d\d)\s+"
                       r"(?P<reason>[A-Za-z][A-Za-z ]*?)\s*(\[|$)"]
UNREACHABLE_PATTERNS = [r"Temporary failure resolving '([^']+)'", r"Could not resolve '([^']+)'",
                        r"Failed to fetch (\S+)", r"Could not connect to (\S+)", r"Unable to connect to (\S+)"]


# ... and under a lock, "that pinned version is gone": the archive moved on since the lock.
GONE_PATTERNS = [r"E: Version '(?P<version>[^']+)' for '(?P<name>[^']+)' was not found",
                 r"E: Can not find version '(?P<version>[^']+)' of package '(?P<name>[^']+)'",
                 r"E: Unable to locate package (?P<name>\S+)"]


def explain_apt_failure(err: BuildFailed, where: str, lock: Lock | None = None) -> BuildboxError:
    """Turn apt's "no such package" or "mirror unreachable" into a one-line error on the right line."""
    for pattern in GONE_PATTERNS if lock else ():
        found = re.search(pattern, err.tail)
        if found:
            name = found.group("name")
            pin = lock.pins.packages.get(name) or lock.pins.source
            recipe = lock.path.with_suffix(".toml")
            return InputError(f"{name} {found.groupdict().get('version') or getattr(pin, 'version', '')}, pinned "
                              f"by the lock, is no longer in the archive nor in the cache",
                              where=lock.at(name if lock.pins.packages.get(name) else "source"),
                              hint=f"`buildbox run --refresh {recipe}` locks what the archive has now; to "
                              "rebuild the locked bits, use a cache that holds them or a snapshot.debian.org mirror")
    for pattern in MISSING_PATTERNS:
        found = re.search(pattern, err.tail)
        if found:
            return InputError(f"package '{found.group(1)}' does not exist in the archive", where=where,
                              hint="check its name (apt-cache search NAME) and the suite of the base")
    for pattern in HTTP_ERROR_PATTERNS:
        found = re.search(pattern, err.tail, re.MULTILINE)
        if found:
            return InputError(f"{found.group('code')} {found.group('reason')}: {found.group('url')}", where=where,
                              hint="check the mirror URL and the suite")
    for pattern in UNREACHABLE_PATTERNS:
        found = re.search(pattern, err.tail)
        if found:
            return InputError(f"the mirror cannot be reached ({found.group(0)})", where=where,
                              hint="check the mirror URL and the network, then run again")
    return err
