"""What a box is made of, as a plan that can be printed: one frozen object per operation.

mkosi's habit: every mount and namespace of a sandbox is an object that can describe itself, so
`--debug` prints the whole plan before a command runs and a failed box keeps it (plan.txt).
box.py records the host-side operations as it does them (the overlay, its disk, binds, the
per-box overlays of shared folders) and adds the in-namespace half for each command; that half
is what enter.py carries out, handed over as JSON (Plan.to_enter): enter.py runs with
`python3 -I` and imports nothing of buildbox, so the JSON is its whole interface.

A service's runtime root (buildbox exec) is a plan of the same operations: RuntimeRoot in place
of the overlay and PivotRoot, Capabilities in place of DropCapabilities.

A mode of running boxes is a value here, not a new code path: who maps the ids and who mounts
is IdMap's `mapper` and `mounter` (host root today; the rootless mode would name itself there).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from buildbox.constants import CAPABILITIES
from buildbox.keys import SANDBOX_VERSION

# What running a host binary needs of the host, bound read-only into a host view (verify's
# commands, mmdebstrap); the rest of its / is EMPTY: no /run, /var, /home, /root, so no host
# unix socket and no host data.
HOST_VIEW = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
EMPTY = ("run", "var", "home", "root", "proc", "dev", "tmp")
HOST_ROOT = "host root"
LONGEST_SHOWN = 400   # a command line longer than this (or of many lines) is named, not shown


class Op:
    """One operation of a box's plan: it says in one line what it does, and gives enter.py what
    it needs of it (nothing, for what host code does itself)."""

    host_side: ClassVar[bool] = False   # done by box.py on the host, before the command's namespaces

    def describe(self) -> str:
        raise NotImplementedError

    def enter(self) -> dict[str, Any]:
        return {}


# -- the host-side half: what box.py mounts -----------------------------------------------------
@dataclass(frozen=True)
class Overlay(Op):
    """The box's root: an overlay of read-only layers (top first) and a writable upper layer."""
    host_side: ClassVar[bool] = True
    target: Path
    layers: tuple[Path, ...]
    upper: Path
    idmapped: bool

    def describe(self) -> str:
        names = "l0" if len(self.layers) == 1 else f"l0..l{len(self.layers) - 1}"
        mapped = ", layers idmapped onto the box's ids" if self.idmapped else ""
        return (f"overlay {names} (top first): {', '.join(map(str, self.layers))}; upper {self.upper} "
                f"(nosuid,nodev{mapped}) at {self.target}")


@dataclass(frozen=True)
class DiskImage(Op):
    """The box's upper layer on an ext4 image of its own ([limits] disk), loop-mounted."""
    host_side: ClassVar[bool] = True
    image: Path
    size: int
    mount: Path

    def describe(self) -> str:
        return f"disk image {self.image}: {self.size >> 20}M ext4, sparse, loop-mounted at {self.mount} " \
               "(nosuid,nodev), holding the upper layer"


@dataclass(frozen=True)
class LayerImage(Op):
    """A layer kept as a disk image (a failed build's box), loop-mounted read-only."""
    host_side: ClassVar[bool] = True
    image: Path
    mount: Path

    def describe(self) -> str:
        return f"layer image {self.image}: loop-mounted read-only at {self.mount} (nosuid,nodev)"


@dataclass(frozen=True)
class Bind(Op):
    """A host path made visible in the box on purpose."""
    host_side: ClassVar[bool] = True
    host: Path
    box_path: str
    readonly: bool
    idmapped: bool

    def describe(self) -> str:
        how = ", ".join(filter(None, ["ro" if self.readonly else "rw", "nosuid,nodev",
                                      "idmapped" if self.idmapped else ""]))
        return f"bind {self.host} -> {self.box_path} ({how})"


@dataclass(frozen=True)
class SharedOverlay(Op):
    """A shared cache folder writable in the box without the box writing to it (Box.overlay)."""
    host_side: ClassVar[bool] = True
    shared: Path
    box_path: str
    upper: Path

    def describe(self) -> str:
        return (f"overlay of {self.shared} -> {self.box_path} (its lower layer, read-only, idmapped; "
                f"writes stay in the box: upper {self.upper})")


@dataclass(frozen=True)
class NetnsFile(Op):
    """A network namespace of the box's own, held by a file in its folder, carried out by pasta."""
    host_side: ClassVar[bool] = True
    path: Path
    host_ports: tuple[int, ...]

    def describe(self) -> str:
        ports = ",".join(map(str, self.host_ports)) or "none"
        return f"network namespace {self.path}: pasta carries it out (host TCP ports {ports}, no UDP, " \
               "gateway not the host)"


