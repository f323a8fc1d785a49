"""Debian source packages as recipes: a local .dsc read and checked, and what a recipe with no
[build] script builds, as sbuild builds it (README, "Recipes from Debian").

A .dsc is read on the host (a text file of a few fields, capped); the files it names are copied
beside it into the box only after each is hashed against its Checksums-Sha256. Everything the
package's own files do (its debian/rules, its maintainer scripts) runs in the box.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from buildbox.constants import BUILD_DIR, SRC
from buildbox.errors import InputError
from buildbox.pins import DebianPin

# Debian policy's grammars of the Package, Version and Architecture fields: what reaches apt's and
# dpkg's command lines from a recipe, a base, a lock or a .dsc must match them, and none can start
# with '-'.
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# [epoch:]upstream[-revision]: the upstream version may hold colons only after an epoch and hyphens
# only before a revision. Four flat alternatives, so that a long hostile string is refused in
# linear time, not by backtracking through nested stars.
VERSION_RE = re.compile(r"[0-9]+:[0-9][A-Za-z0-9.+~:-]*-[A-Za-z0-9.+~]+|[0-9]+:[0-9][A-Za-z0-9.+~:]*"
                        r"|[0-9][A-Za-z0-9.+~-]*-[A-Za-z0-9.+~]+|[0-9][A-Za-z0-9.+~]*")
ARCH_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
# A file a .dsc names: a plain name in its folder (dpkg-source's own names: foo_1.0.orig.tar.gz).
FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_~-]{0,254}")
DSC_MAX = 1 << 20    # bytes: a .dsc is a few kB; a bigger one is not one
# The relations `apt-get build-dep` installs for `dpkg-buildpackage -b` (arch and indep both).
BUILD_DEPENDS = ("Build-Depends", "Build-Depends-Arch", "Build-Depends-Indep")
# Where a package's install tree keeps what a user runs: a one-line recipe's artifacts.
EXEC_DIRS = ("usr/bin", "usr/sbin", "bin", "sbin")
DSC_DIR = "/buildbox/dsc"   # where a box sees a .dsc and its files, read-only


@dataclass(frozen=True)
class DscFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DscSource:
    """[source] dsc: a Debian source package as local files, keyed by the .dsc's sha256 (which
    pins every file it names), so it is the same source as the archive's of the same .dsc."""
    path: Path                              # the .dsc, absolute
    sha256: str
    package: str
    version: str
    files: tuple[DscFile, ...]
    depends: tuple[tuple[str, str], ...]    # (Build-Depends..., its relations): the layer's key holds them

    @property
    def pin(self) -> DebianPin:
        """Named as dpkg-source and the archive name it (SOURCE_VERSION.dsc, no epoch), whatever
        the file's own name: a renamed copy is the same source, and a lock reads the name back."""
        return DebianPin(self.package, self.version, f"{self.package}_{self.version.split(':', 1)[-1]}.dsc",
                         self.sha256)


