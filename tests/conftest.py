"""Fixtures that make their inputs: recipe folders, git repositories, loopback HTTP servers.

Integration tests share one cache per test session (BUILDBOX_TEST_CACHE to choose it), so the
Debian base is bootstrapped once and cloned per test, as buildbox itself does.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (mounts, chroot)"
    for tool in ("mmdebstrap", "mount", "chroot", "findmnt"):
        if not shutil.which(tool):
            return f"integration tests need {tool} (apt-get install mmdebstrap)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _missing_requirement()
    if reason:
        print(f"\nskipping integration tests: {reason}", file=sys.stderr)
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("BUILDBOX_TEST_CACHE")
    return Path(chosen) if chosen else tmp_path_factory.mktemp("cache")


class Workspace:
    """A folder with recipes/ (and recipes/base/, empty: the shipped bases are buildbox's), where
    buildbox is run as a user would."""

    def __init__(self, root: Path, cache: Path) -> None:
        self.root = root
        self.cache = cache
        (root / "recipes").mkdir(parents=True)
        (root / "recipes" / "base").mkdir()   # for bases of the tests' own; debian-bookworm is buildbox's

    def recipe(self, name: str, text: str) -> Path:
        path = self.root / "recipes" / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        return path

    def base(self, name: str, text: str) -> Path:
        path = self.root / "recipes" / "base" / f"{name}.toml"
        path.write_text(textwrap.dedent(text))
        return path

    def buildbox(self, *args: str | Path, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        """Run the buildbox command here; check the exit status unless check is None."""
        argv = [sys.executable, "-m", "buildbox", *map(str, args)]
        if args and args[0] in ("run", "lock", "list", "verify", "shell", "push", "install", "exec") and "--cache" not in args:
            argv[3:4] = [args[0], "--cache", str(self.cache)]   # before a command's `-- CMD ...`
        result = subprocess.run(argv, cwd=self.root, capture_output=True, text=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        if check is not None and result.returncode != check:
            raise AssertionError(f"exit status {result.returncode}, wanted {check}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}")
        return result


def ran(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The stages a run executed (buildbox prints `--> STAGE:NAME` for each)."""
    return {line[4:].split(":")[0] for line in result.stderr.splitlines() if line.startswith("--> ")}


def mounts_under(path: Path) -> list[str]:
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith(str(path))]


@pytest.fixture
def workspace(tmp_path: Path, cache: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws", cache)
    yield ws
    assert mounts_under(cache) == [], "a mount was left behind"


@pytest.fixture
def http_server(tmp_path: Path):
    """A loopback HTTP server for a folder; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def bootstrap_tarball(ws: Workspace, dest: Path) -> Path:
    """The session's Debian bootstrap (made by a first run if need be) packed as a tarball set."""
    def trees() -> list[Path]:
        return sorted(ws.cache.glob("bootstraps/[!.]*/root"))
    if not trees():
        source = ws.root / "nothing.tar"
        subprocess.run(["tar", "-cf", source, "--files-from=/dev/null"], check=True)
        ws.buildbox("run", ws.recipe("warmup", f'[source]\nurl = "{source}"\n'
                                               f'sha256 = "{hashlib.sha256(source.read_bytes()).hexdigest()}"\n'
                                               '[build]\nscript = "echo > $OUT/x"\n'), "-q")
    subprocess.run(["tar", "-C", trees()[0], "--numeric-owner", "-cf", dest, "."], check=True)
    return dest


# -- recipes and sources the tests of several modules share -------------------------------
GOOD = """\
name = "hello"
[packages]
install = ["git", "golang-go"]
[source]
git = "https://example.org/hello.git"
ref = "v1.0"
[build]
env = { CGO_ENABLED = "0" }
script = '''
go build -o "$OUT/hello" .
'''
[verify]
static = true
run = ["hello"]
"""


def write(tmp_path: Path, text: str, name: str = "hello") -> Path:
    (tmp_path / "base").mkdir(exist_ok=True)
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


def shell_recipe(ws: Workspace, name: str, script: str) -> Path:
    source = ws.root / "empty.tar"
    if not source.exists():
        (ws.root / "empty").mkdir()
        (ws.root / "empty" / "README").write_text("nothing to see\n")
        subprocess.run(["tar", "-C", ws.root / "empty", "-cf", source, "README"], check=True)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    return ws.recipe(name, f"[source]\nurl = \"{source}\"\nsha256 = \"{digest}\"\n[build]\nscript = '''\n{script}\n'''\n")


HELLO_GO = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello from %s") }\n'


def go_repo(path: Path, greeting: str = "buildbox") -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "go.mod").write_text("module example.org/hello\n\ngo 1.19\n")
    (path / "main.go").write_text(HELLO_GO % greeting)
    git(path, "add", ".")
    git(path, "commit", "-qm", "hello")
    return path


def go_recipe(ws: Workspace, repo: Path, packages: str = '["git", "golang-go"]') -> Path:
    return ws.recipe("hello", f"""\
        [packages]
        install = {packages}
        [source]
        git = "{repo}"
        ref = "main"
        [build]
        env = {{ CGO_ENABLED = "0" }}
        script = '''
        go build -trimpath -o "$OUT/hello" .
        '''
        [verify]
        static = true
        run = ["hello | grep -q 'hello from'"]
        """)


