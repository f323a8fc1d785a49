"""A build's SOURCE_DATE_EPOCH is its source's date: Debian's changelog, git's committer time."""

from __future__ import annotations

import email.utils
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import Workspace, shell_recipe

pytestmark = pytest.mark.integration
# In each script, so that each test builds (and says its epoch) even over a cache of an earlier run.
FRESH = f"# {uuid.uuid4()}"


def changelog_date(changelog: str) -> int:
    """The date of a debian/changelog's latest entry, read here as its format says (not by dpkg)."""
    trailer = next(line for line in changelog.splitlines() if line.startswith(" -- "))
    return int(email.utils.parsedate_to_datetime(trailer.split(">", 1)[1].strip()).timestamp())


def test_a_debian_source_builds_at_its_changelogs_date_as_dpkg_and_sbuild_take_it(workspace: Workspace) -> None:
    # Its own layer (fzf's package too), not the one test_pipeline's Debian recipe counts on making.
    recipe = workspace.recipe("hello", """\
        [packages]
        install = ["fzf"]
        [source]
        debian = "hello"
        [build]
        script = 'echo "$SOURCE_DATE_EPOCH" > "$OUT/epoch"; cp debian/changelog "$OUT/changelog" {FRESH}'
        """.replace("{FRESH}", FRESH))
    result = workspace.buildbox("run", recipe)
    out = workspace.root / "out" / "hello"
    epoch = changelog_date((out / "changelog").read_text())
    assert epoch != 1700000000
    assert int((out / "epoch").read_text()) == epoch
    assert f"SOURCE_DATE_EPOCH={epoch}: the date of debian/changelog's latest entry" in result.stderr, result.stderr


def test_a_git_source_builds_at_its_commits_committer_time_and_a_tarball_at_the_fixed_epoch(
        workspace: Workspace, tmp_path: Path) -> None:
    repo = tmp_path / "dated"
    repo.mkdir()
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid", GIT_AUTHOR_DATE="2019-01-02T03:04:05Z",
               GIT_COMMITTER_DATE="2021-05-06T07:08:09Z")
    for argv in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "dated"]):
        subprocess.run(["git", "-C", repo, *argv], check=True, env=env)
    recipe = workspace.recipe("dated", f"""\
        [packages]
        install = ["git", "golang-go"]
        [source]
        git = "{repo}"
        [build]
        script = 'echo "$SOURCE_DATE_EPOCH" > "$OUT/epoch" {FRESH}'
        """)
    result = workspace.buildbox("run", recipe)
    assert (workspace.root / "out" / "dated" / "epoch").read_text() == "1620284889\n"   # the committer's, not the author's
    assert "SOURCE_DATE_EPOCH=1620284889: the commit's committer time" in result.stderr, result.stderr

    tarball = shell_recipe(workspace, "undated", f'echo "$SOURCE_DATE_EPOCH" > "$OUT/epoch" {FRESH}')
    result = workspace.buildbox("run", tarball)
    assert (workspace.root / "out" / "undated" / "epoch").read_text() == "1700000000\n"
    assert "SOURCE_DATE_EPOCH=1700000000: buildbox's fixed epoch" in result.stderr

    # The recipe's own env still has the last word, and the log says so.
    tarball.write_text(tarball.read_text().replace("[build]\n", "[build]\nenv = { SOURCE_DATE_EPOCH = \"86400\" }\n"))
    result = workspace.buildbox("run", tarball)
    assert (workspace.root / "out" / "undated" / "epoch").read_text() == "86400\n"
    assert "SOURCE_DATE_EPOCH=86400: the recipe's [build] env sets it" in result.stderr