def read_dsc(path: Path, where: str) -> DscSource:
    """Read and check a .dsc (`where`: the recipe's line that names it, for a missing file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(f"the .dsc {path} does not exist", where=where,
                         hint="name a .dsc made by dpkg-source -b, relative to the recipe's folder") from None
    except OSError as err:
        raise InputError(f"cannot read the .dsc {path}: {err.strerror}", where=where,
                         hint="name the .dsc itself, not a link to it") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InputError(f"{path} is not a regular file", where=where, hint="name a .dsc file")
        raw = f.read(DSC_MAX + 1)
    if len(raw) > DSC_MAX:
        raise InputError(f"{path} is over {DSC_MAX} bytes, which no .dsc is", where=where, hint="name a .dsc file")
    fields = _fields(raw.decode("utf-8", errors="replace"), path)

    def field(name: str, pattern: re.Pattern[str], what: str) -> str:
        value, line = fields.get(name, ("", 1))
        if not pattern.fullmatch(value):
            raise InputError(f"the .dsc's {name} field {value[:60]!r} is not {what}", where=f"{path}:{line}",
                             hint="make the .dsc again with dpkg-source -b")
        return value

    package = field("Source", PACKAGE_RE, "a Debian source package name")
    version = field("Version", VERSION_RE, "a Debian version")
    listed, line = fields.get("Checksums-Sha256", ("", 1))
    files = []
    for offset, entry in enumerate(listed.split("\n")):   # the field's own line, then one per file
        parts = entry.split()
        if not parts:
            continue
        if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]) or not parts[1].isdigit() \
                or not FILE_NAME_RE.fullmatch(parts[2]):
            raise InputError(f"the .dsc's Checksums-Sha256 line {entry.strip()[:100]!r} is not 'SHA256 SIZE NAME'",
                             where=f"{path}:{line + offset}", hint="make the .dsc again with dpkg-source -b")
        files.append(DscFile(parts[2], parts[0], int(parts[1])))
    if not files:
        raise InputError("the .dsc names no files in Checksums-Sha256", where=f"{path}:{line}",
                         hint="make the .dsc again with dpkg-source -b")
    depends = tuple((name, " ".join(fields[name][0].split())) for name in BUILD_DEPENDS if name in fields)
    return DscSource(path, hashlib.sha256(raw).hexdigest(), package, version, tuple(files), depends)


def _fields(text: str, path: Path) -> dict[str, tuple[str, int]]:
    """The fields of a .dsc's one paragraph (a clearsigned one's signed part), with their lines."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    if lines and lines[0].startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        start = next((i for i, line in enumerate(lines) if not line.strip()), len(lines)) + 1
        end = next((i for i, line in enumerate(lines) if line.startswith("-----BEGIN PGP SIGNATURE")), len(lines))
    fields: dict[str, tuple[str, int]] = {}
    name = None
    for number in range(start, end):
        line = lines[number]
        if line.startswith("- "):
            line = line[2:]   # a clearsigned text's dash-escaping
        if not line.strip():
            if fields:
                break   # the one paragraph ends
            continue
        if line[0] in " \t":
            if name is None:
                raise InputError("the .dsc starts with a continuation line", where=f"{path}:{number + 1}",
                                 hint="make the .dsc again with dpkg-source -b")
            value, at = fields[name]
            fields[name] = (f"{value}\n{line.strip()}", at)
            continue
        name, colon, value = line.partition(":")
        if not colon or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
            raise InputError(f"the .dsc's line {line[:60]!r} is not a field", where=f"{path}:{number + 1}",
                             hint="make the .dsc again with dpkg-source -b")
        fields[name] = (value.strip(), number + 1)
    return fields


def stage(source: DscSource, dest: Path, *, with_files: bool = True) -> Path:
    """Copy the .dsc (and the files it names) from its folder into dest, each hashed as it is
    copied; a file that is missing, not regular, or not what the .dsc says is bad input that
    names it. Returns dest/NAME.dsc, the box's copy to give dpkg-source or apt-get build-dep."""
    dest.mkdir(mode=0o755, exist_ok=True)
    os.chmod(dest, 0o755)
    wanted = [DscFile(source.path.name, source.sha256, -1), *(source.files if with_files else ())]
    for item in wanted:
        path = source.path.parent / item.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as err:
            raise InputError(f"{item.name}, which {source.path.name} names, cannot be read beside it "
                             f"({err.strerror})", where=str(source.path),
                             hint="keep the files dpkg-source -b made beside the .dsc") from None
        digest = hashlib.sha256()
        with os.fdopen(fd, "rb") as f, open(dest / item.name, "wb") as out:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{path} is not a regular file", where=str(source.path),
                                 hint="keep the files dpkg-source -b made beside the .dsc")
            if item.size >= 0 and st.st_size != item.size:   # before a byte is copied: no disk filled
                raise InputError(f"{path} is {st.st_size} bytes, not the {item.size} its Checksums-Sha256 says",
                                 where=str(source.path), hint="make the source package again with dpkg-source -b")
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        os.chmod(dest / item.name, 0o644)
        if digest.hexdigest() != item.sha256:
            # Its own digest is not said: a recipe must not learn the digests of files it cannot read.
            what = "it had when the recipe was read" if item.size < 0 else "its Checksums-Sha256 says"
            raise InputError(f"{path} does not have the sha256 {item.sha256} {what}",
                             where=str(source.path), hint="make the source package again with dpkg-source -b")
    return dest / source.path.name


