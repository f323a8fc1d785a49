"""The shared remote cache (issue 21), against a real nginx with its WebDAV PUT, write-once by its
config, started once for the module; S3 against moto_server (no real S3 server installs here).

Two caches stand for two machines: the session's cache pushes ("farm1"), an empty one takes.
A refused entry is followed by a local build: there the consumer is the session's cache with the
recipe's build entry removed, so the local build stands on cached layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from buildbox.remote.entry import signed
from buildbox.signing import load_signing_key
from buildbox.store import Store
from conftest import REPO, Workspace, ran, shell_recipe
from servers import DAV_MODULE, Nginx, free_port

pytestmark = pytest.mark.integration
RUN = uuid.uuid4().hex[:8]   # in every script: a rerun on a kept test cache builds and pushes anew

@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory):
    if not shutil.which("nginx") or not DAV_MODULE.exists():
        pytest.skip("needs nginx and libnginx-mod-http-dav-ext (README's first command installs them)")
    server = Nginx(tmp_path_factory.mktemp("nginx"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Signing keys farm1, farm2 and stranger; their public lines by name."""
    folder = tmp_path_factory.mktemp("keys")
    for name in ("farm1", "farm2", "stranger"):
        subprocess.run([sys.executable, "-m", "buildbox", "key", "generate", name, "--dir", folder], check=True,
                       capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return {"dir": str(folder), **{name: (folder / f"{name}.pub").read_text().strip()
                                   for name in ("farm1", "farm2", "stranger")}}


def config(ws: Workspace, name: str, url: str, keys: dict[str, str], *, sign: str | None = None,
           trust: tuple[str, ...] = ("farm1",), push: bool = False) -> Path:
    path = ws.root / f"{name}.toml"
    lines = ["[remote]", f'url = "{url}"', f"push = {'true' if push else 'false'}"]
    if sign:
        lines.append(f'signing-key = "{keys["dir"]}/{sign}.key"')
    lines.append(f"trusted-keys = {json.dumps([keys[t] for t in trust])}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[Path, str]:
    """One shell recipe's source tarball and lock, locked once for the module (locking resolves
    every package afresh): the tests' locked recipes share both, under their own names."""
    ws = Workspace(tmp_path_factory.mktemp("template") / "ws", cache)
    path = shell_recipe(ws, "template", "true")
    ws.buildbox("lock", path)
    return ws.root / "empty.tar", path.with_suffix(".lock").read_text()


def locked_recipe(ws: Workspace, name: str, script: str, template: tuple[Path, str]) -> Path:
    tarball, lock = template
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    path = ws.recipe(name, f"[source]\nurl = \"{tarball}\"\nsha256 = \"{digest}\"\n"
                           f"[build]\nscript = \'\'\'\n# {RUN}\n{script}\n\'\'\'\n")
    path.with_suffix(".lock").write_text(lock.replace('recipe = "template"', f'recipe = "{name}"')
                                         .replace("template.toml", f"{name}.toml"))
    return path


def build_key(ws: Workspace, recipe: Path, cache: Path | None = None) -> str:
    out = ws.buildbox("list", "--keys", recipe, *(["--cache", cache] if cache else [])).stdout
    return next(line.split()[2] for line in out.splitlines() if line.startswith("build "))


def digest_line(result: subprocess.CompletedProcess[str]) -> str:
    return next(line.split()[0] for line in result.stdout.splitlines() if len(line.split()[0]) == 64)


def drop_build(cache: Path, key: str) -> None:
    """This machine's build entry of key goes (as gc would take it): the next run takes or builds it."""
    Store(cache).remove_entry("builds", key)


def test_key_generate(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "buildbox", "key", "generate", "farm1", "--dir", str(tmp_path / "K")]
    first = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "K/farm1.key").stat().st_mode & 0o777 == 0o600
    [line] = (tmp_path / "K/farm1.pub").read_text().splitlines()
    assert line.startswith("farm1:") and len(__import__("base64").b64decode(line[6:])) == 32
    before = (tmp_path / "K/farm1.key").read_bytes()
    again = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "never overwritten" in again.stderr and "Traceback" not in again.stderr
    assert (tmp_path / "K/farm1.key").read_bytes() == before


def test_config_mistakes_exit_2_at_file_line(workspace: Workspace, keys: dict[str, str]) -> None:
    recipe = shell_recipe(workspace, "conf", "echo > $OUT/x")
    cases = {
        '[remote]\nurl = "https://h/c"\nurll = 1\n': ("buildbox.toml:3", "unknown key 'urll'"),
        '[remote]\nurl = "ftp://h/c"\n': ("buildbox.toml:2", "is not an http(s):// or s3://"),
        '[remote]\nurl = "https://h/c"\npush = true\n': ("buildbox.toml:3", "push = true needs a signing key"),
        '[remote]\nurl = "https://h/c"\ntrusted-keys = ["farm1:AAAA"]\n': ("buildbox.toml:3", "trusted-keys entry"),
        f'[remote]\nurl = "https://h/c"\nsigning-key = "{keys["dir"]}/farm1.pub"\n': ("buildbox.toml:3",
                                                                                 "can be read by other users"),
        '[remote]\nurl = "https://h/c"\nsigning-key = "pub-as-key"\n': ("buildbox.toml:3", "is not a secret key"),
        '[remote]\nurl = "https://alice:hunter2@h:http/c"\n': ("buildbox.toml:2", "has a port that is not a number"),
        '[remote]\nurl = "https://h/c"\ntrusted-keys = ["binary.pub"]\n': ("buildbox.toml:3", "cannot be read"),
    }
    (workspace.root / "binary.pub").write_bytes(b"\xff\xfe\x00")
    shutil.copy(Path(keys["dir"]) / "farm1.pub", workspace.root / "pub-as-key")
    (workspace.root / "pub-as-key").chmod(0o600)
    for text, (where, words) in cases.items():
        (workspace.root / "buildbox.toml").write_text(text)
        for argv in (("list", recipe), ("run", recipe), ("push", recipe), ("lock", recipe), ("verify", recipe)):
            result = workspace.buildbox(*argv, check=2)
            assert where in result.stderr and words in result.stderr, (text, argv, result.stderr)
            assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    (workspace.root / "buildbox.toml").unlink()
    result = workspace.buildbox("run", recipe, "--push", "--remote", "http://127.0.0.1:9/c", check=2)
    assert "--push needs a signing key" in result.stderr


def test_a_pushes_b_takes_without_bootstrapping(workspace: Workspace, nginx: Nginx, keys: dict[str, str], template: tuple[Path, str],
                                                tmp_path: Path) -> None:
    recipe = locked_recipe(workspace, "shared", "printf '#!/bin/sh\\necho shared bits\\n' > $OUT/tool; chmod +x $OUT/tool",
                           template)
    with open(recipe, "a") as f:   # in no key; what `install` on B needs comes with the entry
        f.write('[install]\nexec = ["tool"]\n')
    a = config(workspace, "a", nginx.url, keys, sign="farm1", push=True)
    built = workspace.buildbox("run", recipe, "--config", a)
    key = build_key(workspace, recipe)
    assert nginx.ac(key).is_file(), "A's push left no ac/<build key>.json"
    record = json.loads(nginx.ac(key).read_text())
    assert record["signer"] == "farm1" and record["document"]["inputs"]
    assert hashlib.sha256(json.dumps(record["document"], sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest() == key
    assert "Building" not in json.dumps(record), "a build log left the machine"

    b_cache = tmp_path / "b-cache"
    b = config(workspace, "b", nginx.ro, keys)
    taken = workspace.buildbox("run", recipe, "--config", b, "--cache", b_cache, "--out", tmp_path / "b-out")
    assert "build shared: from remote cache (signed by farm1)" in taken.stderr, taken.stderr
    assert digest_line(taken) == digest_line(built)
    assert "build" not in ran(taken) and "Building" not in taken.stderr, taken.stderr
    for kind in ("bootstraps", "layers", "bases", "sources"):
        assert not (b_cache / kind).exists() or not list((b_cache / kind).glob("*")), kind
    manifest = json.loads((tmp_path / "b-out/shared/manifest.json").read_text())
    assert manifest["from_remote"] == {"signer": "farm1", "reproduced_by": 0}
    assert json.loads((workspace.root / "out/shared/manifest.json").read_text())["from_remote"] is False
    assert os.access(tmp_path / "b-out/shared/tool", os.X_OK)
    # The runtime closure came with it: B installs the tool's root (its /bin/sh, dash and libc)
    # with no layer of its own.
    assert "/usr/bin/dash" in manifest["runtime"]["files"]
    workspace.buildbox("install", "--root", tmp_path / "b-root", recipe, "--config", b, "--cache", b_cache, "-q")
    assert (tmp_path / "b-root/current/usr/bin/dash").is_file()
    assert workspace.buildbox("exec", "--root", tmp_path / "b-root", recipe, "--cache", b_cache).stdout == "shared bits\n"
    assert not (b_cache / "layers").exists() or not list((b_cache / "layers").glob("*"))
    # The second run is a no-op, and still bootstraps nothing.
    again = workspace.buildbox("run", recipe, "--config", b, "--cache", b_cache, "--out", tmp_path / "b-out")
    assert not ({"set", "base", "layer", "source", "build"} & ran(again)), again.stderr
    assert not (b_cache / "bootstraps").exists() or not list((b_cache / "bootstraps").glob("*"))


TAMPER = {
    "untrusted": "signed only by keys this machine does not trust (farm1)",
    "tampered blob": "has other content",
    "truncated blob": "is truncated",
    "missing blob": "is missing",
    "swapped manifest": "does not verify",
    "a forged signature first": "",   # the good one after it still counts: taken
    "forged signature": "does not verify",
    "unsigned": "it is unsigned",
    "other document": "its document's sha256 is not its build key",
    "manifest not its files": "its manifest names other artifacts, digests or sizes than its files",
    "nested too deep": "not JSON",
    "not JSON": "not JSON",
    "over 1 MiB": "over 1 MiB",
}


def test_refused_entries_are_built_here(workspace: Workspace, nginx: Nginx, keys: dict[str, str], template: tuple[Path, str]) -> None:
    recipe = locked_recipe(workspace, "refused", "printf 'the right bits\\n' > $OUT/tool", template)
    a = config(workspace, "a", nginx.url, keys, sign="farm1", push=True)
    right = digest_line(workspace.buildbox("run", recipe, "--config", a))
    key = build_key(workspace, recipe)
    original = nginx.ac(key).read_bytes()
    record = json.loads(original)
    [(rel, fact)] = record["files"].items()
    blob = nginx.root / "cas" / fact["sha256"]
    blob_bytes = blob.read_bytes()
    consumer = config(workspace, "consumer", nginx.ro, keys)
    stranger_only = config(workspace, "stranger", nginx.ro, keys, trust=("stranger",))
    forger = __import__("base64").b64encode(bytes(64)).decode()
    for case, reason in TAMPER.items():
        nginx.ac(key).write_bytes(original)
        blob.write_bytes(blob_bytes)
        changed = json.loads(original)
        if case == "tampered blob":
            blob.write_bytes(b"X" * len(blob_bytes))
        elif case == "truncated blob":
            blob.write_bytes(blob_bytes[:-3])
        elif case == "missing blob":
            blob.unlink()
        elif case == "swapped manifest":
            changed["manifest"]["artifacts"]["tool"]["sha256"] = "0" * 64
        elif case == "forged signature":
            changed["signatures"] = [f"farm1:{forger}"]
        elif case == "a forged signature first":
            changed["signatures"] = [f"farm1:{forger}", *record["signatures"]]
        elif case == "unsigned":
            del changed["signatures"]
        elif case in ("other document", "manifest not its files"):   # signed by farm1 itself, yet wrong
            if case == "other document":
                changed["document"]["inputs"]["script"] = "echo evil > $OUT/tool"
            else:
                changed["manifest"]["artifacts"]["tool"]["sha256"] = "0" * 64
            body = {k: v for k, v in changed.items() if k not in ("signatures", "signer")}
            changed = json.loads(signed(body, load_signing_key(Path(keys["dir"]) / "farm1.key", "test")))
        if case == "nested too deep":
            nginx.ac(key).write_bytes(b"[" * 200_000 + b"]" * 200_000)
        elif case == "not JSON":
            nginx.ac(key).write_bytes(b"<html>not json</html>")
        elif case == "over 1 MiB":
            nginx.ac(key).write_bytes(b" " * (1 << 20) + original)
        elif changed != record:
            nginx.ac(key).write_text(json.dumps(changed))
        drop_build(workspace.cache, key)
        result = workspace.buildbox("run", recipe, "--config", stranger_only if case == "untrusted" else consumer)
        if not reason:
            assert "build refused: from remote cache (signed by farm1)" in result.stderr, (case, result.stderr)
            assert digest_line(result) == right
            continue
        assert f"remote cache entry for refused (build key {key[:12]}) refused: " in result.stderr, (case, result.stderr)
        assert reason in result.stderr, (case, result.stderr)
        assert "from remote cache" not in result.stderr and "build" in ran(result), case
        assert digest_line(result) == right, case
        assert "Traceback" not in result.stderr
    blob.write_bytes(blob_bytes)
    nginx.ac(key).write_bytes(original)


def test_server_stopped_mid_run(workspace: Workspace, keys: dict[str, str], template: tuple[Path, str], tmp_path: Path) -> None:
    server = Nginx(tmp_path / "nginx-2")
    recipes = [locked_recipe(workspace, f"down{i}", f"printf 'down {i}\\n' > $OUT/x", template) for i in (1, 2)]
    a = config(workspace, "a", server.url, keys, sign="farm1", push=True)
    argv = [sys.executable, "-m", "buildbox", "run", *map(str, recipes), "--config", str(a), "--cache",
            str(workspace.cache)]
    run = subprocess.Popen(argv, cwd=workspace.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    lines = []
    for line in run.stderr:   # the lookups were answered (misses); stop the server as the first build starts
        lines.append(line)
        if "Building down" in line:
            server.stop()
            break
    rest = run.stderr.read()
    stdout = run.stdout.read()
    assert run.wait() == 0, "".join(lines) + rest
    said = "".join(lines) + rest
    assert said.count("is unreachable") == 1, said
    assert len([line for line in stdout.splitlines() if line.strip()]) == 2
    assert not (server.root / "ac").exists() or not list((server.root / "ac").glob("*"))
    # And with --push-required, a push that does not land is exit 1.
    for recipe in recipes:
        drop_build(workspace.cache, build_key(workspace, recipe))
    result = workspace.buildbox("run", recipes[0], "--config", a, "--push-required", check=1)
    assert "is unreachable" in result.stderr and "Traceback" not in result.stderr


def test_racing_pushers_one_entry_both_succeed(workspace: Workspace, nginx: Nginx, keys: dict[str, str], template: tuple[Path, str]) -> None:
    recipe = locked_recipe(workspace, "racing", "printf 'race\\n' > $OUT/x", template)
    workspace.buildbox("run", recipe)
    key = build_key(workspace, recipe)
    pushers = [subprocess.Popen([sys.executable, "-m", "buildbox", "push", str(recipe), "--cache", str(workspace.cache),
                                 "--config", str(config(workspace, name, nginx.url, keys, sign=name))],
                                cwd=workspace.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO))) for name in ("farm1", "farm2")]
    results = [(p.wait(), p.stderr.read()) for p in pushers]
    assert [code for code, _ in results] == [0, 0], results
    assert len(list((nginx.root / "ac").glob(f"{key}.json"))) == 1
    assert json.loads(nginx.ac(key).read_text())["signer"] in ("farm1", "farm2")
    assert sum("with the same bits" in err for _, err in results) == 1, results


def test_other_bits_are_not_overwritten(workspace: Workspace, nginx: Nginx, keys: dict[str, str], template: tuple[Path, str]) -> None:
    recipe = locked_recipe(workspace, "unstable", "date +%s%N > $OUT/stamp", template)
    workspace.buildbox("run", recipe, "--config", config(workspace, "two", nginx.url, keys, sign="farm2"), "--push")
    key = build_key(workspace, recipe)
    before = nginx.ac(key).read_bytes()
    drop_build(workspace.cache, key)
    # farm1 does not trust farm2: it builds here, other bits, and its push must not replace farm2's.
    a = config(workspace, "a", nginx.url, keys, sign="farm1", trust=("farm1",))
    result = workspace.buildbox("run", recipe, "--config", a, "--push-required", check=1)
    assert f"remote has different bits for unstable (build key {key}): not overwritten" in result.stderr
    assert "Traceback" not in result.stderr
    assert nginx.ac(key).read_bytes() == before
    result = workspace.buildbox("push", recipe, "--config", a, check=1)
    assert "not overwritten" in result.stderr and nginx.ac(key).read_bytes() == before
    without = workspace.buildbox("run", recipe, "--config", a, "--push")   # built already: nothing pushed, exit 0
    assert nginx.ac(key).read_bytes() == before and "different bits" not in without.stderr


def test_verify_against_remote_attests_and_list_counts(workspace: Workspace, nginx: Nginx,
                                                       keys: dict[str, str], template: tuple[Path, str]) -> None:
    recipe = locked_recipe(workspace, "attested", "printf 'same everywhere\\n' > $OUT/x", template)
    workspace.buildbox("run", recipe, "--config", config(workspace, "a", nginx.url, keys, sign="farm1", push=True))
    key = build_key(workspace, recipe)
    both = config(workspace, "both", nginx.ro, keys, trust=("farm1", "farm2"))
    listed = workspace.buildbox("list", recipe, "--config", both, "--remote").stdout
    assert "remote: has it (signed by farm1)" in listed, listed
    offline = workspace.buildbox("list", recipe, "--config", both).stdout
    assert "remote:" not in offline
    second = config(workspace, "second", nginx.url, keys, sign="farm2", trust=("farm1",))
    verified = workspace.buildbox("verify", recipe, "--against-remote", "--config", second)
    assert "is reproducible" in verified.stdout
    assert (nginx.root / "att" / key / "farm2.json").is_file()
    listed = workspace.buildbox("list", recipe, "--config", both, "--remote").stdout
    assert "remote: has it (signed by farm1; reproduced by 1)" in listed, listed
    # A third machine trusting only farm1 does not count farm2's word.
    only = config(workspace, "only", nginx.ro, keys, trust=("farm1",))
    assert "reproduced by" not in workspace.buildbox("list", recipe, "--config", only, "--remote").stdout


def test_unlocked_recipe_takes_after_its_layer_and_source(workspace: Workspace, nginx: Nginx,
                                                          keys: dict[str, str]) -> None:
    recipe = shell_recipe(workspace, "unlocked", f"# {RUN}\nprintf 'unlocked\\n' > $OUT/x")
    workspace.buildbox("run", recipe, "--config", config(workspace, "a", nginx.url, keys, sign="farm1", push=True))
    key = build_key(workspace, recipe)
    assert nginx.ac(key).is_file()
    drop_build(workspace.cache, key)
    result = workspace.buildbox("run", recipe, "--config", config(workspace, "b", nginx.ro, keys))
    said = result.stderr
    assert "build unlocked: from remote cache (signed by farm1)" in said, said
    assert said.index("source:unlocked") < said.index("from remote cache")
    assert said.index("layer:") < said.index("from remote cache")


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory):
    """moto_server on a loopback port: S3 for the tests, as no real S3 server installs here."""
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        pytest.skip("needs moto_server (moto[server], in the test extras)")
    port = free_port()
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    import boto3
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="farm")
    yield endpoint
    process.terminate()
    process.wait(10)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_s3_push_and_take(workspace: Workspace, moto: str, keys: dict[str, str], template: tuple[Path, str],
                          tmp_path: Path) -> None:
    recipe = locked_recipe(workspace, "in-s3", "printf 'from a bucket\\n' > $OUT/x", template)
    a = config(workspace, "a", "s3://farm/nightly", keys, sign="farm1", push=True)
    a.write_text(a.read_text() + f'endpoint = "{moto}"\n')
    built = workspace.buildbox("run", recipe, "--config", a)
    key = build_key(workspace, recipe)
    import boto3
    s3 = boto3.client("s3", endpoint_url=moto)
    assert s3.head_object(Bucket="farm", Key=f"nightly/ac/{key}.json")["ContentLength"] > 0
    b = config(workspace, "b", "s3://farm/nightly", keys)
    b.write_text(b.read_text() + f'endpoint = "{moto}"\n')
    taken = workspace.buildbox("run", recipe, "--config", b, "--cache", tmp_path / "b-cache", "--out", tmp_path / "out")
    assert "build in-s3: from remote cache (signed by farm1)" in taken.stderr, taken.stderr
    assert digest_line(taken) == digest_line(built)
    # Write-once on S3 is the server's: a second put of a record is refused (412), not overwritten.
    from buildbox.config import Remote
    from buildbox.remote.transport import connect
    bucket = connect(Remote("s3://farm/nightly", moto))
    before = bucket.get(f"ac/{key}.json", 1 << 20)
    assert bucket.put(f"ac/{key}.json", b"{}", once=True) is False
    assert bucket.get(f"ac/{key}.json", 1 << 20) == before