# -- the in-namespace half: what enter.py does --------------------------------------------------
@dataclass(frozen=True)
class Cgroups(Op):
    """The cgroups the command joins before anything of it starts."""
    procs: tuple[str, ...]

    def describe(self) -> str:
        return "cgroups: " + ", ".join(str(Path(p).parent) for p in self.procs)

    def enter(self) -> dict[str, Any]:
        return {"cgroups": list(self.procs)}


@dataclass(frozen=True)
class Namespaces(Op):
    """The namespaces the command gets of its own; made by enter.py itself, or by unshare(1)."""
    names: tuple[str, ...]
    by: str = "enter.py"

    def describe(self) -> str:
        return f"namespaces: {', '.join(self.names)} (made by {self.by})"


@dataclass(frozen=True)
class IdMap(Op):
    """The box's ids: box ids box..box+count-1 are host ids host..; who writes the map and who
    mounts the layers (a rootless mode is another mapper and mounter, not another path)."""
    host: int
    count: int
    box: int = 0
    mapper: str = HOST_ROOT
    mounter: str = HOST_ROOT

    def line(self) -> str:
        return f"{self.box} {self.host} {self.count}\n"

    def describe(self) -> str:
        return (f"ids: uid and gid map {self.line().strip()} (box id, host id, count), mapped by {self.mapper}; "
                f"mounts made by {self.mounter}")

    def enter(self) -> dict[str, Any]:
        return {"ids": self.line()}


@dataclass(frozen=True)
class Network(Op):
    """The command's network: "none" (a namespace of its own, loopback up), "host" (the host's),
    or "pasta" (the box's namespace in NetnsFile, outbound only but for host_ports)."""
    mode: str
    netns: Path | None = None
    host_ports: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.mode == "pasta":
            ports = ",".join(map(str, self.host_ports)) or "none"
            return f"network: pasta, outbound (joins {self.netns}; host TCP ports {ports})"
        return {"none": "network: none (a namespace of its own, loopback up)",
                "host": "network: the host's"}[self.mode]

    def enter(self) -> dict[str, Any]:
        return {"network": self.mode == "host", "netns": str(self.netns) if self.netns else None}


@dataclass(frozen=True)
class HostView(Op):
    """A view of the host as the command's / (run_on_host, run_helper): HOST_VIEW read-only, EMPTY
    directories, `writable` bound at `at` (for a helper, idmapped onto the box's ids)."""
    writable: Path
    at: str
    idmapped: bool = False

    def describe(self) -> str:
        how = "rw, idmapped" if self.idmapped else "rw"
        return (f"host view: tmpfs / (read-only) with /{', /'.join(HOST_VIEW)} bound read-only, "
                f"/{', /'.join(EMPTY)} empty, a tmpfs /tmp; bind {self.writable} -> {self.at} ({how}); "
                "pivot_root into it, the host's root detached")

    def enter(self) -> dict[str, Any]:
        return {"root": "/", "host_view": {"writable": str(self.writable), "at": self.at,
                                           "dirs": list(HOST_VIEW), "empty": list(EMPTY)}}


@dataclass(frozen=True)
class RuntimeRoot(Op):
    """A service's runtime root as the command's / (buildbox exec): bound read-only, a tmpfs /tmp,
    its state directories bound writable; entered by pivot_root, the host's root detached."""
    root: Path
    state: tuple[tuple[Path, str], ...] = ()

    def describe(self) -> str:
        binds = "".join(f"; bind {host} -> {at} (rw, nosuid,nodev)" for host, at in self.state)
        return f"runtime root {self.root} (read-only, nosuid,nodev), tmpfs /tmp{binds}; pivot_root into it, " \
               "the host's root detached"

    def enter(self) -> dict[str, Any]:
        return {"root": str(self.root), "runtime": {"root": str(self.root),
                                                    "state": [[str(host), at] for host, at in self.state]}}


@dataclass(frozen=True)
class Proc(Op):
    """A /proc of the command's own PID namespace (enter.py mounts it nosuid,nodev,noexec)."""
    at: str = "/proc"

    def describe(self) -> str:
        return f"proc at {self.at} (its PID namespace's; nosuid,nodev,noexec)"


@dataclass(frozen=True)
class Devices(Op):
    """A tmpfs /dev of the box's own holding only these host nodes (enter.py's make_dev), a
    /dev/shm tmpfs, and with ptys a devpts of its own."""
    nodes: tuple[str, ...]
    ptys: bool = True

    def describe(self) -> str:
        ptys = ", a devpts of its own" if self.ptys else ", no ptys"
        return f"tmpfs /dev (1m, nosuid,noexec) with {', '.join(self.nodes)} bound from the host; " \
               f"tmpfs /dev/shm (64m){ptys}"

    def enter(self) -> dict[str, Any]:
        return {"devices": list(self.nodes)}


