"""`buildbox key generate NAME`: a signing key for the remote cache, in Nix's formats."""

from __future__ import annotations

import argparse
from pathlib import Path


def add(commands, common) -> None:
    key = commands.add_parser("key", help="signing keys for the remote cache")
    actions = key.add_subparsers(dest="action", required=True)
    generate = actions.add_parser("generate", help="write NAME.key (mode 600) and NAME.pub")
    generate.add_argument("name", metavar="NAME")
    generate.add_argument("--dir", type=Path, default=Path("."), help="where to write them (default: here)")
    common(key)


def main(args: argparse.Namespace) -> int:
    from buildbox.signing import generate
    secret, public = generate(args.name, args.dir)
    print(f"key: wrote {secret} (secret: keep it on this machine) and {public}")
    print(f"key: trust it elsewhere with trusted-keys = [\"{public.read_text().strip()}\"]")
    return 0