def test_a_signed_record_never_writes_outside_its_entry(tmp_path: Path, keys: dict[str, str]) -> None:
    """Even a trusted signer's record is checked: no path out of the entry, its manifest its own."""
    from buildbox.keys import key as key_of
    from buildbox.remote.entry import Refused, check_record
    from buildbox.signing import parse_public
    farm1 = load_signing_key(Path(keys["dir"]) / "farm1.key", "test")
    trusted = {"farm1": parse_public(keys["farm1"])}
    document = {"format": 4, "kind": "build", "inputs": {"script": "true"}}
    key = key_of(document)
    fact = {"sha256": "a" * 64, "size": 1, "mode": 0o644}

    def record(files: dict, manifest_key: str = key) -> bytes:
        manifest = {"recipe": "tool", "key": manifest_key, "build_key": manifest_key,
                    "artifacts": {rel.removeprefix("files/"): {"sha256": f["sha256"], "size": f["size"]}
                                  for rel, f in files.items() if rel.startswith("files/")}}
        return signed({"document": document, "manifest": manifest, "files": files}, farm1)

    assert check_record(record({"files/tool": fact}), key, document, trusted).digests() == {"tool": "a" * 64}
    for bad in ("files/../../../etc/cron.d/x", "/etc/passwd", "files/./x", "manifest.json", "files//x", "",
                "files/\udcff", "files/a\nb"):
        with pytest.raises(Refused, match="file list is malformed"):
            check_record(record({bad: fact}), key, document, trusted)
    with pytest.raises(Refused, match="another build's"):
        check_record(record({"files/tool": fact}, manifest_key="b" * 64), key, document, trusted)
    with pytest.raises(Refused, match="not this machine's"):
        other = {**document, "inputs": {"script": "false"}}
        check_record(record({"files/tool": fact}), key, other, trusted)


