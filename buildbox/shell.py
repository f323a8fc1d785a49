"""A shell in a clone of a recipe's build box: packages installed and source in place, as for
the build, or as a failed build left them."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from buildbox import log
from buildbox.box import Box
from buildbox.build import build_env, failed_box
from buildbox.constants import BUILDER, EPOCH, FETCH, SRC
from buildbox.epoch import of_build as source_epoch
from buildbox.errors import BuildFailed, InputError
from buildbox.recipe import Recipe
from buildbox.records import FailedBox
from buildbox.store import Store

ROOT_ENV = {"HOME": "/root", "USER": "root", "LOGNAME": "root",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def open_shell(store: Store, recipe: Recipe, layers: list[Path], *, fetched: Path | None = None,
               root: bool = False, keep: bool = False, failed: bool = False) -> int:
    """An interactive shell in a box over layers, as the build user (or root); its exit status."""
    # Ctrl-C belongs to the shell inside, not to buildbox (reading the epoch has the build's timeout).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with Box(store, layers, label=f"shell-{recipe.name}", keep=keep) as box:
        if fetched:
            box.bind(fetched, FETCH)
        try:
            epoch = source_epoch(box, recipe, BUILDER)[0]
        except BuildFailed as err:   # a failed build's tree may have lost what tells its date
            log.warn(f"{err}; the shell has SOURCE_DATE_EPOCH={EPOCH}")
            epoch = str(EPOCH)
        env = build_env(recipe, epoch=epoch)
        env.update({"PS1": f"{recipe.name}:\\w \\$ ", "TERM": os.environ.get("TERM", "xterm")})
        if root:
            env.update(ROOT_ENV)
        status = box.run(["bash", "--norc", "--noprofile", "-i"], what=f"a shell in {recipe.name}",
                         user=None if root else BUILDER.spec, env=env,
                         cwd=SRC if failed else env["HOME"], network=recipe.network, outbound=recipe.network,
                         limits=recipe.limits.rlimits(), interactive=True)
    return int(status)   # the shell's own exit status, as `ssh` and `machinectl shell` give it


def failed_layers(store: Store, recipe: Recipe) -> list[Path]:
    """The layers of the box the recipe's last failed build left: its changes over its lower layers."""
    saved = FailedBox.read(failed_box(store, recipe.name))
    if saved is None:
        raise InputError(f"{recipe.name} has no failed build in {store.root}", where=str(recipe.path),
                         hint="a build that fails leaves its box for --failed; without it, "
                         f"`buildbox shell {recipe.path}` opens a fresh one")
    if not saved.layers_present():
        raise InputError(f"the layers under {recipe.name}'s failed box are gone (gc or clean removed them)",
                         where=str(recipe.path), hint=f"run `buildbox run {recipe.path}` again")
    log.say(f"buildbox: the box of {recipe.name}'s build that failed {saved.age_minutes():.0f} min ago; "
            f"the build log is {store.root / 'logs' / recipe.name / 'build.log'}")
    return [saved.top, *saved.layers]
