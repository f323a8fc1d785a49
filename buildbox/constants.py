"""The fixed facts every stage shares: where things are in a box, the build user, the one time.

A leaf: it imports nothing of buildbox, so every module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

BUILD_DIR = "/build"
SRC = f"{BUILD_DIR}/src"        # the source tree the build runs in
OUT = f"{BUILD_DIR}/out"        # $OUT: what the build leaves here is copied out
FETCH = f"{BUILD_DIR}/fetch"    # $FETCH: what a [fetch] script downloads, read-only to the build
# The one fixed time of buildbox: SOURCE_DATE_EPOCH of bootstraps and builds, the artifacts' mtime.
EPOCH = 1700000000


@dataclass(frozen=True)
class BuildUser:
    name: str
    uid: int
    gid: int

    @property
    def home(self) -> str:
        return f"/home/{self.name}"

    @property
    def spec(self) -> str:
        return f"{self.uid}:{self.gid}"

    @property
    def path(self) -> str:
        return f"{self.home}/bin:/usr/local/bin:/usr/bin:/bin"

    def login_env(self) -> dict[str, str]:
        """The environment of a login as this user: what a doas `setenv` rule gives on OpenBSD."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "PATH": self.path,
                "SHELL": "/bin/sh", "LANG": "C.UTF-8", "TZ": "UTC"}


BUILDER = BuildUser("builder", 1000, 1000)

# The one list of what buildbox sets for a recipe with [fetch] (README, "Recipes from upstream"):
# where the common tools keep what they download, all under $FETCH (the fetch and the build) ...
FETCH_ENV = {"FETCH": FETCH, "GOPATH": f"{FETCH}/go", "GOMODCACHE": f"{FETCH}/go/mod",
             "CARGO_HOME": f"{FETCH}/cargo", "npm_config_cache": f"{FETCH}/npm", "PIP_CACHE_DIR": f"{FETCH}/pip",
             "YARN_CACHE_FOLDER": f"{FETCH}/yarn"}
# ... and, for the build, what makes them use only what was fetched (the build has no network
# anyway: these turn a download attempt into a clear error instead of a timeout). GOFLAGS is not
# here: a recipe's is kept, with -mod=mod appended.
OFFLINE_ENV = {"GOPROXY": "off", "CARGO_NET_OFFLINE": "true", "npm_config_offline": "true", "PIP_NO_INDEX": "1"}

# What one build's runtime closure may come to (runtime.py); a remote entry may be that much
# over its artifacts.
RUNTIME_MAX_BYTES = 1 << 30

# The capabilities by number (linux/capability.h), for [install] capabilities and enter.py.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
