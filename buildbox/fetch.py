"""The fetch phase: a recipe's [fetch] script run as the build user, with the network, in a clone
of its box (packages installed, source read-only). Only $FETCH is kept: normalised (owner 0:0 as
the box sees it, mtimes clamped to the epoch, set-id bits dropped), digested with the tree digest
of a bootstrap, and filed in the cache by that digest. The build then sees it read-only, offline.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from buildbox import log
from buildbox.box import Box
from buildbox.build import fetch_env, name_the_limit, whole_box_limits
from buildbox.constants import BUILDER, EPOCH, FETCH, SRC
from buildbox.errors import BuildFailed
from buildbox.process import run
from buildbox.recipe import Recipe
from buildbox.store import Store, file_sha256, tree_sha256

SCRIPT = "/buildbox/fetch.sh"
LISTING = "listing.json"   # beside a fetched tree: each path's type, mode and digest, for diffs
SHOWN = 10   # differing paths a mismatch names


def run_fetch(store: Store, recipe: Recipe, layers: list[Path], dest: Path, logfile: Path,
              *, stream: bool) -> str:
    """Run the recipe's fetch in a fresh box over layers; leave its $FETCH at dest, normalised;
    return the tree's digest."""
    assert recipe.fetch
    env = {**BUILDER.login_env(), "SOURCE_DATE_EPOCH": str(EPOCH), **dict(recipe.fetch.env), **fetch_env()}
    with Box(store, layers, label=f"fetch-{recipe.name}", log=logfile, disk=recipe.limits.disk) as box:
        box.bind(Path("/etc/resolv.conf").resolve(), "/etc/resolv.conf")
        box.bind(box.path(SRC), SRC)   # the source, read-only: the fetch reads it, never changes it
        box.run(["install", "-d", "-o", str(BUILDER.uid), "-g", str(BUILDER.gid), "-m", "0755", FETCH],
                what="making $FETCH", log=logfile)
        box.write(SCRIPT, recipe.fetch.script)
        limits = recipe.limits
        with whole_box_limits(recipe, logfile) as (group, rlimits):
            try:
                box.run(["sh", "-e", "-c", f". {SCRIPT}", recipe.name], what=f"the fetch of {recipe.name}",
                        user=BUILDER.spec, env=env, cwd=SRC, log=logfile, stream=stream, network=True,
                        limits=rlimits, timeout=limits.timeout, silence=limits.silence, log_limit=limits.log,
                        cgroups=group.procs if group else [])
            except BuildFailed as err:
                raise name_the_limit(err, recipe, group.hit() if group else None) from None
        # Everything else the fetch wrote (its home, /tmp, the source's copy-ups) stays in the box.
        kept = box.upper / FETCH.lstrip("/")
        try:
            os.rename(kept, dest)
        except OSError:   # the writable layer on its own disk image: another filesystem
            run(["cp", "-a", "--", kept, dest], what="copying $FETCH out of the box", contained=True)
    normalise(dest)
    return tree_sha256(dest)


def normalise(root: Path) -> None:
    """Owner 0:0 (as the box sees it), mtimes clamped to the epoch, set-id bits dropped (chown does
    it), permission bits kept (Go's module cache is read-only by design); nothing but files,
    directories and symlinks."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in (*files, *dirs):
            _normalise_one(Path(folder) / name)
    _normalise_one(root)


def _normalise_one(path: Path) -> None:
    st = os.lstat(path)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise BuildFailed(f"the fetch left {path.name}, which is not a file, directory or symlink, in $FETCH",
                          hint="leave only files, directories and links in $FETCH")
    os.lchown(path, 0, 0)
    clamped = min(int(st.st_mtime), EPOCH)
    os.utime(path, (clamped, clamped), follow_symlinks=False)


def listing(root: Path) -> dict[str, str]:
    """Each path of a fetched tree: its type, mode and content digest (or link target)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(folder) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = f"link {os.readlink(path)}"
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = f"dir {stat.S_IMODE(st.st_mode):o}"
            else:
                found[rel] = f"file {stat.S_IMODE(st.st_mode):o} {file_sha256(path)}"
    return found


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The first paths that differ between two listings: `added P`, `removed P`, `changed P`."""
    lines = []
    for rel in sorted(set(before) | set(after)):
        if before.get(rel) != after.get(rel):
            lines.append(f"{'added' if rel not in before else 'removed' if rel not in after else 'changed'} {rel}")
    return lines


def save_listing(place: Path, tree: Path) -> None:
    place.write_text(json.dumps(listing(tree), sort_keys=True) + "\n")


def read_listing(place: Path) -> dict[str, str] | None:
    try:
        return json.loads(place.read_text())
    except (OSError, ValueError):
        return None


def mismatch(recipe: Recipe, got: str, pinned: str, by: str, tree: Path, last: Path) -> BuildFailed:
    """A pinned fetch that gave another tree: both digests, and what differs from the tree this
    recipe fetched last (its listing kept at `last`), when there is one."""
    message = f"fetch {recipe.name}: got sha256 {got}, {by} {pinned}"
    before = read_listing(last)
    if before is not None:
        lines = differences(before, listing(tree))
        if lines:
            more = f" and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
            message += f"; against the tree fetched last: {', '.join(lines[:SHOWN])}{more}"
    where = recipe.lock.at("fetch") if by == "the lock pins" and recipe.lock else recipe.at("fetch")
    log.note(message)
    return BuildFailed(message, where=where,
                       hint="upstream served other bytes for the same request: find out why before you "
                       f"re-pin with `buildbox lock {recipe.path}`")
