"""The fetch phase for real: a loopback Go module proxy and a loopback file server on the host,
reached through [fetch] host-ports, the fetch with outbound network, the build without, the
fetched tree pinned by digest in the lock or the recipe, and taken out of its box as a tree of its
own (no link out, no set-id bit, no hard link)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import tomllib
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from buildbox import keys
from buildbox.pins import GitPin
from buildbox.fetch import differences
from buildbox.recipe import Fetch
from conftest import Workspace, git, mounts_under, ran

pytestmark = pytest.mark.integration

GREET_MOD = "module example.org/greet\n\ngo 1.19\n"
MAIN_GO = ('package main\n\nimport (\n\t"fmt"\n\n\t"example.org/greet"\n)\n\n'
           'func main() { fmt.Println(greet.Hello()) }\n')


def h1(files: dict[str, bytes]) -> str:
    """Go's dirhash.Hash1: the sha256 of `sha256hex  name` lines, sorted by name, in base64."""
    summary = "".join(f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in sorted(files))
    return "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()


def serve_module(folder: Path, greeting: str, compression: int = zipfile.ZIP_STORED) -> dict[str, bytes]:
    """example.org/greet v1.0.0 in the GOPROXY layout (list, .info, .mod, .zip); returns the zip's files."""
    files = {"example.org/greet@v1.0.0/go.mod": GREET_MOD.encode(),
             "example.org/greet@v1.0.0/greet.go":
                 f'package greet\n\nfunc Hello() string {{ return "{greeting}" }}\n'.encode()}
    versions = folder / "example.org" / "greet" / "@v"
    versions.mkdir(parents=True, exist_ok=True)
    (versions / "list").write_text("v1.0.0\n")
    (versions / "v1.0.0.info").write_text(json.dumps({"Version": "v1.0.0", "Time": "2024-01-01T00:00:00Z"}))
    (versions / "v1.0.0.mod").write_text(GREET_MOD)
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", compression=compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    (versions / "v1.0.0.zip").write_bytes(data.getvalue())
    return files


def program(path: Path, files: dict[str, bytes]) -> Path:
    """An upstream-style program requiring example.org/greet v1.0.0, with its go.sum, in a git repo."""
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "go.mod").write_text("module example.org/hello\n\ngo 1.19\n\nrequire example.org/greet v1.0.0\n")
    (path / "go.sum").write_text(f"example.org/greet v1.0.0 {h1(files)}\n"
                                 f"example.org/greet v1.0.0/go.mod {h1({'go.mod': GREET_MOD.encode()})}\n")
    (path / "main.go").write_text(MAIN_GO)
    git(path, "add", ".")
    git(path, "commit", "-qm", "hello")
    return path


def port(url: str) -> int:
    return urlsplit(url).port


def go_fetch_recipe(ws: Workspace, repo: Path, proxy: str, pin: str = "") -> Path:
    return ws.recipe("greeter", f"""\
        [packages]
        install = ["golang-go"]
        [source]
        git = "{repo}"
        ref = "main"
        [fetch]
        script = 'go mod download'
        env = {{ GOPROXY = "{proxy}", GOSUMDB = "off", GOFLAGS = "-modcacherw" }}
        host-ports = [{port(proxy)}]
        {pin}
        [build]
        env = {{ CGO_ENABLED = "0" }}
        script = 'go build -trimpath -o "$OUT/greeter" .'
        [verify]
        static = true
        run = ["greeter | grep -q 'hello from greet'"]
        """)


def script_recipe(ws: Workspace, tmp_path: Path, name: str, fetch: str, build: str, *, packages: str = "[]",
                  fetch_keys: str = "") -> Path:
    """A recipe over a one-file source tarball whose fetch and build are the scripts given."""
    source = tmp_path / "src.tar"
    if not source.exists():
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "README").write_text("a source\n")
        subprocess.run(["tar", "-C", tmp_path / "src", "-cf", source, "README"], check=True)
    return ws.recipe(name, f'[packages]\ninstall = {packages}\n[source]\nurl = "{source}"\n'
                           f'sha256 = "{hashlib.sha256(source.read_bytes()).hexdigest()}"\n'
                           f"[fetch]\n{fetch_keys}script = '''\n{fetch}\n'''\n[build]\nscript = '''\n{build}\n'''\n")


