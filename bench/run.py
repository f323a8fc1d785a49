"""buildbox benchmarks: every figure is a median over several runs, printed beside a baseline
measured in the same run on the same machine, as a ratio, with the goal it is judged by.

As root, from the repository: `.venv/bin/python bench/run.py` (about ten minutes; it reuses
what ./cache already holds so that only the measured stage is cold). Prints a table and writes
bench/results/latest.json.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from buildbox import log  # noqa: E402
from buildbox.constants import BUILDER  # noqa: E402
from buildbox.box import Box  # noqa: E402
from buildbox.build import check_in_box, verify_on_host  # noqa: E402
from buildbox.lock import load_recipe  # noqa: E402
from buildbox.constants import EPOCH  # noqa: E402
from buildbox.store import Store, tree_size  # noqa: E402
from buildbox.tasks import Graph as Planner  # noqa: E402

WORK = Path(os.environ.get("BUILDBOX_BENCH_DIR", "/var/tmp/buildbox-bench"))
ROWS: list[dict] = []


def median_time(action: Callable[[], object], runs: int, setup: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(runs):
        if setup:
            setup()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def row(name: str, figure: float, unit: str, baseline_name: str, baseline: float | None, goal: str,
        met: bool) -> None:
    ratio = baseline / figure if baseline and figure else None
    ROWS.append({"row": name, "figure": figure, "unit": unit, "baseline": baseline_name,
                 "baseline_value": baseline, "ratio": ratio, "goal": goal, "met": met})
    shown = f"{figure * 1000:.1f} ms" if unit == "s" and figure < 1 else f"{figure:.2f} {unit}"
    base = "" if baseline is None else (f"{baseline * 1000:.1f} ms" if unit == "s" and baseline < 1
                                        else f"{baseline:.2f} {unit}")
    ratio_text = f"{ratio:.1f}x" if ratio else "-"
    print(f"{name:46} {shown:>11}  {baseline_name[:40]:40} {base:>11}  {ratio_text:>8}  "
          f"{goal:28} {'met' if met else 'NOT MET'}", flush=True)


def buildbox(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "buildbox", *args, "--cache", str(cache)], cwd=cwd,
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if result.returncode != 0:
        raise SystemExit(f"bench: buildbox {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def seed(cache: Path) -> None:
    """Hard-link what ./cache already holds (sets, bases, layers, sources, debs), never builds."""
    for kind in ("downloads", "bootstraps", "bases", "layers", "sources", "debs"):
        source = REPO / "cache" / kind
        if source.is_dir() and not (cache / kind).exists():
            subprocess.run(["cp", "-al", str(source), str(cache / kind)], check=True)


def workspace() -> Path:
    ws = WORK / "ws"
    (ws / "recipes").mkdir(parents=True)
    src = ws / "src"
    src.mkdir()
    (src / "README").write_text("bench\n")
    subprocess.run(["tar", "-C", str(src), "-cf", str(ws / "src.tar"), "README"], check=True)
    return ws


def shell_recipe(ws: Path, name: str, script: str, extra: str = "") -> Path:
    import hashlib
    digest = hashlib.sha256((ws / "src.tar").read_bytes()).hexdigest()
    path = ws / "recipes" / f"{name}.toml"
    path.write_text(f"{extra}[source]\nurl = \"{ws / 'src.tar'}\"\nsha256 = \"{digest}\"\n"
                    f"[build]\nscript = '''\n{script}\n'''\n")
    return path


def bench_clone(store: Store, planner: Planner, recipe) -> None:
    layers = planner.stack(recipe, "base")
    # The whole root, as pbuilder's tarball or a cp -a would hold it: the base over its bootstrap.
    whole = WORK / "whole-base"
    shutil.rmtree(whole, ignore_errors=True)
    for layer in reversed(layers):
        subprocess.run(["cp", "-a", f"{layer}/.", str(whole)], check=True)
    tarball = WORK / "base.tar"
    subprocess.run(["tar", "-C", str(whole), "-cf", str(tarball), "."], check=True)
    base = whole

    def clone(layers: list[Path]) -> Callable[[], None]:
        def enter_and_leave() -> None:
            with Box(store, layers, label="bench"):
                pass
        return enter_and_leave

    fresh = WORK / "fresh"
    reset = lambda: shutil.rmtree(fresh, ignore_errors=True)  # noqa: E731
    clone_time = median_time(clone(layers), 15)
    untar = median_time(lambda: (fresh.mkdir(), subprocess.run(["tar", "-C", str(fresh), "-xf", str(tarball)],
                                                                check=True)), 3, reset)
    copy = median_time(lambda: subprocess.run(["cp", "-a", str(base), str(fresh)], check=True), 3, reset)
    reset()
    # A base four times the size: the same tree three more times, as one more layer.
    big = WORK / "big-layer"
    big.mkdir()
    for copy_index in range(3):
        subprocess.run(["cp", "-a", str(base / "usr"), str(big / f"copy{copy_index}")], check=True)
    big_clone = median_time(clone([big, *layers]), 15)
    size, big_size = tree_size(base), tree_size(big) + tree_size(base)
    row("clone: box ready from a cached base", clone_time, "s", "untar the base (pbuilder)", untar,
        "<= 50 ms, >= 50x untar", clone_time <= 0.05 and untar / clone_time >= 50)
    row("clone: the same, base copied instead", clone_time, "s", "cp -a of the base", copy, "faster than cp -a",
        clone_time < copy)
    row(f"clone: base {big_size / size:.1f}x larger", big_clone, "s", "clone of the 1x base", clone_time,
        "flat (ratio near 1)", big_clone <= max(0.05, clone_time * 1.5))
    shutil.rmtree(whole)
    tarball.unlink()


def bench_noop(ws: Path, cache: Path) -> None:
    recipes = [shell_recipe(ws, f"noop{i:02}", f'echo {i} > "$OUT/n"') for i in range(20)]
    buildbox("run", "-q", "-j", "2", *map(str, recipes), cwd=ws, cache=cache)
    floor = median_time(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), 5)
    one = median_time(lambda: buildbox("run", "-q", str(recipes[0]), cwd=ws, cache=cache), 5)
    twenty = median_time(lambda: buildbox("run", "-q", *map(str, recipes), cwd=ws, cache=cache), 5)
    row("cached no-op run, 1 recipe", one, "s", "python3 -c pass", floor, "<= 0.2 s", one <= 0.2)
    row("cached no-op run, 20 recipes", twenty, "s", "python3 -c pass", floor, "<= 0.6 s", twenty <= 0.6)


def go_repo(path: Path) -> None:
    path.mkdir()
    (path / "go.mod").write_text("module example.org/bench\n\ngo 1.19\n")
    (path / "main.go").write_text('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("0") }\n')
    git(path, "init", "-q", "-b", "main")
    git(path, "add", ".")
    git(path, "commit", "-qm", "0")


def git(path: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(path), "-c", "user.name=b", "-c", "user.email=b@b", *args], check=True,
                   capture_output=True)


def bench_rebuild_and_layers(ws: Path, cache: Path) -> None:
    repo = WORK / "gorepo"
    go_repo(repo)
    recipe = ws / "recipes" / "gobench.toml"
    recipe.write_text(textwrap.dedent(f"""\
        [packages]
        install = ["git", "golang-go"]
        [source]
        git = "{repo}"
        ref = "main"
        [build]
        env = {{ CGO_ENABLED = "0" }}
        script = '''
        go build -trimpath -o "$OUT/bench" .
        '''
        """))
    buildbox("run", "-q", str(recipe), cwd=ws, cache=cache)
    counter = iter(range(1, 100))

    def change() -> None:
        n = next(counter)
        (repo / "main.go").write_text(f'package main\n\nimport "fmt"\n\nfunc main() {{ fmt.Println("{n}") }}\n')
        git(repo, "commit", "-qam", str(n))

    rebuild = median_time(lambda: buildbox("run", "-q", str(recipe), cwd=ws, cache=cache), 3, change)
    store = Store(cache)
    loaded = load_recipe(recipe)
    planner = Planner(store, [loaded], ws / "out")
    planner.resolve_ref(loaded)   # the ref's commit now: the source entry the last run made
    layers = planner.stack(loaded, "source")

    def compile_in_prepared_box() -> None:
        with Box(store, layers, label="bench") as box:
            started = time.perf_counter()
            box.run(["go", "build", "-trimpath", "-o", "/tmp/bench", "."], what="go build", user=BUILDER.spec,
                    env={**BUILDER.login_env(), "CGO_ENABLED": "0"}, cwd="/build/src")
            compile_times.append(time.perf_counter() - started)

    compile_times: list[float] = []
    for _ in range(3):
        compile_in_prepared_box()
    compile_only = statistics.median(compile_times)
    row("rebuild after a source change (overhead)", rebuild - compile_only, "s",
        "the compile alone, in a prepared chroot", compile_only, "overhead <= 2 s", rebuild - compile_only <= 2)

    # Package layer reuse: a second recipe with the same packages mounts the layer.
    second = ws / "recipes" / "gobench2.toml"
    second.write_text(recipe.read_text().replace("$OUT/bench", "$OUT/bench2"))
    reuse = median_time(lambda: Planner(store, [load_recipe(second)], ws / "out").make_layer(load_recipe(second)), 5)

    def fresh_install() -> None:
        from buildbox.packages import make_layer
        entry = Path(tempfile.mkdtemp(dir=cache))
        try:
            make_layer(store, planner.stack(loaded, "base"), ("git", "golang-go"), (), entry, WORK / "apt.log")
        finally:
            shutil.rmtree(entry)

    install = median_time(fresh_install, 2)
    row("package layer reuse (same packages)", reuse, "s", "apt-get install into a fresh clone", install,
        ">= 20x faster", install / reuse >= 20)


def bench_cold_base(recipe) -> None:
    from buildbox.recipe import BootstrapSet
    spec = next(s for s in recipe.base.sets if isinstance(s, BootstrapSet))

    cache = WORK / "cold"

    def ours() -> None:
        graph = Planner(Store(cache), [recipe], WORK / "out")
        stages = graph.stages(recipe)
        for index, spec in enumerate(recipe.base.sets):
            graph.make_set(spec, stages[f"set{index + 1}"], None, spec.where, recipe)
        graph.make_base(recipe)

    def raw() -> None:
        # The cheaper of mmdebstrap's outputs: a directory (no tarball written).
        target = WORK / "raw-root"
        subprocess.run(["mmdebstrap", "--mode=root", f"--variant={spec.variant}", "--format=directory", "-q",
                        spec.suite, str(target), f"deb {spec.mirror} {spec.suite} main"], check=True,
                       env=dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH)), capture_output=True)
        shutil.rmtree(target)

    mine = median_time(ours, 2, setup=lambda: shutil.rmtree(cache, ignore_errors=True))
    theirs = median_time(raw, 2)
    shutil.rmtree(WORK / "cold", ignore_errors=True)
    row("cold base from a bootstrap set", mine, "s", "raw mmdebstrap into a directory", theirs, "<= 1.2x raw",
        mine <= 1.2 * theirs)


def bench_parallel(ws: Path, cache: Path) -> None:
    nonce = iter(range(1000))

    def recipes() -> list[str]:
        n = next(nonce)
        return [str(shell_recipe(ws, f"par{i}", f"# run {n}, recipe {i}\ni=0\nwhile [ $i -lt 1200000 ]; do i=$((i+1)); done\n"
                                 'echo $i > "$OUT/i"')) for i in range(4)]

    serial = median_time(lambda: buildbox("run", "-q", "-j", "1", *recipes(), cwd=ws, cache=cache), 2)
    parallel = median_time(lambda: buildbox("run", "-q", "-j", "2", *recipes(), cwd=ws, cache=cache), 2)
    row("-j 2 on 4 independent small recipes", parallel, "s", "-j 1", serial, ">= 1.6x throughput",
        serial / parallel >= 1.6)


def bench_verify(store: Store, planner: Planner, recipe) -> None:
    binary = REPO / "out" / "caddy" / "caddy"
    files = WORK / "verify"
    files.mkdir()
    if binary.is_file():
        shutil.copy(binary, files / "big")
    else:   # no caddy here: a 40 MB ELF made from the host's ls
        shutil.copy("/bin/ls", files / "big")
        with open(files / "big", "ab") as f:
            f.write(b"\0" * (40 << 20))
    elf_time = median_time(lambda: verify_on_host(recipe, files), 5)
    layers = planner.stack(recipe, "layer")
    with Box(store, layers, label="bench") as box:
        def put(root: Path) -> None:   # as the box's root: the box's tree holds box ids
            (root / "build" / "out").mkdir(parents=True, exist_ok=True)
            shutil.copy(files / "big", root / "build" / "out" / "big")
        files.chmod(0o755)
        box.as_root(put)
        inside = box.path("/build/out/big")
        ldd_time = median_time(lambda: check_in_box(box, {"big": inside}), 5)
    size = (files / "big").stat().st_size >> 20
    row(f"verify a {size} MB binary (pyelftools + ldd)", elf_time + ldd_time, "s", "-", None, "<= 0.2 s",
        elf_time + ldd_time <= 0.2)


def locked_caddy(ws: Path, cache: Path) -> Path:
    """recipes/caddy.toml copied into the workspace and locked there (its lock pins everything)."""
    recipe = ws / "recipes" / "caddy.toml"
    shutil.copy(REPO / "recipes" / "caddy.toml", recipe)
    buildbox("lock", str(recipe), cwd=ws, cache=cache)
    return recipe


def bench_caddy_memory(cache: Path, recipe: Path) -> float:
    """Peak RSS of the buildbox process itself while it builds caddy (its children not counted);
    returns how long the build took, from cached layers."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "buildbox", "run", "-q", str(recipe), "--cache", str(cache),
                             "--out", str(WORK / "out")], cwd=recipe.parent.parent, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    peak = 0

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            try:
                for line in open(f"/proc/{proc.pid}/status"):
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"bench: caddy build failed:\n{err[-3000:]}")
    row("peak RSS of buildbox during a caddy build", peak / (1 << 20), "MB", "-", None, "<= 150 MB",
        peak <= 150 << 20)
    return time.perf_counter() - started


