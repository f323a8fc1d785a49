"""The main job: caddy from Debian's source package, its test suite run inside the box."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, mounts_under, ran

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_caddy_builds_from_debian_source_with_its_tests_and_reports_v2_6_2(tmp_path: Path) -> None:
    # The repository's own cache: README's first command has usually built caddy there already,
    # and then this checks that build and that a rerun does nothing.
    cache = Path(os.environ.get("BUILDBOX_CACHE", REPO / "cache"))
    argv = [sys.executable, "-m", "buildbox", "run", "recipes/caddy.toml", "--cache", str(cache), "-q",
            "--out", str(tmp_path / "out")]
    first = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-5000:]
    caddy = tmp_path / "out" / "caddy" / "caddy"
    version = subprocess.run([caddy, "version"], capture_output=True, text=True, check=True).stdout
    assert version.split()[0] == "v2.6.2"
    manifest = json.loads((caddy.parent / "manifest.json").read_text())
    assert manifest["inputs"]["source"]["dsc"].startswith("caddy_2.6.2-")
    assert manifest["artifacts"]["caddy"]["elf"]["static"] is False
    log = (cache / "logs" / "caddy" / "build.log").read_text()
    # caddy's own test suite ran in the box and passed (it needs localhost to resolve there).
    assert "ok  \tgithub.com/caddyserver/caddy/v2\t" in log
    assert "--- FAIL" not in log

    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and ran(again) == set(), again.stderr
    assert mounts_under(cache) == []


def test_caddy_is_reproducible_across_two_varied_builds() -> None:
    # The main job's build (README's first command, under the host's own conditions) is the first
    # build when it is there: verify then makes only the second, varied one, against its manifest.
    cache = Path(os.environ.get("BUILDBOX_CACHE", REPO / "cache"))
    main_job = REPO / "out" / "caddy" / "manifest.json"
    against = ["--against", str(main_job)] if main_job.is_file() else []
    result = subprocess.run([sys.executable, "-m", "buildbox", "verify", "recipes/caddy.toml", "--cache", str(cache),
                             *against], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "caddy is reproducible" in result.stdout
    assert mounts_under(cache) == []


def test_caddy_locked_builds_the_same_sha256_on_an_empty_cache(tmp_path: Path) -> None:
    """`buildbox lock` then `run` on another machine's (empty) cache: the same caddy, bit for bit."""
    cache = Path(os.environ.get("BUILDBOX_CACHE", REPO / "cache"))
    recipes = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes", recipes, ignore=shutil.ignore_patterns("*.lock"))

    def buildbox(*args: str | Path) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "buildbox", *map(str, args)], cwd=tmp_path,
                                capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert result.returncode == 0, result.stdout + result.stderr[-5000:]
        return result

    buildbox("lock", "recipes/caddy.toml", "--cache", cache)
    lock = tomllib.loads((recipes / "caddy.lock").read_text())
    assert lock["source"]["debian"] == "caddy" and lock["source"]["version"].startswith("2.6.2-")
    assert "golang-1.19-go" in lock["packages"] and "dpkg-dev" in lock["packages"]

    here = buildbox("run", "recipes/caddy.toml", "-q", "--cache", cache, "--out", tmp_path / "here")
    there = buildbox("run", "recipes/caddy.toml", "-q", "--cache", tmp_path / "empty-cache", "--out", tmp_path / "there")
    assert ran(there) == {"set", "base", "layer", "source", "build", "out"}, there.stderr
    digest = hashlib.sha256((tmp_path / "here" / "caddy" / "caddy").read_bytes()).hexdigest()
    assert hashlib.sha256((tmp_path / "there" / "caddy" / "caddy").read_bytes()).hexdigest() == digest
    assert f"{digest}  " in here.stdout and f"{digest}  " in there.stdout
    assert mounts_under(tmp_path) == [] and mounts_under(cache) == []