def fetch_digest_of(lock: Path) -> str:
    return tomllib.loads(lock.read_text())["fetch"]["sha256"]


def unpinned_digest(result: subprocess.CompletedProcess[str], name: str) -> str:
    return next(line.split()[-1] for line in result.stderr.splitlines() if line.startswith(f"fetch {name}: sha256 "))


def test_a_go_program_fetches_its_modules_from_a_proxy_locks_them_and_builds_offline(
        workspace: Workspace, tmp_path: Path, http_server) -> None:
    served, proxy = http_server
    files = serve_module(served, "hello from greet A")
    recipe = go_fetch_recipe(workspace, program(tmp_path / "hello", files), proxy)
    binary = workspace.root / "out" / "greeter" / "greeter"

    first = workspace.buildbox("run", recipe, "-q")
    assert "fetch greeter: unpinned fetch: pin it with buildbox lock" in first.stderr
    unpinned = unpinned_digest(first, "greeter")
    assert subprocess.run([binary], capture_output=True, text=True).stdout == "hello from greet A\n"
    manifest = json.loads((binary.parent / "manifest.json").read_text())
    assert manifest["inputs"]["fetch"] == {"sha256": unpinned, "pinned": "unpinned"}
    assert (workspace.cache / "logs" / "greeter" / "fetch.log").is_file()
    # The unpinned fetch is cached by what it stands on: a rerun does not fetch again.
    assert "--> fetch:" not in workspace.buildbox("run", recipe, "-q").stderr

    workspace.buildbox("lock", recipe)   # runs the fetch afresh: the same inputs give the same tree
    lock = recipe.with_suffix(".lock")
    pinned = fetch_digest_of(lock)
    assert pinned == unpinned
    # Locked to the tree it had: the same pins, the same build (the lock changes no key).
    assert ran(workspace.buildbox("run", recipe, "-q")) <= {"out"}

    # The proxy goes away: a changed build still builds, from the cached tree, offline.
    shutil.rmtree(served / "example.org")
    recipe.write_text(recipe.read_text().replace('-o "$OUT/greeter" .', '-o "$OUT/greeter" . && true'))
    rebuilt = workspace.buildbox("run", recipe, "-q")
    assert "--> build:" in rebuilt.stderr and "--> fetch:" not in rebuilt.stderr
    assert subprocess.run([binary], capture_output=True, text=True).stdout == "hello from greet A\n"
    manifest = json.loads((binary.parent / "manifest.json").read_text())
    assert manifest["inputs"]["fetch"] == {"sha256": pinned, "pinned": "the lock pins"}

    # The proxy serves another zip under the same version (the same files, packed otherwise: go.sum
    # does not see it), and the cached tree is gone (another machine's cache): the locked run
    # fails, naming both digests and the changed file; nothing is kept.
    serve_module(served, "hello from greet A", compression=zipfile.ZIP_DEFLATED)
    shutil.rmtree(workspace.cache / "fetches" / pinned)
    failed = workspace.buildbox("run", recipe, "-q", check=1)
    message = next(line for line in failed.stderr.splitlines() if "got sha256" in line)
    got = message.split("got sha256 ")[1].split(",")[0]
    assert len(got) == 64 and got != pinned
    assert f"fetch greeter: got sha256 {got}, the lock pins {pinned}" in message
    assert "changed go/mod/cache/download/example.org/greet/@v/v1.0.0.zip" in message
    assert "greet.go" not in message
    assert f"{lock}:" in message
    assert not (workspace.cache / "fetches" / got).exists()
    assert [p.name for p in (workspace.cache / "fetches").iterdir() if p.name.startswith(".tmp")] == []

    # The recipe's own pin says so when it is the one that does not hold.
    recipe.write_text(recipe.read_text().replace("[build]", f'sha256 = "{pinned}"\n[build]', 1))
    failed = workspace.buildbox("run", recipe, "-q", check=1)
    assert f"got sha256 {got}, the recipe pins {pinned}" in failed.stderr
    assert mounts_under(workspace.cache) == []