def bench_remote(ws: Path, cache: Path, recipe: Path, rebuild: float) -> None:
    """Locked caddy taken from a loopback nginx into an empty cache, against its build from cached
    layers (same run); and 20 build keys the remote lacks, looked up in one batch."""
    sys.path.insert(0, str(REPO / "tests"))
    from servers import DAV_MODULE, Nginx
    if not DAV_MODULE.exists():
        print("bench: no nginx dav module (README's first command installs it): remote rows skipped")
        return
    from buildbox import signing
    from buildbox.config import Remote
    from buildbox.remote import RemoteCache, Wanted
    server = Nginx(WORK / "nginx")
    try:
        secret, public = signing.generate("bench", WORK / "keys")
        (ws / "push.toml").write_text(f'[remote]\nurl = "{server.url}"\nsigning-key = "{secret}"\n')
        (ws / "take.toml").write_text(f'[remote]\nurl = "{server.ro}"\ntrusted-keys = ["{public.read_text().strip()}"]\n')
        buildbox("push", str(recipe), "--config", str(ws / "push.toml"), cwd=ws, cache=cache)
        empty = WORK / "empty-cache"

        def take() -> None:
            result = buildbox("run", "-q", str(recipe), "--config", str(ws / "take.toml"), "--out", str(WORK / "out-b"),
                              cwd=ws, cache=empty)
            assert "from remote cache" in result.stderr, result.stderr[-2000:]
        taken = median_time(take, 3, setup=lambda: shutil.rmtree(empty, ignore_errors=True))
        row("locked caddy from the remote, empty cache", taken, "s", "its build from cached layers", rebuild,
            ">= 100x", rebuild / taken >= 100)
        remote = Remote(server.ro, trusted=(signing.parse_public(public.read_text()),))
        missing = [Wanted(f"r{i}", f"{i:064x}", {}) for i in range(20)]

        def batch() -> None:
            RemoteCache(remote).look_up(missing)

        def one_by_one() -> None:
            cache_ = RemoteCache(remote)
            for wanted in missing:
                cache_.look_up([wanted])
        batched = median_time(batch, 5)
        row("20 recipes the remote lacks, looked up", batched, "s", "the same one at a time",
            median_time(one_by_one, 5), "<= 0.5 s", batched <= 0.5)
    finally:
        server.stop()