def test_a_pinned_fetched_tree_comes_from_the_remote_when_the_cache_lacks_it(
        workspace: Workspace, nginx: Nginx, keys: dict[str, str]) -> None:
    fetch = "[fetch]\nscript = '''\necho 'dependency {run}' > $FETCH/dep\n'''\n"
    recipe = shell_recipe(workspace, "fetcher", f"# {RUN}\ncp $FETCH/dep $OUT/dep")
    text = recipe.read_text()
    recipe.write_text(text + fetch.format(run=RUN))
    first = workspace.buildbox("run", recipe, "--config", config(workspace, "a", nginx.url, keys, sign="farm1", push=True))
    digest = next(line.split()[-1] for line in first.stderr.splitlines() if line.startswith("fetch fetcher: sha256 "))
    assert (nginx.root / "fetch" / f"{digest}.tar").is_file()
    # Pinned now, by a fetch that could not run again: the tree must come from the remote.
    recipe.write_text(text + f"[fetch]\nscript = 'exit 1'\nsha256 = \"{digest}\"\n")
    Store(workspace.cache).remove_entry("fetches", digest)
    result = workspace.buildbox("run", recipe, "--config", config(workspace, "b", nginx.ro, keys))
    assert f"fetch fetcher: from remote cache (sha256 {digest[:12]}" in result.stderr, result.stderr
    assert (workspace.root / "out/fetcher/dep").read_text() == f"dependency {RUN}\n"
    # A tarball that is not the pinned tree is refused, and the fetch runs here (and fails: exit 1).
    Store(workspace.cache).remove_entry("fetches", digest)
    tar = nginx.root / "fetch" / f"{digest}.tar"
    subprocess.run(["tar", "-C", workspace.root, "-cf", tar, "recipes"], check=True)
    refused = workspace.buildbox("run", recipe, "--config", config(workspace, "b", nginx.ro, keys), check=1)
    assert f"remote cache's fetched tree for fetcher (sha256 {digest[:12]}) refused" in refused.stderr
    assert "Traceback" not in refused.stderr