@dataclass(frozen=True)
class Hostname(Op):
    name: str

    def describe(self) -> str:
        return f"hostname {self.name} (a UTS namespace of its own)"

    def enter(self) -> dict[str, Any]:
        return {"hostname": self.name}


@dataclass(frozen=True)
class PivotRoot(Op):
    """The box's root as /, entered by pivot_root, the host's root detached."""
    root: Path

    def describe(self) -> str:
        return f"pivot_root into {self.root}, the host's root detached"

    def enter(self) -> dict[str, Any]:
        return {"root": str(self.root)}


@dataclass(frozen=True)
class Rlimits(Op):
    limits: Mapping[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        shown = ", ".join(f"{name}={value}" for name, value in sorted(self.limits.items())) or "none"
        return f"rlimits: {shown}; no core files"

    def enter(self) -> dict[str, Any]:
        return {"limits": dict(self.limits)}


@dataclass(frozen=True)
class User(Op):
    """The user and groups the command runs as (box ids; name as the box's /etc/passwd has it)."""
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str | None = None

    def describe(self) -> str:
        named = f" ({self.name})" if self.name else ""
        return f"user {self.uid}:{self.gid}{named}, groups {','.join(map(str, self.groups))}"

    def enter(self) -> dict[str, Any]:
        return {"user": [self.uid, self.gid], "groups": list(self.groups)}


@dataclass(frozen=True)
class DropCapabilities(Op):
    def describe(self) -> str:
        return "capabilities: all dropped (bounding set emptied)"

    def enter(self) -> dict[str, Any]:
        return {"drop_capabilities": True}


@dataclass(frozen=True)
class Capabilities(Op):
    """The only capabilities a service keeps ([install] capabilities): its bounding set holds
    these alone, and they are ambient, so that the program it runs as its user has them."""
    names: tuple[str, ...]

    def describe(self) -> str:
        return f"capabilities: only {', '.join(self.names)} (bounding and ambient)" if self.names else \
            "capabilities: all dropped (bounding set emptied)"

    def enter(self) -> dict[str, Any]:
        return {"drop_capabilities": True, "capabilities": [CAPABILITIES.index(name) for name in self.names]}


@dataclass(frozen=True)
class NoNewPrivs(Op):
    def describe(self) -> str:
        return "no_new_privs (setuid files grant nothing)"

    def enter(self) -> dict[str, Any]:
        return {"no_new_privs": True}


@dataclass(frozen=True)
class Seccomp(Op):
    """enter.py's seccomp filter; its version is the sandbox's, part of every build's key."""
    version: int = SANDBOX_VERSION

    def describe(self) -> str:
        return f"seccomp filter of sandbox version {self.version} (libseccomp)"

    def enter(self) -> dict[str, Any]:
        return {"seccomp": self.version}


@dataclass(frozen=True)
class Command(Op):
    """What runs, where, and the names of its environment (never their values: secrets)."""
    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str] = field(repr=False)

    def shown(self) -> str:
        """The command line as a user would type it, or its program's name when too long to show."""
        line = shlex.join(self.argv)
        return line if "\n" not in line and len(line) < LONGEST_SHOWN else f"{shlex.quote(self.argv[0])} …"

    def describe(self) -> str:
        return f"run {self.shown()} in {self.cwd}, env {' '.join(sorted(self.env)) or '(empty)'}"

    def enter(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "cwd": self.cwd, "env": dict(self.env)}


@dataclass(frozen=True)
class Plan:
    """A box's operations in the order they are done: host-side ones first."""
    ops: tuple[Op, ...]

    def __add__(self, more: Sequence[Op]) -> Plan:
        return Plan((*self.ops, *more))

    def describe(self) -> list[str]:
        """One line per operation; no environment value."""
        return [op.describe() for op in self.ops]

    def text(self, label: str) -> str:
        """The plan as plan.txt holds it: a line per operation, each naming the box."""
        return "".join(f"box {label}: {line}\n" for line in self.describe())

    def to_enter(self) -> dict[str, Any]:
        """The JSON document enter.py reads: what its in-namespace operations need, with the
        defaults of a command that stays box root (no user, no drop, the host's view unset)."""
        doc: dict[str, Any] = {"user": None, "groups": [], "drop_capabilities": False, "no_new_privs": False,
                               "seccomp": None, "limits": {}, "cgroups": [], "netns": None}
        for op in self.ops:
            if not op.host_side:
                doc.update(op.enter())
        return doc