def bench_debian(ws: Path, cache: Path) -> None:
    """Debian sources in the one-line form: the shared layer of build essentials against a layer
    that installs them again (as every Debian recipe's did before), and the shipped recipes'
    builds with their times and sha256."""
    from buildbox.keys import ESSENTIALS
    from buildbox.packages import make_layer
    store = Store(cache)
    built = {}
    for name in ("tree", "pv", "gron", "fd-find"):
        shutil.copy(REPO / "recipes" / f"{name}.toml", ws / "recipes" / f"{name}.toml")
        started = time.perf_counter()
        buildbox("run", "-q", str(ws / "recipes" / f"{name}.toml"), cwd=ws, cache=cache)
        built[name] = time.perf_counter() - started
        out = ws / "out" / load_recipe(ws / "recipes" / f"{name}.toml").name
        artifacts = json.loads((out / "manifest.json").read_text())["artifacts"]
        print(f"  {name}: first build {built[name]:.0f} s; " + ", ".join(
            f"{rel} {a['sha256'][:12]}" for rel, a in sorted(artifacts.items()) if not rel.startswith("debs/")),
            flush=True)
    pv = load_recipe(ws / "recipes" / "pv.toml")
    planner = Planner(store, [pv], ws / "out")

    def install(lower: list[Path], packages: tuple[str, ...]) -> None:
        entry = Path(tempfile.mkdtemp(dir=cache))
        try:
            make_layer(store, lower, packages, pv.build_deps, entry, WORK / "apt.log")
        finally:
            shutil.rmtree(entry)

    base = planner.stack(pv, "base")
    shared = planner.stack(pv, "essentials")
    before = median_time(lambda: install(base, pv.layer_install), 2)
    now = median_time(lambda: install(shared, pv.layer_install), 2)
    row("second Debian recipe's layer (pv)", now, "s", f"the same over the base ({len(ESSENTIALS)} essentials again)",
        before, "<= 50% of it", now <= before / 2)
    for name in ("gron", "fd-find"):
        row(f"one-line {name} builds and verifies", built[name], "s", "-", None, "builds", True)