def test_a_curl_fetch_is_kept_read_only_and_the_build_still_has_no_network(
        workspace: Workspace, tmp_path: Path, http_server) -> None:
    served, url = http_server
    (served / "data.txt").write_text("fetched bytes\n")
    source = tmp_path / "src.tar"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "README").write_text("a source\n")
    subprocess.run(["tar", "-C", tmp_path / "src", "-cf", source, "README"], check=True)
    recipe = workspace.recipe("curled", f"""\
        [packages]
        install = ["curl"]
        [source]
        url = "{source}"
        sha256 = "{hashlib.sha256(source.read_bytes()).hexdigest()}"
        [fetch]
        host-ports = [{port(url)}]
        script = '''
        curl -sSf -o "$FETCH/data.txt" {url}/data.txt
        echo "$GOMODCACHE $CARGO_HOME" > "$FETCH/where"
        touch /build/src/README 2>/dev/null && echo "source writable" > "$FETCH/oops" || true
        '''
        [build]
        script = '''
        cp "$FETCH/data.txt" "$FETCH/where" "$OUT/"
        echo "$GOPROXY $GOFLAGS $CARGO_NET_OFFLINE" > "$OUT/offline"
        if curl -sSf -m 5 {url}/data.txt; then echo reached > "$OUT/reached"; fi
        if touch "$FETCH/new" 2>/dev/null; then echo wrote > "$OUT/wrote"; fi
        ls -ln "$FETCH" > "$OUT/owners"
        '''
        """)
    workspace.buildbox("run", recipe, "-q")
    out = workspace.root / "out" / "curled"
    assert (out / "data.txt").read_text() == "fetched bytes\n"
    assert (out / "where").read_text() == "/build/fetch/go/mod /build/fetch/cargo\n"
    assert (out / "offline").read_text() == "off -mod=mod true\n"
    assert not (out / "reached").exists(), "the build reached the network"
    assert not (out / "wrote").exists(), "the build wrote to /build/fetch"
    assert not (out / "oops").exists(), "the fetch could write to the source"
    assert all(line.split()[2:4] == ["0", "0"] for line in (out / "owners").read_text().splitlines()[1:])

    # verify builds twice with the fetched tree in place.
    assert "curled is reproducible" in workspace.buildbox("verify", recipe).stdout

    # Two fetches of the same inputs: the same digest (owners, mtimes normalised).
    workspace.buildbox("lock", recipe)
    first = fetch_digest_of(recipe.with_suffix(".lock"))
    workspace.buildbox("lock", recipe)
    assert fetch_digest_of(recipe.with_suffix(".lock")) == first


def test_the_recipes_limits_hold_for_the_fetch_and_its_log_is_kept(workspace: Workspace, tmp_path: Path) -> None:
    source = tmp_path / "src.tar"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "README").write_text("a source\n")
    subprocess.run(["tar", "-C", tmp_path / "src", "-cf", source, "README"], check=True)
    recipe = workspace.recipe("slowfetch", f"""\
        [source]
        url = "{source}"
        sha256 = "{hashlib.sha256(source.read_bytes()).hexdigest()}"
        [fetch]
        script = 'echo fetching; sleep 600'
        [build]
        script = 'true'
        [limits]
        timeout = "3s"
        """)
    failed = workspace.buildbox("run", recipe, "-q", check=1)
    assert "the fetch of slowfetch was stopped: it ran longer than its wall-clock limit ([limits] timeout = 3s)" \
        in failed.stderr
    assert "fetching" in (workspace.cache / "logs" / "slowfetch" / "fetch.log").read_text()
    assert "--> build:" not in failed.stderr, "the build ran after its fetch failed"
    assert mounts_under(workspace.cache) == []


def test_a_fetch_that_swaps_fetch_for_a_link_to_a_host_directory_leaves_it_untouched_and_unseen(
        workspace: Workspace, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "file").write_text("host secret\n")
    os.chown(canary / "file", 4242, 4242)
    os.utime(canary / "file", (2_000_000_000, 2_000_000_000))
    before = os.stat(canary / "file")
    # /build is root's in the fetch box: $FETCH cannot be removed, so the link lands inside it,
    # where it stays a link (and leads nowhere in the build's box).
    recipe = script_recipe(workspace, tmp_path, "linker", f'rm -rf "$FETCH" || true\nln -s {canary} "$FETCH" || true',
                           'cat "$FETCH/file" "$FETCH/canary/file" > "$OUT/seen" 2>&1 || true')
    workspace.buildbox("run", recipe, "-q", check=None)
    after = os.stat(canary / "file")
    assert (after.st_uid, after.st_gid, after.st_mode, after.st_mtime) == \
        (4242, 4242, before.st_mode, 2_000_000_000), "buildbox normalised a host file"
    seen = workspace.root / "out" / "linker" / "seen"
    assert not seen.exists() or "host secret" not in seen.read_text(), "the host directory was bound into the build"


