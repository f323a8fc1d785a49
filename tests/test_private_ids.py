"""Box root is not host root: every box runs in a user namespace mapping its ids onto the cache's
own host range, sees its layers through idmapped mounts, and pivots into its root, the host's
detached. Host accounts (uid 1000 is a real one here, as on most laptops) cannot reach a build."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, Workspace, shell_recipe

pytestmark = pytest.mark.integration


def marker_ids(cache: Path) -> tuple[int, int]:
    ids = json.loads((cache / "buildbox-cache.json").read_text())["ids"]
    return ids["host"], ids["count"]


def test_a_box_sees_its_own_ids_and_mounts_and_no_host_path(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "ids", 'cat /proc/self/uid_map > "$OUT/uid_map"\n'
                          'cat /proc/self/gid_map > "$OUT/gid_map"\n'
                          'cat /proc/self/mountinfo > "$OUT/mountinfo"\nid -u > "$OUT/uid"')
    result = workspace.buildbox("run", recipe, "--debug")
    out = workspace.root / "out" / "ids"
    host, count = marker_ids(workspace.cache)
    assert count == 65536
    # The range touches no host account and no subordinate range.
    assert not [p.pw_name for p in pwd.getpwall() if host <= p.pw_uid < host + count]
    assert (out / "uid_map").read_text().split() == ["0", str(host), "65536"]
    assert (out / "gid_map").read_text().split() == ["0", str(host), "65536"]
    assert (out / "uid").read_text().strip() == "1000"   # builder keeps its uid inside: the bits do not change
    mountinfo = (out / "mountinfo").read_text()
    for host_path in (str(workspace.cache), str(workspace.root), "/work", "/tmp", "/root"):
        assert not re.search(rf"(^|[\s=,:]){re.escape(host_path)}", mountinfo), \
            f"{host_path} in the box's mountinfo:\n{mountinfo}"
    # Only what the box was given: its root, /proc, /dev and what is under /dev.
    targets = [line.split()[4] for line in mountinfo.splitlines()]
    assert targets[0] == "/" and all(t == "/" or t == "/proc" or t.startswith("/dev") for t in targets), targets
    assert f"uid and gid map 0 {host} 65536" in result.stderr   # --debug shows the map


def base_layers(cache: Path) -> list[Path]:
    """A cached base over its bootstrap: the layers of a box made by hand."""
    base = next(p for p in sorted((cache / "bases").iterdir()) if (p / "root").is_dir())
    return [base / "root", *sorted(p / "root" for p in (cache / "bootstraps").iterdir() if (p / "root").is_dir())[:1]]


def test_box_root_holds_no_host_power_and_a_chroot_escape_finds_nothing(workspace: Workspace,
                                                                         tmp_path: Path) -> None:
    shell_recipe(workspace, "warm", 'echo > "$OUT/x"')
    workspace.buildbox("run", workspace.root / "recipes" / "warm.toml")
    canary = tmp_path / "canary"
    canary.write_text("unchanged\n")
    sys.path.insert(0, str(REPO))
    from buildbox.box import Box
    from buildbox.store import Store
    store = Store(workspace.cache)
    layers = base_layers(workspace.cache)
    # What a hostile maintainer script or apt hook does as root in the box: the classic chroot
    # escape, then a look for the host's canary, a write to it, and the capabilities it has.
    escape = (f'mkdir "x"; chroot "x"; chdir("..") for 1..64; chroot "."; '
              f'print((-e "{canary}") ? "reached\\n" : "not reached\\n"); '
              f'print(open(my $f, ">>", "{canary}") ? "wrote\\n" : "no write\\n"); ')
    with Box(store, layers, label="test-root") as box:
        said = box.run(["perl", "-e", escape], what="the escape", capture=True, cwd="/tmp")
        caps = box.run(["sh", "-c", "grep CapEff /proc/self/status; cat /proc/self/uid_map"],
                       what="caps", capture=True)
    assert said.split("\n")[:2] == ["not reached", "no write"], said
    assert canary.read_text() == "unchanged\n"
    host, _ = marker_ids(workspace.cache)
    assert caps.split()[-3:] == ["0", str(host), "65536"]   # its capabilities are its namespace's


def host_account_1000() -> str:
    """The host account with the build user's uid: the existing one, or a throwaway one."""
    try:
        return pwd.getpwuid(1000).pw_name
    except KeyError:
        subprocess.run(["useradd", "-u", "1000", "-M", "-s", "/bin/sh", "bbthrow1000"], check=True)
        return "bbthrow1000"


