"""Faults, concurrency and bad input: kill -9 at each stage, two runs on one cache, a flaky
server, and a table of mistakes. After each: no mount left, and every cache entry verifies."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, Workspace, bootstrap_tarball, mounts_under, shell_recipe

pytestmark = pytest.mark.integration


def verify_cache(cache: Path) -> None:
    """No mount, no half entry, no dead box; downloads match their sha256, builds their manifest."""
    assert mounts_under(cache) == []
    assert not list(cache.glob("*/.tmp-*")), list(cache.glob("*/.tmp-*"))
    for download in cache.glob("downloads/[!.]*/file"):
        assert hashlib.sha256(download.read_bytes()).hexdigest() == download.parent.name
    for manifest in cache.glob("builds/[!.]*/manifest.json"):
        data = json.loads(manifest.read_text())
        assert data["key"] == manifest.parent.name
        for rel, fact in data["artifacts"].items():
            assert hashlib.sha256((manifest.parent / "files" / rel).read_bytes()).hexdigest() == fact["sha256"]
    for layer in cache.glob("layers/[!.]*"):
        assert (layer / "meta.json").is_file()


def start(ws: Workspace, *args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "buildbox", "run", *map(str, args), "--cache", str(ws.cache)],
                            cwd=ws.root, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))


def kill_when(proc: subprocess.Popen, marker: str, delay: float = 0.0) -> str:
    """SIGKILL buildbox once its output shows marker (plus a delay); return what it printed."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            break
    else:
        raise AssertionError(f"never saw {marker!r}:\n{''.join(seen)}")
    time.sleep(delay)
    proc.kill()
    proc.wait(timeout=30)
    return "".join(seen)


class SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files slowly, honours Range, and remembers the requests it saw."""
    requests: list[dict] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        SlowHandler.requests.append(dict(self.headers))
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        for offset in range(start, len(data), 1 << 16):
            self.wfile.write(data[offset:offset + (1 << 16)])
            time.sleep(self.server.pause)


def serve(folder: Path, handler: type, pause: float = 0.0):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder)))
    server.pause = pause
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def url_recipe(ws: Workspace, name: str, url: str, digest: str, script: str = 'cp -r . "$OUT/src"') -> Path:
    return ws.recipe(name, f"[source]\nurl = \"{url}\"\nsha256 = \"{digest}\"\n[build]\nscript = '''\n{script}\n'''\n")


def tarball(folder: Path, name: str, size: int) -> str:
    """A source tarball of about size bytes (incompressible); returns its sha256."""
    content = folder / f"{name}-src"
    content.mkdir()
    (content / "blob").write_bytes(os.urandom(size))
    subprocess.run(["tar", "-C", folder, "-cf", folder / f"{name}.tar", content.name], check=True)
    return hashlib.sha256((folder / f"{name}.tar").read_bytes()).hexdigest()


def test_kill_9_during_a_download_then_the_next_run_resumes_it(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "served"
    folder.mkdir()
    digest = tarball(folder, "big", 8 << 20)
    server, url = serve(folder, SlowHandler, pause=0.05)
    SlowHandler.requests = []
    try:
        recipe = url_recipe(workspace, "resumed", f"{url}/big.tar", digest)
        # Let the download get under way, then the run dies.
        proc = start(workspace, recipe, "-q")
        kill_when(proc, "--> source:", delay=2.0)
        partial = list((workspace.cache / "downloads").glob(f".part-{digest}"))
        assert partial and 0 < partial[0].stat().st_size < (8 << 20)
        workspace.buildbox("run", recipe, "-q")
        assert any("Range" in r for r in SlowHandler.requests), "the download was not resumed"
    finally:
        server.shutdown()
    verify_cache(workspace.cache)


def test_kill_9_during_a_build_leaves_nothing_and_the_next_run_cleans_up_and_succeeds(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "killed", 'echo "building now"\nsleep 3602\n')
    kill_when(start(workspace, recipe), "building now", delay=0.5)
    assert subprocess.run(["pgrep", "-f", "sleep 3602"], capture_output=True).returncode == 1, \
        "the build must die with buildbox"
    recipe.write_text(recipe.read_text().replace("sleep 3602", 'echo done > "$OUT/done"'))
    result = workspace.buildbox("run", recipe, "-q")
    assert "left by a run that died" in result.stderr
    verify_cache(workspace.cache)
    assert list((workspace.cache / "boxes").iterdir()) == []


def test_kill_9_during_a_package_install_and_an_artifact_copy(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "pkgs", 'dd if=/dev/urandom of="$OUT/big" bs=1M count=200 2>/dev/null\necho copied-next')
    recipe.write_text(recipe.read_text().replace("[source]", '[packages]\ninstall = ["hello"]\n[source]'))
    for meta in workspace.cache.glob("layers/[!.]*/meta.json"):   # a cache kept from an earlier session
        if json.loads(meta.read_text())["install"] == ["hello"]:
            shutil.rmtree(meta.parent)
    kill_when(start(workspace, recipe), "Installing packages", delay=1.5)
    kill_when(start(workspace, recipe), "copied-next", delay=0.2)
    workspace.buildbox("run", recipe, "-q")
    verify_cache(workspace.cache)
    assert (workspace.root / "out" / "pkgs" / "big").stat().st_size == 200 << 20


def test_kill_9_while_a_base_is_unpacked(workspace: Workspace, tmp_path: Path) -> None:
    bootstrap = bootstrap_tarball(workspace, tmp_path / "bootstrap.tar")
    extra = tmp_path / "extra.tar"
    marker = tmp_path / "etc"
    marker.mkdir()
    (marker / "unique").write_text(str(time.time()))
    subprocess.run(["tar", "-C", tmp_path, "-cf", extra, "etc"], check=True)
    workspace.base("killbase", f"""\
        [[set]]
        url = "{bootstrap}"
        sha256 = "{hashlib.sha256(bootstrap.read_bytes()).hexdigest()}"
        [[set]]
        url = "{extra}"
        sha256 = "{hashlib.sha256(extra.read_bytes()).hexdigest()}"
        """)
    recipe = shell_recipe(workspace, "onbase", 'cat /etc/unique > "$OUT/unique"')
    recipe.write_text('base = "killbase"\n' + recipe.read_text())
    kill_when(start(workspace, recipe), "Making the base", delay=0.7)
    workspace.buildbox("run", recipe, "-q")
    assert (workspace.root / "out" / "onbase" / "unique").read_text() == (marker / "unique").read_text()
    verify_cache(workspace.cache)


def test_two_runs_of_one_recipe_on_one_cache_both_succeed_and_build_once(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "twice", f'sleep 2\necho {time.time()} > "$OUT/stamp"')
    procs = [start(workspace, recipe) for _ in range(2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert sum(err.count("==> Building twice") for _, err in outputs) == 1
    verify_cache(workspace.cache)


class FlakyHandler(SlowHandler):
    """503 twice, then half a body and a dropped connection, then well (with Range)."""
    calls = 0

    def do_GET(self) -> None:
        FlakyHandler.calls += 1
        if FlakyHandler.calls <= 2:
            self.send_error(503, "try later")
            return
        if FlakyHandler.calls == 3:
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        super().do_GET()


def test_a_flaky_server_with_503s_and_dropped_connections_still_gives_a_verified_download(
        workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "served"
    folder.mkdir()
    digest = tarball(folder, "flaky", 1 << 20)
    FlakyHandler.calls, SlowHandler.requests = 0, []
    server, url = serve(folder, FlakyHandler)
    try:
        workspace.buildbox("run", url_recipe(workspace, "flaky", f"{url}/flaky.tar", digest), "-q")
    finally:
        server.shutdown()
    assert FlakyHandler.calls >= 4
    assert any("Range" in r for r in SlowHandler.requests)
    assert (workspace.cache / "downloads" / digest / "file").is_file()
    verify_cache(workspace.cache)


def test_a_server_that_never_recovers_fails_naming_the_url_and_keeps_nothing(workspace: Workspace, tmp_path: Path) -> None:
    class Down(SlowHandler):
        def do_GET(self) -> None:
            self.send_error(503, "down")
    server, url = serve(tmp_path, Down)
    try:
        result = workspace.buildbox("run", url_recipe(workspace, "down", f"{url}/x.tar", "a" * 64), "-q", check=1)
    finally:
        server.shutdown()
    assert f"could not download {url}/x.tar" in result.stderr.splitlines()[-1]
    assert not (workspace.cache / "downloads" / ("a" * 64)).exists()
    verify_cache(workspace.cache)


GOOD_SOURCE = "SOURCE"   # replaced by a real tarball source in each case
BAD_INPUT = [
    ("malformed TOML", "[build\n", "not valid TOML"),
    ("unknown key", f"{GOOD_SOURCE}\n[build]\nscirpt = 'x'\n", "did you mean 'script'?"),
    ("unknown table", f"{GOOD_SOURCE}\n[biuld]\nscript = 'x'\n", "did you mean 'build'?"),
    ("wrong type", f"{GOOD_SOURCE}\n[build]\nscript = ['x']\n", "'script' must be a string"),
    ("missing source", "[build]\nscript = 'x'\n", "[source] is missing"),
    ("two sources", "[source]\ndebian = 'hello'\ngit = 'https://x/y.git'\n[build]\nscript = 'x'\n", "names both"),
    ("no base", f"base = 'nope'\n{GOOD_SOURCE}\n[build]\nscript = 'x'\n", "base 'nope' does not exist"),
    ("short sha256", "[source]\nurl = 'http://x/y.tar'\nsha256 = '1234'\n[build]\nscript = 'x'\n",
     "not 64 lowercase hex digits"),
    ("empty script", f"{GOOD_SOURCE}\n[build]\nscript = '   '\n", "the build script is empty"),
    ("escaping name", f"name = '../../etc'\n{GOOD_SOURCE}\n[build]\nscript = 'x'\n", "is not allowed"),
    ("bad package name", f"[packages]\ninstall = ['Bad Name']\n{GOOD_SOURCE}\n[build]\nscript = 'x'\n",
     "not a Debian package name"),
    ("bad limit", f"{GOOD_SOURCE}\n[build]\nscript = 'x'\n[limits]\nmemory = 'lots'\n", "is not a size"),
    ("reserved env", f"{GOOD_SOURCE}\n[build]\nscript = 'x'\nenv = {{ HOME = '/' }}\n", "HOME is set by buildbox"),
    ("bad ref", "[source]\ngit = '/tmp'\nref = '--upload-pack=x'\n[build]\nscript = 'x'\n", "is not a git ref"),
    ("network not bool", f"{GOOD_SOURCE}\n[build]\nscript = 'x'\nnetwork = 'yes'\n", "must be a boolean"),
    ("verify run not list", f"{GOOD_SOURCE}\n[build]\nscript = 'x'\n[verify]\nrun = 'x'\n", "list of strings"),
    ("ref on a url", "[source]\nurl = 'http://x/y.tar'\nsha256 = '" + "a" * 64 + "'\nref = 'x'\n[build]\nscript = 'x'\n",
     "'ref' goes with a git source"),
    ("base set both", "base = 'both'\n" + GOOD_SOURCE + "\n[build]\nscript = 'x'\n", "not both"),
    ("base set neither", "base = 'neither'\n" + GOOD_SOURCE + "\n[build]\nscript = 'x'\n", "needs url and sha256"),
    ("base bad variant", "base = 'variant'\n" + GOOD_SOURCE + "\n[build]\nscript = 'x'\n", "not an mmdebstrap variant"),
    # Found only when the stages run: still bad input, still exit status 2.
    ("package that does not exist", f"[packages]\ninstall = ['no-such-package-bb']\n{GOOD_SOURCE}\n[build]\nscript = 'x'\n",
     "package 'no-such-package-bb' does not exist"),
    ("git ref that does not exist", "[source]\ngit = 'REPO'\nref = 'no-such-ref'\n[build]\nscript = 'x'\n",
     "git ref 'no-such-ref' does not exist"),
    ("UTF-8 byte order mark", "\ufeff" + GOOD_SOURCE + "\n[build]\nscript = 'x'\n", "starts with a UTF-8 byte order mark"),
    ("empty git", "[source]\ngit = ''\n[build]\nscript = 'x'\n", "git = '' names no repository"),
    ("NUL in the script", f"{GOOD_SOURCE}\n[build]\nscript = \"a\\u0000b\"\n", "the build script holds a NUL byte"),
    ("NUL in env", f"{GOOD_SOURCE}\n[build]\nscript = 'x'\nenv = {{ A = \"a\\u0000\" }}\n", "env value of A holds a NUL"),
    ("NUL in a verify command", f"{GOOD_SOURCE}\n[build]\nscript = 'x'\n[verify]\nrun = [\"a\\u0000\"]\n",
     "a verify command holds a NUL byte"),
    ("env name with a newline", f"{GOOD_SOURCE}\n[build]\nscript = 'x'\nenv = {{ \"A\\nB\" = 'x' }}\n",
     "'A\\nB' is not an environment variable name"),
    ("limit beyond the kernel", f"{GOOD_SOURCE}\n[build]\nscript = 'x'\n[limits]\nfiles = 99999999999\n",
     "is more than the kernel allows"),
    ("base suite like an option", "base = 'optsuite'\n" + GOOD_SOURCE + "\n[build]\nscript = 'x'\n",
     "is not a Debian suite name"),
    ("base mirror with options", "base = 'optmirror'\n" + GOOD_SOURCE + "\n[build]\nscript = 'x'\n",
     "is not an http(s) or file URL"),
    ("tarball set with a .. member", "base = 'dotdot'\n" + GOOD_SOURCE + "\n[build]\nscript = 'x'\n", "absolute or '..' path"),
    ("tarball set with a device node", "base = 'device'\n" + GOOD_SOURCE + "\n[build]\nscript = 'x'\n", "device node"),
    ("tarball set with a link out", "base = 'linkout'\n" + GOOD_SOURCE + "\n[build]\nscript = 'x'\n", "points out of the root"),
    ("unreachable mirror", "base = 'nomirror'\n" + GOOD_SOURCE + "\n[build]\nscript = 'x'\n", "the mirror cannot be reached"),
]


def _bad_sets(ws: Workspace, tmp_path: Path) -> None:
    import io
    import tarfile
    for name, info in (("dotdot", tarfile.TarInfo("../evil")), ("device", tarfile.TarInfo("dev/sda")),
                       ("linkout", tarfile.TarInfo("up"))):
        if name == "device":
            info.type, info.devmajor = tarfile.BLKTYPE, 8
        if name == "linkout":
            info.type, info.linkname = tarfile.SYMTYPE, "../../.."
        path = tmp_path / f"{name}.tar"
        with tarfile.open(path, "w") as tar:
            tar.addfile(info, io.BytesIO(b"") if info.isfile() else None)
        ws.base(name, f'[[set]]\nurl = "{path}"\nsha256 = "{hashlib.sha256(path.read_bytes()).hexdigest()}"\n')
    ws.base("both", "[[set]]\nurl = 'http://x'\nsuite = 'bookworm'\n")
    ws.base("neither", "[[set]]\nvariant = 'minbase'\n")
    ws.base("variant", "[[set]]\nsuite = 'bookworm'\nmirror = 'http://x'\nvariant = 'tiny'\n")
    ws.base("nomirror", "[[set]]\nsuite = 'bookworm'\nmirror = 'http://127.0.0.1:9/debian'\n")
    ws.base("optsuite", "[[set]]\nsuite = '--include=evil'\nmirror = 'http://deb.debian.org/debian'\n")
    ws.base("optmirror", "[[set]]\nsuite = 'bookworm'\nmirror = '[trusted=yes] http://deb.debian.org/debian'\n")


@pytest.mark.parametrize("text,words", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_line_naming_file_and_line_with_status_2_and_writes_nothing(
        workspace: Workspace, tmp_path: Path, text: str, words: str) -> None:
    _bad_sets(workspace, tmp_path)
    source = shell_recipe(workspace, "probe", "true").read_text().split("[build]")[0].strip()
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", repo], check=True)
    subprocess.run(["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
                    "-m", "x"], check=True)
    recipe = workspace.recipe("bad", text.replace(GOOD_SOURCE, source).replace("REPO", str(repo)))
    before = {p for p in workspace.cache.glob("*/[!.]*")} if workspace.cache.exists() else set()
    result = workspace.buildbox("run", recipe, "-q", check=2)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"buildbox: error: {workspace.root / 'recipes'}"), last
    assert words in last and "Traceback" not in result.stderr
    after = {p for p in workspace.cache.glob("*/[!.]*")} if workspace.cache.exists() else set()
    assert not [p for p in after - before if p.parent.name == "builds"], "a bad recipe must not be built"
    assert not (workspace.root / "out" / "bad").exists()
    verify_cache(workspace.cache) if workspace.cache.exists() else None


def test_gc_removes_superseded_builds_and_clean_keeps_only_the_sets(workspace: Workspace, tmp_path: Path) -> None:
    # A cache of its own, seeded with the session's bootstrap so that no second bootstrap is needed.
    own = Workspace(tmp_path / "gcws", tmp_path / "gccache")
    shared = next((workspace.cache / "bootstraps").glob("[!.]*"), None)
    if shared:
        (own.cache / "bootstraps").mkdir(parents=True)
        subprocess.run(["cp", "-a", shared, own.cache / "bootstraps" / shared.name], check=True)
    recipe = shell_recipe(own, "gced", 'echo one > "$OUT/v"')
    own.buildbox("run", recipe, "-q")
    old = {p.name for p in (own.cache / "builds").iterdir()}
    recipe.write_text(recipe.read_text().replace("echo one", "echo two"))
    own.buildbox("run", recipe, "-q")
    assert len(list((own.cache / "builds").iterdir())) == 2

    result = subprocess.run([sys.executable, "-m", "buildbox", "gc", "--cache", str(own.cache)], cwd=own.root,
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    remaining = {p.name for p in (own.cache / "builds").iterdir()}
    assert len(remaining) == 1 and not remaining & old, "the superseded build goes, the newest stays"
    assert own.buildbox("run", recipe, "-q").stderr.count("-->") == 0, "gc kept everything the newest build needs"

    def buildbox(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "buildbox", *args, "--cache", str(own.cache)], cwd=own.root,
                                capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert result.returncode == 0, result.stderr
        return result

    buildbox("clean")
    assert {p.name for p in own.cache.iterdir()} <= {"bootstraps", "downloads", "locks", "boxes", "records",
                                                          "CACHEDIR.TAG", "buildbox-cache.json"}
    assert list((own.cache / "downloads").iterdir()) and list((own.cache / "bootstraps").iterdir())

    assert "removed downloads/" in buildbox("gc", "--max-size", "1K").stdout
    assert not list((own.cache / "downloads").iterdir()) and not list((own.cache / "bootstraps").iterdir())
    verify_cache(own.cache)


def test_kill_9_during_a_bootstrap_takes_mmdebstrap_and_its_mounts_along(workspace: Workspace) -> None:
    # A bootstrap of its own (another package set), so that this run has one to make.
    workspace.base("killboot", '[[set]]\nsuite = "bookworm"\nmirror = "http://deb.debian.org/debian"\n'
                               'packages = ["hello"]\n')
    recipe = shell_recipe(workspace, "onkilled", 'hello > "$OUT/said"')
    recipe.write_text('base = "killboot"\n' + recipe.read_text())
    for meta in workspace.cache.glob("bootstraps/[!.]*/meta.json"):   # a cache kept from an earlier session
        if "hello" in meta.read_text():
            shutil.rmtree(meta.parent)
    proc = start(workspace, recipe)
    kill_when(proc, "Bootstrapping Debian", delay=8.0)
    deadline = time.monotonic() + 20
    while subprocess.run(["pgrep", "-x", "mmdebstrap"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "mmdebstrap outlived buildbox"
        time.sleep(0.5)
    assert mounts_under(workspace.cache) == []
    result = workspace.buildbox("run", recipe, "-q")
    assert "left by a run that died" in result.stderr
    assert (workspace.root / "out" / "onkilled" / "said").read_text() == "Hello, world!\n"
    verify_cache(workspace.cache)