def report_disk(cache: Path) -> None:
    builds = list((cache / "builds").glob("[!.]*"))
    layers = list((cache / "layers").glob("[!.]*"))
    print(f"\ndisk: {len(builds)} builds, {sum(map(tree_size, builds)) >> 20} MB of artifacts "
          f"({sum(map(tree_size, builds)) / max(len(builds), 1) / (1 << 20):.1f} MB each); "
          f"{len(layers)} package layers ({sum(map(tree_size, layers)) >> 20} MB) shared by every recipe "
          f"with the same packages; debs {tree_size(cache / 'debs') >> 20} MB")


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench: run it as root (it mounts and chroots, as buildbox does)")
    log.quiet = True
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    cache = WORK / "cache"
    cache.mkdir()
    seed(cache)
    ws = workspace()
    started = time.monotonic()
    probe = load_recipe(shell_recipe(ws, "probe", 'echo > "$OUT/x"'))
    buildbox("run", "-q", str(ws / "recipes" / "probe.toml"), cwd=ws, cache=cache)
    store = Store(cache)
    planner = Planner(store, [probe], ws / "out")
    print(f"{'figure':46} {'value':>11}  {'baseline (same run)':40} {'baseline':>11}  {'ratio':>8}  "
          f"{'goal':28} verdict")
    if sys.argv[1:] == ["debian"]:   # this section alone
        bench_debian(ws, cache)
        return
    bench_clone(store, planner, probe)
    bench_noop(ws, cache)
    bench_rebuild_and_layers(ws, cache)
    bench_parallel(ws, cache)
    bench_verify(store, planner, probe)
    bench_cold_base(probe)
    caddy = locked_caddy(ws, cache)
    rebuild = bench_caddy_memory(cache, caddy)
    bench_remote(ws, cache, caddy, rebuild)
    bench_debian(ws, cache)
    report_disk(cache)
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.json").write_text(json.dumps({"rows": ROWS, "seconds": time.monotonic() - started,
                                                     "machine": " ".join(os.uname())}, indent=2) + "\n")
    print(f"\n{sum(r['met'] for r in ROWS)} of {len(ROWS)} goals met in {time.monotonic() - started:.0f} s; "
          f"results in {results / 'latest.json'}")
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
