"""`buildbox verify`: build twice under varied conditions (or once against a manifest) and compare."""

from __future__ import annotations

import argparse
from pathlib import Path

from buildbox import log
from buildbox.commands.common import load, need_root, open_remote, remote_flags, stop_on_signals
from buildbox.errors import BuildFailed, InputError


def add(commands, common) -> None:
    verify = commands.add_parser("verify", help="build twice under varied conditions and compare")
    verify.add_argument("recipe", type=Path, metavar="RECIPE")
    verify.add_argument("--against", type=Path, metavar="MANIFEST",
                        help="compare one fresh build with this manifest (e.g. the nightly's)")
    verify.add_argument("--against-remote", action="store_true",
                        help="compare one fresh build with the remote cache's entry; with a signing key, "
                             "publish an attestation when they are identical")
    verify.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="put the verified artifacts in DIR/NAME/, as run does, once they are identical "
                             "(by default verify writes none)")
    verify.add_argument("--keep", action="store_true", help="leave the build boxes and both builds for inspection")
    verify.add_argument("-q", "--quiet", action="store_true", help="don't stream the build logs")
    remote_flags(verify)
    common(verify)


def main(args: argparse.Namespace) -> int:
    """Exit 0 only when every artifact is identical."""
    from buildbox.store import Store
    from buildbox.tasks import Graph
    from buildbox.verify import compare

    [recipe] = load([args.recipe])
    if args.against:
        from buildbox.out import is_manifest
        if not args.against.is_file():
            raise InputError(f"--against {args.against}: no such manifest", hint="give the path of a manifest.json")
        if not is_manifest(args.against):
            raise InputError(f"--against {args.against}: not a buildbox manifest",
                             hint="give the manifest.json of a build's out/NAME/")
    if args.against and args.against_remote:
        raise InputError("--against and --against-remote: give one of them")
    remote = open_remote(args, use=args.against_remote)
    if args.against_remote and remote is None:
        raise InputError("--against-remote: no remote cache is configured",
                         hint="give --remote URL, or set [remote] url in buildbox.toml")
    if args.out:
        from buildbox.out import check_dest
        check_dest(args.out / recipe.name)   # said now, not after two builds
    need_root()
    log.quiet = args.quiet
    stop_on_signals()
    graph = Graph(Store(args.cache), [recipe], args.out or Path("out"), keep=args.keep, stream=not args.quiet)
    graph.run(stage="fetch" if recipe.fetch else "source")
    box = graph.build_box(recipe)
    against: Path | dict[str, str] | None = args.against
    if remote:
        wanted = graph.wanted_of(recipe)
        assert wanted is not None
        found = remote.look_up([wanted])[box.key]
        if found is None:
            raise BuildFailed(f"verify --against-remote: the remote cache has no entry for {recipe.name} "
                              f"(build key {box.key[:12]}) this machine takes",
                              hint="push one first (buildbox run --push), or trust its signer")
        against = found.entry.digests()
        log.say(f"verify: comparing with the remote's build ({found.said()})")
    built: dict[str, str] = {}

    def deliver(place: Path) -> None:   # --out: the identical build goes where run would put it
        from buildbox import out
        out.install(place, graph.out_dir(recipe), graph.stamps(recipe))

    differences = compare(graph.ctx, recipe, box, against, built, stream=not args.quiet, keep=args.keep,
                          deliver=deliver if args.out else None)
    if differences:
        for line in differences:
            print(log.printable(f"differs: {line}"))
        print(f"verify: {recipe.name} is not reproducible: {len(differences)} artifact(s) differ")
        return 1
    print(f"verify: {recipe.name} is reproducible: every artifact identical across the builds")
    shown = graph.out_dir(recipe) if args.out else None
    for rel, digest in sorted(built.items()):
        print(f"{digest}  {log.escaped(str(shown / rel) if shown else rel)}")
    if remote and remote.config.signing_key:
        return 0 if remote.attest(recipe.name, box.key, built) else 1
    return 0