def as_uid_1000(script: str) -> subprocess.CompletedProcess[str]:
    name = host_account_1000()
    account = pwd.getpwnam(name)
    return subprocess.run(["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                           "--", "sh", "-c", script], capture_output=True, text=True, timeout=30)


def test_the_host_account_with_the_build_users_uid_cannot_reach_a_running_build(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "victim", 'echo honest > "$OUT/tool"\nsleep 6.4321')
    recipe.write_text(recipe.read_text().replace("[build]\n", '[build]\nsecret-env = ["BB_TEST_TOKEN"]\n'))
    env = dict(os.environ, PYTHONPATH=str(REPO), BB_TEST_TOKEN="s3cret-token-value")
    run = subprocess.Popen([sys.executable, "-m", "buildbox", "run", "--cache", str(workspace.cache), str(recipe)],
                           cwd=workspace.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pid = None
        deadline = time.monotonic() + 120
        while pid is None and time.monotonic() < deadline and run.poll() is None:
            for entry in Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and b"6.4321" in (entry / "cmdline").read_bytes():
                        pid = int(entry.name)
                except OSError:
                    continue
            time.sleep(0.1)
        assert pid, "the build's sleep never showed up"
        attack = as_uid_1000(f"""
            echo trojan > /proc/{pid}/root/build/out/tool && echo WROTE-OUT
            cat /proc/{pid}/environ | tr '\\0' '\\n' | grep BB_TEST_TOKEN && echo READ-ENV
            ls /proc/{pid}/root/ >/dev/null && echo SAW-ROOT
            kill -0 {pid} && echo SIGNALLED
            true""")
        output, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    for reached in ("WROTE-OUT", "READ-ENV", "SAW-ROOT", "SIGNALLED"):
        assert reached not in attack.stdout, f"uid 1000 {reached}:\n{attack.stdout}{attack.stderr}"
    assert "s3cret-token-value" not in attack.stdout
    assert run.returncode == 0, output
    assert (workspace.root / "out" / "victim" / "tool").read_text() == "honest\n"


def test_a_cache_made_before_private_ids_gets_a_range_and_keeps_its_bootstrap(workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "old", 'echo > "$OUT/x"')
    workspace.buildbox("run", recipe)
    marker = workspace.cache / "buildbox-cache.json"
    before = json.loads(marker.read_text())
    # As a cache of the code before: no ids in the marker, bootstraps' meta in digest format 1.
    marker.write_text(json.dumps({k: v for k, v in before.items() if k != "ids"}) + "\n")
    sys.path.insert(0, str(REPO))
    from buildbox.store import Store, tree_sha256
    store = Store(workspace.cache)
    downgraded = []
    for entry in sorted((workspace.cache / "bootstraps").iterdir()):
        if (entry / "meta.json").is_file() and (entry / "root").is_dir():
            meta = json.loads((entry / "meta.json").read_text())
            meta.pop("digest-format", None)
            meta["sha256"] = tree_sha256(entry / "root", format=1)
            (entry / "meta.json").write_text(json.dumps(meta))
            store._record("bootstraps", entry.name, entry)
            downgraded.append(entry)
    assert downgraded
    touched = shell_recipe(workspace, "old", 'echo again > "$OUT/x"')
    result = workspace.buildbox("run", touched)
    assert "Bootstrapping" not in result.stderr and "mmdebstrap" not in result.stderr
    assert json.loads(marker.read_text())["ids"]["host"] == before["ids"]["host"]
    for entry in downgraded:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("digest-format") == 2:
            assert meta["sha256"] == tree_sha256(entry / "root")
            assert meta["sha256-v1"] != meta["sha256"]


def test_the_host_account_with_the_build_users_uid_cannot_use_up_the_builds_process_limit(
        workspace: Workspace) -> None:
    recipe = shell_recipe(workspace, "nproc", 'for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait\n'
                          'echo ok > "$OUT/ok"')
    recipe.write_text(recipe.read_text() + "[limits]\nprocesses = 32\n")
    name = host_account_1000()
    account = pwd.getpwnam(name)
    # 48 processes of host uid 1000: past the build's RLIMIT_NPROC, were it counted with them.
    hog = subprocess.Popen(["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                            "--", "sh", "-c", "for i in $(seq 48); do sleep 60 & done; wait"],
                           start_new_session=True)
    try:
        time.sleep(1)
        result = workspace.buildbox("run", recipe, check=None)
    finally:
        os.killpg(hog.pid, 9)
        hog.wait()
    assert result.returncode == 0, result.stderr[-2000:]


def test_mmdebstraps_helper_runs_as_box_root_with_only_its_tree_writable(workspace: Workspace,
                                                                          tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from buildbox.box import run_helper
    from buildbox.sets import BOOTSTRAP_AT
    from buildbox.store import Store
    store = Store(workspace.cache)
    store.claim(create=True)
    tree = tmp_path / "tree"
    tree.mkdir()
    canary = tmp_path / "canary"
    canary.write_text("unchanged\n")
    script = (f"cat /proc/self/uid_map > {BOOTSTRAP_AT}/map; id -u > {BOOTSTRAP_AT}/uid; "
              f"ls -A /home /root /var > {BOOTSTRAP_AT}/state 2>&1; "
              f"(echo x >> {canary}) 2>/dev/null && echo wrote > {BOOTSTRAP_AT}/wrote; "
              f"(touch /usr/bin/bb-canary) 2>/dev/null && echo usr > {BOOTSTRAP_AT}/usr; true")
    run_helper(store, ["sh", "-c", script], tree=tree, at=BOOTSTRAP_AT, env={"PATH": "/usr/bin:/bin"},
               what="the helper", log=None)
    host, _ = marker_ids(workspace.cache)
    assert (tree / "map").read_text().split() == ["0", str(host), "65536"]
    assert (tree / "uid").read_text().strip() == "0"
    assert os.stat(tree / "uid").st_uid == 0   # box root's files hold box ids on disk
    assert not (tree / "wrote").exists() and canary.read_text() == "unchanged\n"
    assert not (tree / "usr").exists() and not Path("/usr/bin/bb-canary").exists()
    assert "No such file" not in (tree / "state").read_text()   # they are there, and empty
    assert (tree / "state").read_text().split() == ["/home:", "/root:", "/var:"]


def test_box_root_writes_nothing_into_the_shared_deb_cache(workspace: Workspace) -> None:
    shell_recipe(workspace, "warm", 'echo > "$OUT/x"')
    workspace.buildbox("run", workspace.root / "recipes" / "warm.toml")
    sys.path.insert(0, str(REPO))
    from buildbox.box import Box
    from buildbox.packages import fetch_access, keep_debs
    from buildbox.store import Store
    store = Store(workspace.cache)
    debs = workspace.cache / "debs"
    layers = base_layers(workspace.cache)
    # What a maintainer script or an apt hook does as root in a package box: a setuid copy of a
    # shell, the cache opened to everyone, a forged .deb under a name apt would use.
    attack = ("cp /bin/sh /var/cache/apt/archives/.x && chmod 4755 /var/cache/apt/archives/.x; "
              "chmod 777 /var/cache/apt/archives; echo forged > /var/cache/apt/archives/bbtest_1.0_amd64.deb")
    with Box(store, layers, label="test-debs") as box:
        new = fetch_access(box, store)
        box.run(["sh", "-c", attack], what="the attack")
        keep_debs(new, store, {("bbtest", "1.0", "amd64"): "0" * 64})
    assert not (debs / ".x").exists()
    assert os.stat(debs).st_mode & 0o777 == 0o755
    assert not (debs / "bbtest_1.0_amd64.deb").exists()
    assert not [p for p in debs.iterdir() if p.stat().st_mode & 0o6000]
