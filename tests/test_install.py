"""`buildbox install` and `buildbox exec`: a build's runtime closure put in a minimal root of its
own, in generations with rollback, run as a service user with only its capabilities, and the
systemd unit that does the same (README, "Running what you built")."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, Workspace, mounts_under

pytestmark = pytest.mark.integration

C_PACKAGES = '["gcc", "libc6-dev"]'   # as test_pipeline's C recipes: one layer for both
# What the probe prints: its library's word, its ids and capabilities as the kernel has them,
# and what of the host and of a shell it can see.
PROBE = r'''
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
const char *bb_word(void);
int main(int argc, char **argv) {
    char line[256];
    FILE *status = fopen("/proc/self/status", "r");
    printf("%s\n", bb_word());
    while (status && fgets(line, sizeof line, status))
        if (!strncmp(line, "Uid:", 4) || !strncmp(line, "CapEff:", 7) || !strncmp(line, "CapBnd:", 7))
            fputs(line, stdout);
    printf("shadow: %s\n", open("/etc/shadow", O_RDONLY) < 0 ? "unreadable" : "READ");
    printf("sh: %s\n", access("/bin/sh", F_OK) == 0 ? "present" : "absent");
    printf("config: %s\n", access("/etc/probe/probe.conf", R_OK) == 0 ? "readable" : "missing");
    int fd = open("/var/lib/probe/count", O_WRONLY | O_CREAT | O_APPEND, 0600);
    printf("state: %s\n", fd >= 0 && write(fd, "x", 1) == 1 ? "written" : "UNWRITABLE");
    printf("usr: %s\n", open("/usr/bin/probe-new", O_WRONLY | O_CREAT, 0600) < 0 ? "read-only" : "WRITABLE");
    return argc > 1 ? 3 : 0;
}
'''
SCRIPT = """\
mkdir -p "$HOME/lib"
gcc -shared -fPIC -Wl,-soname,libbbword.so.1 -o "$HOME/lib/libbbword.so.1" word.c
gcc -o "$OUT/probe" probe.c "$HOME/lib/libbbword.so.1" -Wl,-rpath,"$HOME/lib" -Wl,--enable-new-dtags
"""


def probe_recipe(ws: Workspace, install: str, name: str = "probe", packages: str = C_PACKAGES) -> Path:
    """A C program whose library is off the default paths (RUNPATH $HOME/lib in the build box),
    with the given [install] table."""
    source = ws.root / "probe.tar"
    if not source.exists():
        folder = ws.root / "probe-src"
        folder.mkdir()
        (folder / "probe.c").write_text(PROBE)
        (folder / "word.c").write_text('const char *bb_word(void) { return "word from libbbword"; }\n')
        with tarfile.open(source, "w") as tar:
            tar.add(folder, arcname="probe-1.0")
    (ws.root / "recipes" / "probe.conf").write_text("setting = 1\n")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    return ws.recipe(name, f"""\