# -- what a recipe with no [build] script builds ----------------------------------------------

BUILD = """\
# buildbox: a Debian source with no [build] script is built as sbuild builds it
dpkg-buildpackage -b -uc -us
"""


def executables_script(binaries: tuple[str, ...]) -> str:
    """The part of a one-line recipe's script that puts in $OUT the executables of the binary
    packages built (of `binaries` only, if named), from their install trees debian/PACKAGE/,
    under their own names (a link is copied as what it names inside that tree)."""
    if binaries:
        packages = f"for package in {' '.join(binaries)}; do\n" \
            '    if ! ls ../"$package"_*.deb >/dev/null 2>&1; then\n' \
            '        echo "buildbox: [debian] binaries names $package, which this build made no .deb of" >&2\n' \
            "        exit 1\n    fi\n"
    else:
        packages = "for deb in ../*.deb; do\n" \
            '    [ -f "$deb" ] || continue\n    package=${deb##*/}; package=${package%%_*}\n'
    return f"""\
# buildbox: the executables of the packages built, from their install trees
cd {SRC}
{packages}    tree=debian/$package
    for dir in {' '.join(EXEC_DIRS)}; do
        [ -d "$tree/$dir" ] || continue
        for file in "$tree/$dir"/*; do
            real=$file
            if [ -L "$file" ]; then
                target=$(readlink -- "$file")
                case $target in /*) real=$tree$target ;; esac
            fi
            [ -f "$real" ] && [ -x "$real" ] || continue
            name=${{file##*/}}
            if [ -e "$OUT/$name" ]; then
                cmp -s -- "$real" "$OUT/$name" && continue
                echo "buildbox: two of the packages built ship an executable $name" >&2
                exit 1
            fi
            cp -L -- "$real" "$OUT/$name"
        done
    done
done
"""


def debs_script(name: str) -> str:
    """The part of a script that keeps every .deb built and the .buildinfo in $OUT/debs, with a
    Packages index and a Release dated by SOURCE_DATE_EPOCH: a flat apt repository, the same bits
    on every machine (a .buildinfo's DEB_BUILD_OPTIONS aside: dpkg adds parallel=CPUS unless the
    recipe's env sets it)."""
    return f"""\
# buildbox: the .debs as an apt repository ([debian] debs)
cd {BUILD_DIR}
if ! ls ./*.deb >/dev/null 2>&1; then
    echo "buildbox: [debian] debs = true, but the build left no .deb in {BUILD_DIR}" >&2
    exit 1
fi
mkdir -p "$OUT/debs"
cp -- ./*.deb "$OUT/debs/"
# A .buildinfo's Build-Date is the clock's, which no two builds share: it says SOURCE_DATE_EPOCH's.
built=$(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" -R)
for file in ./*.buildinfo; do
    if [ -f "$file" ]; then
        sed "s/^Build-Date: .*/Build-Date: $built/" "$file" > "$OUT/debs/${{file##*/}}"
    fi
done
cd "$OUT/debs"
dpkg-scanpackages --multiversion . > Packages
{{
    echo "Origin: buildbox"
    echo "Label: {name}"
    echo "Date: $(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" '+%a, %d %b %Y %H:%M:%S UTC')"
    echo "SHA256:"
    echo " $(sha256sum Packages | cut -d' ' -f1) $(wc -c < Packages) Packages"
}} > Release
"""
