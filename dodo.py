"""The buildbox stages as plain doit tasks: `doit` rebuilds every recipe in recipes/ (a nightly
cron job), `doit list` shows the tasks. The cache is $BUILDBOX_CACHE or ./cache, artifacts go to ./out."""

import sys
from pathlib import Path

from buildbox import config
from buildbox.cli import exit_status
from buildbox.lock import load_recipe
from buildbox.recipe import find_recipes
from buildbox.store import Store, default_cache
from buildbox.tasks import Graph

_HERE = Path(__file__).resolve().parent

try:
    _recipes = [load_recipe(path) for path in find_recipes(_HERE / "recipes")]
    _remote = config.remote(config.load())   # $BUILDBOX_CONFIG, else ./buildbox.toml
    if _remote:
        from buildbox.remote import RemoteCache
        _remote = RemoteCache(_remote)
    _graph = Graph(Store(default_cache(_HERE / "cache")), _recipes, _HERE / "out", report_failures=True,
                   remote=_remote)
    # Held while doit runs (released when it exits): `buildbox gc` never removes what these tasks use.
    _in_use = _graph.store.in_use()
    _in_use.__enter__()
    _graph.reap()
    _graph.take_locked()   # the remote's hits first: the stages below them are left out
except Exception as err:   # the exit statuses of the buildbox command, from its one map
    sys.exit(exit_status(err, _HERE / "cache"))
globals().update(_graph.namespace())