[packages]
install = {packages}
[source]
url = "{source}"
sha256 = "{digest}"
[build]
script = '''
{SCRIPT}
'''
{install}
""")


INSTALL = """\
[install]
exec = ["probe"]
files = { "/etc/probe/probe.conf" = "probe.conf" }
state = ["/var/lib/probe"]
check = ["probe"]
"""


def files_of(root: Path) -> set[str]:
    return {"/" + str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def elf_names(root: Path) -> set[str]:
    found = set()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.read_bytes()[:4] == b"\x7fELF":
            found.add(path.name)
    return found


def test_a_service_with_a_library_off_the_default_paths_gets_it_in_a_root_of_its_own(workspace: Workspace,
                                                                                      tmp_path: Path) -> None:
    recipe = probe_recipe(workspace, INSTALL)
    root = tmp_path / "roots" / "probe"
    done = workspace.buildbox("install", "--root", root, recipe, "-q")
    # The host lacks the library: a warning for out/, not a failed build (the root carries it).
    assert "probe needs libbbword.so.1, which the host does not have" in done.stderr
    assert "generation 1 is current" in done.stdout
    current = root / "current"
    assert os.readlink(current) == "generations/1"
    assert files_of(current) == {
        "/usr/bin/probe", "/home/builder/lib/libbbword.so.1", "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
        "/etc/hosts", "/etc/resolv.conf", "/etc/probe/probe.conf"}
    assert not os.path.lexists(current / "bin" / "sh") and not (current / "usr" / "bin" / "sh").exists()
    assert (current / "tmp").stat().st_mode & 0o7777 == 0o1777 and not any((current / "dev").iterdir())
    # Copies, never links to the cache.
    assert all(p.stat().st_nlink == 1 for p in current.rglob("*") if p.is_file())
    manifest = json.loads(next(p for p in (workspace.cache / "builds").glob("*/manifest.json")
                               if json.loads(p.read_text())["recipe"] == "probe").read_text())
    runtime = manifest["runtime"]
    assert runtime["files"]["/usr/lib/x86_64-linux-gnu/libc.so.6"]["package"] == "libc6:amd64"
    assert runtime["files"]["/home/builder/lib/libbbword.so.1"]["package"] is None   # the build made it
    assert runtime["links"]["/lib64"] == "usr/lib64"

    uid = json.loads((root / "buildbox-root.json").read_text())["uid"]
    passwd = (current / "etc" / "passwd").read_text()
    assert f"probe:x:{uid}:{uid}:" in passwd and passwd.count("\n") == 2
    with pytest.raises(KeyError):   # an id no host account has
        __import__("pwd").getpwuid(uid)

    ran = workspace.buildbox("exec", "--root", root, recipe)
    lines = ran.stdout.splitlines()
    assert lines[0] == "word from libbbword"
    assert lines[1].split()[1:] == [str(uid)] * 4
    assert lines[2] == "CapEff:\t0000000000000000" and lines[3] == "CapBnd:\t0000000000000000"
    assert lines[4:] == ["shadow: unreadable", "sh: absent", "config: readable", "state: written", "usr: read-only"]
    # The state is the service user's and outlives the run; what exec runs is its exit status.
    state = root / "state" / "var" / "lib" / "probe"
    assert state.stat().st_uid == uid and (state / "count").read_text() == "xx"   # the check's and exec's
    assert workspace.buildbox("exec", "--root", root, recipe, "--", "probe", "again", check=3).returncode == 3
    assert mounts_under(root) == []


def test_generations_roll_back_keep_state_and_a_failing_check_changes_nothing(workspace: Workspace,
                                                                              tmp_path: Path) -> None:
    recipe = probe_recipe(workspace, INSTALL)
    root = tmp_path / "root"
    conf = workspace.root / "recipes" / "probe.conf"
    for generation in (1, 2):
        conf.write_text(f"generation = {generation}\n")
        workspace.buildbox("install", "--root", root, recipe, "-q")
        assert os.readlink(root / "current") == f"generations/{generation}"
    (root / "state" / "var" / "lib" / "probe" / "kept").write_text("mine\n")
    assert (root / "current" / "etc" / "probe" / "probe.conf").read_text() == "generation = 2\n"
    back = workspace.buildbox("install", "--rollback", "--root", root, recipe)
    assert "generation 1 is current again" in back.stdout and "-->" not in back.stderr
    assert os.readlink(root / "current") == "generations/1"
    assert (root / "current" / "etc" / "probe" / "probe.conf").read_text() == "generation = 1\n"
    refused = workspace.buildbox("install", "--rollback", "--root", root, recipe, check=2)
    assert "there is none before it" in refused.stderr

    failing = probe_recipe(workspace, INSTALL.replace('check = ["probe"]', 'check = ["probe", "probe fails"]'))
    result = workspace.buildbox("install", "--root", root, failing, "-q", check=1)
    assert "the check `probe fails` failed" in result.stderr and "generation 1 stays current" in result.stderr
    assert os.readlink(root / "current") == "generations/1"
    assert sorted(p.name for p in (root / "generations").iterdir()) == ["1", "2"]

    recipe = probe_recipe(workspace, INSTALL)
    workspace.buildbox("install", "--root", root, recipe, "-q")
    assert sorted(int(p.name) for p in (root / "generations").iterdir()) == [1, 2, 3]   # the failed one made none
    for _ in range(2):
        workspace.buildbox("install", "--rollback", "--root", root, recipe)
    workspace.buildbox("install", "--root", root, recipe, "-q")
    # The last 3, and generation 1, current until this install: a service may still run from it.
    assert sorted(int(p.name) for p in (root / "generations").iterdir()) == [1, 2, 3, 4]
    workspace.buildbox("install", "--root", root, recipe, "-q")
    assert sorted(int(p.name) for p in (root / "generations").iterdir()) == [3, 4, 5]
    assert (root / "state" / "var" / "lib" / "probe" / "kept").read_text() == "mine\n"


@pytest.mark.parametrize("table, message", [
    ('[install]\nexec = ["nosuch"]\n', "exec runs nosuch, which is no artifact of probe"),
    ('[install]\nexec = ["probe"]\nca-certificates = true\n', 'add "ca-certificates" to [packages] install'),
])
def test_install_refuses_what_the_build_cannot_give_at_the_recipes_line(workspace: Workspace, tmp_path: Path,
                                                                        table: str, message: str) -> None:
    recipe = probe_recipe(workspace, table)
    result = workspace.buildbox("install", "--root", tmp_path / "r", recipe, "-q", check=2)
    [line] = [line for line in result.stderr.splitlines() if line.startswith("buildbox: error:")]
    assert message in line and f"{recipe}:" in line
    assert not (tmp_path / "r" / "current").exists()


def test_ca_certificates_puts_the_build_boxs_bundle_in_the_root(workspace: Workspace, tmp_path: Path) -> None:
    recipe = probe_recipe(workspace, '[install]\nexec = ["probe"]\nca-certificates = true\n', name="withca",
                          packages='["gcc", "libc6-dev", "ca-certificates"]')
    workspace.buildbox("install", "--root", tmp_path / "r", recipe, "-q")
    bundle = tmp_path / "r" / "current" / "etc" / "ssl" / "certs" / "ca-certificates.crt"
    assert bundle.is_file() and not bundle.is_symlink() and "BEGIN CERTIFICATE" in bundle.read_text()


def test_install_refuses_a_root_that_is_slash_in_the_cache_or_not_buildboxs(workspace: Workspace,
                                                                            tmp_path: Path) -> None:
    recipe = probe_recipe(workspace, INSTALL)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "important").write_text("keep\n")
    for root, said in (("/", "is /"), (workspace.cache / "roots", "is in the cache"),
                       (theirs, "exists and was not made by buildbox")):
        result = workspace.buildbox("install", "--root", root, recipe, check=2)
        assert said in result.stderr and "-->" not in result.stderr
    assert sorted(p.name for p in theirs.iterdir()) == ["important"]
    assert not (workspace.cache / "roots").exists()
    # A root (or a folder above it) another user owns or may write to could be swapped under
    # buildbox, which writes there as root: refused, with uid 1000 (a real account here).
    for owner, mode in ((1000, 0o700), (0, 0o777)):
        planted = tmp_path / f"planted-{owner}-{mode:o}"
        planted.mkdir()
        os.chown(planted, owner, owner)
        planted.chmod(mode)
        result = workspace.buildbox("install", "--root", planted / "probe", recipe, check=2)
        assert "not to root alone" in result.stderr and not (planted / "probe").exists()


def test_a_files_source_swapped_for_a_link_after_the_recipe_was_read_is_refused(workspace: Workspace,
                                                                               tmp_path: Path) -> None:
    from buildbox.errors import InputError
    from buildbox.lock import load_recipe
    from buildbox.roots import _copy_file
    from buildbox.inroot import Root
    probe_recipe(workspace, INSTALL.replace('"probe.conf"', '"conf/probe.conf"'))
    folder = workspace.root / "recipes"
    (folder / "conf").mkdir()
    (folder / "conf" / "probe.conf").write_text("mine\n")
    service = load_recipe(folder / "probe.toml").service
    (folder / "conf" / "probe.conf").unlink()
    (folder / "conf").rmdir()
    (folder / "conf").symlink_to("/etc")   # the recipe's folder changed under it: conf/ -> /etc
    (folder / "probe.conf").unlink()
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in ("conf/probe.conf", "conf/shadow"):
        with Root(dest) as tree, pytest.raises(InputError) as caught:
            _copy_file(service.folder, name, tree, "/x")
        assert "not through a link" in str(caught.value)
    assert not (dest / "x").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CADDYFILE = """\
{
	admin off
	auto_https off
	storage file_system /var/lib/caddy
}
:%d {
	root * /srv/www
	file_server
}
"""


@pytest.mark.slow
def test_caddy_serves_from_its_root_as_its_user_with_only_cap_net_bind_service(tmp_path: Path) -> None:
    """README's main job's build (the repository's cache), installed and run by `buildbox exec`;
    a changed Caddyfile is generation 2, and --rollback serves the first again."""
    cache = Path(os.environ.get("BUILDBOX_CACHE", REPO / "cache"))
    folder = tmp_path / "recipes"
    (folder / "caddy").mkdir(parents=True)
    text = (REPO / "recipes" / "caddy.toml").read_text()
    text = text[:text.index("[install]")] + """[install]
exec = ["caddy", "run", "--config", "/etc/caddy/Caddyfile"]
files = { "/etc/caddy/Caddyfile" = "caddy/Caddyfile", "/srv/www/index.html" = "caddy/index.html" }
state = ["/var/lib/caddy"]
capabilities = ["CAP_NET_BIND_SERVICE"]
check = ["caddy version"]
"""
    recipe = folder / "caddy.toml"
    recipe.write_text(text)
    port = free_port()
    (folder / "caddy" / "Caddyfile").write_text(CADDYFILE % port)
    (folder / "caddy" / "index.html").write_text("first\n")
    root = tmp_path / "root"

    def buildbox(*args: object, check: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "buildbox", *map(str, args), "--cache", str(cache)],
                                cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert result.returncode == check, result.stdout + result.stderr[-4000:]
        return result

    buildbox("install", "--root", root, recipe, "-q")
    current = root / "current"
    assert elf_names(current) == {"caddy", "ld-linux-x86-64.so.2", "libc.so.6", "libzstd.so.1.5.4"}
    assert files_of(current) == {
        "/usr/bin/caddy", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libzstd.so.1.5.4", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
        "/etc/hosts", "/etc/resolv.conf", "/etc/caddy/Caddyfile", "/srv/www/index.html"}
    assert not os.path.lexists(current / "bin" / "sh")
    uid = json.loads((root / "buildbox-root.json").read_text())["uid"]

    def serve() -> str:
        server = subprocess.Popen([sys.executable, "-m", "buildbox", "exec", "--root", root, recipe, "--cache", cache],
                                  cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=dict(os.environ, PYTHONPATH=str(REPO)))
        try:
            for _ in range(100):
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise AssertionError(f"caddy never answered: {server.stderr.read()[-3000:] if server.poll() else ''}")
            [pid] = subprocess.run(["pgrep", "-u", str(uid), "-x", "caddy"], capture_output=True,
                                   text=True).stdout.split()
            status = Path(f"/proc/{pid}/status").read_text()
            assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status
            assert "CapEff:\t0000000000000400" in status and "CapBnd:\t0000000000000400" in status
            # Its / is the generation, not the host's; the host's /etc/shadow is not in it.
            assert os.stat(f"/proc/{pid}/root") != os.stat("/")
            assert os.stat(f"/proc/{pid}/root").st_ino == os.stat(os.path.realpath(current)).st_ino
            assert not os.path.exists(f"/proc/{pid}/root/etc/shadow")
            return body
        finally:
            server.terminate()   # SIGTERM, as rc stops it: passed on to caddy, which exits 0
            assert server.wait(timeout=20) == 0

    assert serve() == "first\n"
    (root / "state" / "var" / "lib" / "caddy" / "mine").write_text("kept\n")
    (folder / "caddy" / "index.html").write_text("second\n")
    buildbox("install", "--root", root, recipe, "-q")
    assert os.readlink(current) == "generations/2" and serve() == "second\n"
    buildbox("install", "--rollback", "--root", root, recipe)
    assert os.readlink(current) == "generations/1" and serve() == "first\n"
    assert (root / "state" / "var" / "lib" / "caddy" / "mine").read_text() == "kept\n"

    unit_dir = Path("/etc/systemd/system")
    unit = unit_dir / "buildbox-caddy.service"
    assert not unit.exists(), "a unit of this name is the host's"
    try:
        buildbox("install", "--unit", "--root", root, recipe, "-q")
        text = unit.read_text()
        assert f"RootDirectory={root}/current" in text and f"User={uid}" in text
        assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text and "NoNewPrivileges=yes" in text
        # systemd-analyze checks ExecStart= on the host, not in RootDirectory=: in a mount namespace
        # of its own, the root's /usr/bin over the host's.
        checked = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                  'mount -t overlay overlay -o "lowerdir=$1/usr/bin:/usr/bin" /usr/bin && '
                                  'exec systemd-analyze verify "$2"', "sh", str(current), str(unit)],
                                 capture_output=True, text=True)
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
        if not os.path.isdir("/run/systemd/system"):
            print("\nnot starting the unit: PID 1 is not systemd here", file=sys.stderr)
        else:
            subprocess.run(["systemctl", "daemon-reload"], check=True)
            subprocess.run(["systemctl", "start", unit.name], check=True)
            try:
                for _ in range(100):
                    try:
                        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read() == b"first\n"
                        break
                    except OSError:
                        time.sleep(0.1)
            finally:
                subprocess.run(["systemctl", "stop", unit.name])
    finally:
        unit.unlink(missing_ok=True)
    shutil.rmtree(root)


def test_a_script_gets_its_interpreters_closure_a_static_binary_none_and_a_missing_one_is_named(
        workspace: Workspace, tmp_path: Path) -> None:
    recipe = probe_recipe(workspace, '[install]\nexec = ["hello.sh"]\ncheck = ["hello.sh"]\n', name="scripts")
    text = recipe.read_text().replace(SCRIPT, """\
gcc -static -o "$OUT/answer-static" word.c -x c - <<'C'
#include <stdio.h>
const char *bb_word(void);
int main(void) { puts(bb_word()); return 0; }
C
printf '#!/bin/sh\\necho "hello from sh"\\n' > "$OUT/hello.sh"
chmod +x "$OUT/hello.sh"
""")
    stranded = """printf '#!/opt/nowhere/interpreter\\n' > "$OUT/stranded"\n"""
    recipe.write_text(text.replace('chmod +x', stranded + 'chmod +x'))
    refused = workspace.buildbox("install", "--root", tmp_path / "r", recipe, "-q", check=2)
    assert "stranded needs /opt/nowhere/interpreter, which its build box does not have" in refused.stderr
    recipe.write_text(text.replace("printf '#!/opt/nowhere/interpreter\\\\n' > \"$OUT/stranded\"\n", "")
                      .replace(' "$OUT/stranded"', ""))
    workspace.buildbox("install", "--root", tmp_path / "r", recipe, "-q")
    current = tmp_path / "r" / "current"
    manifest = json.loads(next(p for p in (workspace.cache / "builds").glob("*/manifest.json")
                               if json.loads(p.read_text())["recipe"] == "scripts").read_text())
    assert manifest["runtime"]["needs"]["answer-static"] == []
    assert "/usr/bin/dash" in manifest["runtime"]["needs"]["hello.sh"]
    # /bin/sh as the box has it: the links /bin -> usr/bin and sh -> dash, dash and its libraries.
    assert os.readlink(current / "bin") == "usr/bin" and os.readlink(current / "usr" / "bin" / "sh") == "dash"
    assert elf_names(current) == {"answer-static", "dash", "libc.so.6", "ld-linux-x86-64.so.2"}
    ran = workspace.buildbox("exec", "--root", tmp_path / "r", recipe)
    assert ran.stdout == "hello from sh\n"
    assert workspace.buildbox("exec", "--root", tmp_path / "r", recipe, "--", "answer-static").stdout == \
        "word from libbbword\n"


def test_a_build_cached_before_runtime_closures_is_built_again_saying_so(workspace: Workspace, tmp_path: Path) -> None:
    from buildbox.store import Store
    recipe = probe_recipe(workspace, INSTALL, name="older")
    workspace.buildbox("run", recipe, "-q")
    keys = workspace.buildbox("list", "--keys", recipe).stdout
    key = next(line.split()[2] for line in keys.splitlines() if line.startswith("build "))
    path = workspace.cache / "builds" / key / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["runtime"]   # as buildbox wrote it before this change, recorded as made so
    path.write_text(json.dumps(manifest))
    shutil.rmtree(path.parent / "runtime")
    Store(workspace.cache)._record("builds", path.parent.name, path.parent)
    done = workspace.buildbox("install", "--root", tmp_path / "r", recipe, "-q")
    assert "was made before builds kept their runtime closure: building it again" in done.stderr
    assert "runtime" in json.loads(path.read_text())
    assert (tmp_path / "r" / "current" / "home" / "builder" / "lib" / "libbbword.so.1").is_file()
