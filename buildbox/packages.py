"""apt inside a box, and package layers: the changes an install made, kept to mount under later boxes."""

from __future__ import annotations

import re
from pathlib import Path

from buildbox.box import Box
from buildbox.errors import BuildFailed, BuildboxError, InputError
from buildbox.store import Store, write_meta

APT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LANG": "C.UTF-8"}
APT_OPTS = [
    "-y", "-q", "--no-install-recommends",
    # A layer is rebuilt from scratch if anything goes wrong, so dpkg's fsync after every file
    # buys nothing here and costs most of the install time (mock's nosync found the same).
    "-o", "DPkg::Options::=--force-unsafe-io",
    "-o", "APT::Keep-Downloaded-Packages=true",
]


def fetch_access(box: Box, store: Store) -> None:
    """What a box needs to reach the network and the shared .deb cache."""
    box.bind(Path("/etc/resolv.conf").resolve(), "/etc/resolv.conf")
    box.bind(store.dir("debs"), "/var/cache/apt/archives", readonly=False)


def make_layer(store: Store, lower: list[Path], install: tuple[str, ...], build_deps: tuple[str, ...],
               entry: Path, logfile: Path) -> None:
    """Install packages over `lower` and keep what changed as the layer `entry`/root."""
    with Box(store, lower, label="layer", upper=entry / "root", log=logfile) as box:
        fetch_access(box, store)

        def apt(*args: str, what: str) -> None:
            box.run(["apt-get", *args], what=what, env=APT_ENV, log=logfile, network=True)

        apt("update", "-q", what="apt-get update")
        if install:
            apt("install", *APT_OPTS, *install, what=f"installing {', '.join(install)}")
        if build_deps:
            apt("build-dep", *APT_OPTS, *build_deps, what=f"installing the Build-Depends of {', '.join(build_deps)}")
        versions = box.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"], what="dpkg-query",
                           env=APT_ENV, capture=True)
    packages = dict(line.split("\t", 1) for line in versions.splitlines() if "\t" in line)
    write_meta(entry, {"install": list(install), "build-deps": list(build_deps), "packages": packages})


# apt's words for "that package is not in the archive": bad input, not a failed build.
MISSING_PATTERNS = [
    r"E: Unable to locate package (\S+)",
    r"E: Package '([^']+)' has no installation candidate",
    r"E: Unable to find a source package for (\S+)",
    r"E: Can't find a source to download for (\S+)",
]
UNREACHABLE_PATTERNS = [r"Temporary failure resolving '([^']+)'", r"Could not resolve '([^']+)'",
                        r"Failed to fetch (\S+)", r"Could not connect to (\S+)", r"Unable to connect to (\S+)"]


def explain_apt_failure(err: BuildFailed, where: str) -> BuildboxError:
    """Turn apt's "no such package" or "mirror unreachable" into a one-line error on the right line."""
    for pattern in MISSING_PATTERNS:
        found = re.search(pattern, err.tail)
        if found:
            return InputError(f"package '{found.group(1)}' does not exist in the archive", where=where,
                              hint="check its name (apt-cache search NAME) and the suite of the base")
    for pattern in UNREACHABLE_PATTERNS:
        found = re.search(pattern, err.tail)
        if found:
            return InputError(f"the mirror cannot be reached ({found.group(0)})", where=where,
                              hint="check the mirror URL and the network, then run again")
    return err