def test_a_fetch_reaches_the_host_ports_it_names_and_nothing_else_of_the_host(
        workspace: Workspace, tmp_path: Path, http_server) -> None:
    served, url = http_server
    (served / "data.txt").write_text("fetched bytes\n")
    # Two servers the fetch must not reach: another port of the host's loopback, and an abstract
    # unix socket (it lives in the host's network namespace). Neither answers: a connection that
    # got through waits in the server's backlog.
    other = socket.create_server(("127.0.0.1", 0))
    abstract = socket.socket(socket.AF_UNIX)
    name = f"buildbox-test-{uuid.uuid4().hex}"
    abstract.bind(f"\0{name}")
    abstract.listen()
    recipe = script_recipe(workspace, tmp_path, "reach", f'''\
curl -sSf -o "$FETCH/data.txt" {url}/data.txt
curl -s -m 3 http://127.0.0.1:{other.getsockname()[1]}/ || true
curl -s -m 3 --abstract-unix-socket {name} http://x/ || true''', 'cp "$FETCH/data.txt" "$OUT/"',
                           packages='["curl"]', fetch_keys=f"host-ports = [{port(url)}]\n")
    workspace.buildbox("run", recipe, "-q")
    assert (workspace.root / "out" / "reach" / "data.txt").read_text() == "fetched bytes\n"
    for server, what in ((other, "a host port not in host-ports"), (abstract, "a host abstract socket")):
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
            pytest.fail(f"the fetch reached {what}")
        server.close()


def test_a_fetched_tree_has_no_set_id_bits_and_no_hard_links(workspace: Workspace, tmp_path: Path) -> None:
    recipe = script_recipe(workspace, tmp_path, "bits", '''\
mkdir "$FETCH/shared" && chmod 3775 "$FETCH/shared" && chmod g+s "$FETCH"
echo tool > "$FETCH/tool" && chmod 6644 "$FETCH/tool"
echo data > "$FETCH/shared/a" && ln "$FETCH/shared/a" "$FETCH/b"''', 'cp "$FETCH/b" "$OUT/"')
    result = workspace.buildbox("run", recipe, "-q")
    tree = workspace.cache / "fetches" / unpinned_digest(result, "bits") / "tree"
    for path in (tree, *tree.rglob("*")):
        st = os.lstat(path)
        assert not st.st_mode & 0o7000, f"{path} kept mode {stat.S_IMODE(st.st_mode):o}"
        assert stat.S_ISDIR(st.st_mode) or st.st_nlink == 1, f"{path} is a hard link"
    assert stat.S_IMODE(os.lstat(tree / "tool").st_mode) == 0o644
    assert stat.S_IMODE(os.lstat(tree / "shared").st_mode) == 0o775
    assert (tree / "b").read_text() == (tree / "shared" / "a").read_text() == "data\n"


@pytest.mark.parametrize("ports", ["[0]", '["x"]', "[70000]"])
def test_a_host_port_that_is_not_a_tcp_port_is_refused_on_its_line(
        workspace: Workspace, tmp_path: Path, ports: str) -> None:
    recipe = script_recipe(workspace, tmp_path, "ports", "true", "true", fetch_keys=f"host-ports = {ports}\n")
    failed = workspace.buildbox("run", recipe, check=2)
    line = recipe.read_text().splitlines().index(f"host-ports = {ports}") + 1
    assert f"{recipe}:{line}: host-ports holds" in failed.stderr
    assert "not a TCP port (1 to 65535)" in failed.stderr


def test_host_ports_are_in_no_key_and_a_mismatch_names_each_path_on_one_line() -> None:
    fetch = Fetch("go mod download")
    assert keys.fetch_document("l", GitPin("x", "c"), fetch) == \
        keys.fetch_document("l", GitPin("x", "c"), dataclasses.replace(fetch, host_ports=(3000,)))
    assert differences({}, {"a\nb": "file 644 x"}) == ["added a\\nb"]
