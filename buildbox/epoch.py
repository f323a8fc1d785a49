"""A build's SOURCE_DATE_EPOCH: the date its source gives itself, taken as the tools of its kind
take it, else buildbox's fixed epoch.

A Debian source's is the date of debian/changelog's latest entry, as dpkg-buildpackage derives it
when SOURCE_DATE_EPOCH is unset (so under sbuild and on Debian's buildds); a git source's is its
commit's committer time; a tarball's is the fixed epoch (its members' times say nothing reliable).
Which of these a build takes is keys.epoch_rule's (its key holds it); each is read in the build's
own box, as the build user, from the source tree the build gets: no file of the source is opened
on the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildbox.constants import SRC, BuildUser
from buildbox.errors import BuildFailed
from buildbox.keys import EPOCH_FROM_CHANGELOG, EPOCH_FROM_COMMIT, epoch_rule
from buildbox.recipe import Recipe

if TYPE_CHECKING:
    from buildbox.box import Box

# Epochs a tool may give: from 1970 to the year 9999 (dpkg's and git's range is wider; a date past
# it is a changelog's typo, not a build's date).
LATEST = 253402300799
# Each rule's reader: the command run in the box at SRC, why its answer is the epoch, and the fix
# when it gives none.
READERS = {
    EPOCH_FROM_CHANGELOG: (["dpkg-parsechangelog", "-l", "debian/changelog", "-STimestamp"],
                           "the date of debian/changelog's latest entry, as dpkg-buildpackage and sbuild take it",
                           "give the source a well-formed debian/changelog"),
    EPOCH_FROM_COMMIT: (["git", "-C", SRC, "log", "-1", "--format=%ct", "HEAD"], "the commit's committer time",
                        "check the commit's committer date"),
}


def of_build(box: Box, recipe: Recipe, user: BuildUser) -> tuple[str, str]:
    """The SOURCE_DATE_EPOCH of the recipe's build in box (its source at SRC), and, for its log,
    why it is that one: the recipe's own [build] env has the last word (nothing is read then);
    what is read is read within the build's rlimits and [limits] timeout."""
    own = dict(recipe.env).get("SOURCE_DATE_EPOCH")
    if own is not None:
        return own, "the recipe's [build] env sets it"
    rule = epoch_rule(recipe.source)
    if rule not in READERS:
        return str(rule), "buildbox's fixed epoch (a tarball source gives no date of its own)"
    argv, said, fix = READERS[rule]
    out = box.run(argv, what=f"{argv[0]} for SOURCE_DATE_EPOCH", user=user.spec, env=user.login_env(),
                  cwd=SRC, capture=True, limits=recipe.limits.rlimits(), timeout=recipe.limits.timeout).strip()
    if not out.isascii() or not out.isdigit() or int(out) > LATEST:
        raise BuildFailed(f"{argv[0]} gave no date for SOURCE_DATE_EPOCH ({out[:60]!r})", hint=fix)
    return out, said
