"""Enter a box: this process (host root) joins the box's cgroup and network namespace, then
forks a child that unshares user, mount, UTS, IPC, PID (and network) namespaces and waits for
this one to map its ids onto the cache's range (uid_map, gid_map). The child becomes box root and
forks the box's first process, which mounts the box's own /proc and /dev, names the host, brings
up loopback, pivots into the box's root and detaches the host's (so the box's mount table holds
only what the box was given and pins no host mount), and runs the command as its child: with
limits, and for the build user without any way back to root. Box root holds capabilities over
its own namespaces only. When the command ends, the first process exits, and the kernel kills
everything left in the box.

A host view (verify's commands on the host) is run as the first process of namespaces that
unshare(1) made, and keeps the host's root, read-only.

A runtime root (buildbox exec, an install's check) is entered without a user namespace: the
service runs as its own host uid on the host's network, in mount, PID and IPC namespaces of its
own, the root read-only with its state bound in, keeping only the capabilities its plan lists
(bounding and ambient).

Run by path with the host's python3 (it imports nothing of buildbox; libseccomp through
pyseccomp), with the path of its plan: a JSON file only root can read, removed once read, made
by buildbox/sandbox.py (Plan.to_enter) from the same plan `--debug` prints. Order of the
privilege drop as in OpenBSD's chroot(8): chroot, chdir, setgroups, setgid, setuid; then
no_new_privs, so setuid binaries in the box grant nothing.
"""

import ctypes
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import struct
import sys

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217, "i686": 217,
                  "armv7l": 218}
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_PDEATHSIG, PR_SET_KEEPCAPS = 38, 24, 1, 8
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, LINUX_CAPABILITY_VERSION_3 = 47, 2, 0x20080522
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP, IFF_RUNNING = 0x8913, 0x8914, 0x1, 0x40
LIMITS = {"address-space": resource.RLIMIT_AS, "processes": resource.RLIMIT_NPROC, "files": resource.RLIMIT_NOFILE,
          "cpu": resource.RLIMIT_CPU, "file-size": resource.RLIMIT_FSIZE}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}

# Syscalls a build never needs, refused with EPERM (the spirit of pledge(2)): mounting and
# namespaces of filesystems, modules, kexec and reboot, the kernel keyring, bpf and perf, clocks,
# swap, raw I/O ports, file handles that reach past a chroot, io_uring (which does I/O past this
# filter). By name: libseccomp knows each architecture's numbers (and skips what one lacks).
DENIED = (
    "umount2", "mount", "pivot_root", "swapon", "swapoff", "reboot", "sethostname", "setdomainname",
    "iopl", "ioperm", "init_module", "delete_module", "finit_module", "kexec_load", "kexec_file_load",
    "add_key", "request_key", "keyctl", "bpf", "perf_event_open", "acct", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "name_to_handle_at", "open_by_handle_at", "userfaultfd", "quotactl",
    "lookup_dcookie", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)
AF_VSOCK = 40                      # sockets to the host's hypervisor or VMs
TIOCSTI, TIOCLINUX = 0x5412, 0x541C   # push keystrokes into a terminal; the console's own ioctls
# The kernel reads these arguments as 32-bit ints, seccomp compares all 64 bits: compare the low
# 32 only, or setting bit 32 walks past an equality rule.
LOW_32 = 0xFFFFFFFF

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_IDMAP = 0x1, 0x2, 0x4, 0x100000
SYS_OPEN_TREE, SYS_MOVE_MOUNT, OPEN_TREE_CLONE, AT_EMPTY_PATH, MOVE_MOUNT_F_EMPTY_PATH = 428, 429, 0x1, 0x1000, 0x4


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def load_seccomp():
    """libseccomp, loaded before the chroot: the box has no copy of it."""
    try:
        import pyseccomp
    except Exception as err:   # the module missing, or libseccomp2 missing under it
        fail(f"seccomp: cannot load libseccomp ({err}); apt-get install libseccomp2 and pip install pyseccomp")
    return pyseccomp


def seccomp_filter(seccomp):
    """Install the deny list: this architecture's syscalls; another ABI (x32, i386) is refused whole."""
    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    rules.set_attr(seccomp.Attr.ACT_BADARCH, deny)
    for name in DENIED:
        rules.add_rule(deny, name)
    rules.add_rule(deny, "socket", seccomp.Arg(0, seccomp.MASKED_EQ, LOW_32, AF_VSOCK))
    rules.add_rule(deny, "socketpair", seccomp.Arg(0, seccomp.MASKED_EQ, LOW_32, AF_VSOCK))
    # No user namespace of its own: in one the build user would be root again, with mount and
    # the rest of the deny list's reach over what it made (clone3's flags are out of seccomp's
    # sight: it is refused as missing, and libc falls back to clone).
    for call in ("unshare", "clone"):
        rules.add_rule(deny, call, seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for request in (TIOCSTI, TIOCLINUX):
        rules.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, LOW_32, request))
    try:
        rules.load()
    except OSError as err:
        fail(f"seccomp: {err}")


def fail(message):
    sys.stderr.write(f"buildbox: entering the box: {message}\n")
    os._exit(125)


def mount(source, target, fstype, flags, data=""):
    if os.path.islink(target) or not os.path.exists(target):
        fail(f"{target} is missing or a symlink; refusing to mount there")
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                  data.encode() if data else None) != 0:
        fail(f"mount {target}: {os.strerror(ctypes.get_errno())}")


def make_dev(root, devices, ptys=True):
    """A /dev of the box's own: a tmpfs holding the few host nodes a build needs, and nothing else
    (with ptys, a devpts of its own and /dev/ptmx)."""
    dev = os.path.join(root, "dev")
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1m")
    for name in devices:
        node = os.path.join(dev, name)
        open(node, "w").close()
        mount(f"/dev/{name}", node, None, MS_BIND)
    for name, target in DEV_LINKS.items():
        if ptys or name != "ptmx":
            os.symlink(target, os.path.join(dev, name))
    for name in ("pts", "shm"):
        os.mkdir(os.path.join(dev, name))
    mount("tmpfs", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m")
    if ptys:
        mount("devpts", os.path.join(dev, "pts"), "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=620")


def host_view(view, devices):
    """A view of the host for running what the build made with the host's own libraries: a
    tmpfs /, read-only, holding the host's view["dirs"] bound read-only (links such as
    merged-usr's /bin kept as links; sandbox.HOST_VIEW), view["empty"] directories, a /tmp of its
    own with one directory writable (bound at view["at"]), a /proc of this PID namespace and a
    /dev of the given nodes (no ptys); entered by pivot_root, the host's root detached."""
    # Opened before /tmp is covered (for a helper in the box's ids, from where it starts: the
    # cache's folders on the way are closed to box root).
    keep = view.get("fd") or os.open(view["writable"], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    root = "/tmp"
    for name in view["dirs"]:
        host = "/" + name
        place = os.path.join(root, name)
        if os.path.islink(host):
            os.symlink(os.readlink(host), place)
        elif os.path.isdir(host):
            os.mkdir(place)
            mount(host, place, None, MS_BIND | MS_REC)
            set_attr(place, MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0),
                     recursive=True)
    for name in view["empty"]:
        os.mkdir(os.path.join(root, name), 0o755)
    mount("tmpfs", os.path.join(root, "tmp"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=1g")
    at = os.path.join(root, view["at"].lstrip("/"))
    os.mkdir(at)
    mount(f"/proc/self/fd/{keep}", at, None, MS_BIND)
    os.close(keep)
    mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    make_dev(root, devices, ptys=False)
    set_attr(root, MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0), recursive=False)
    os.chdir(root)
    pivot_into()


def set_attr(path, attr, *, recursive):
    if libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE if recursive else 0,
                    ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        fail(f"mount_setattr {path}: " + os.strerror(ctypes.get_errno()))


def loopback_up():
    """A new network namespace has a loopback that is down: bring it up, so tests can listen on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP | IFF_RUNNING))


def drop_to(plan, seccomp):
    """Become the plan's user with no capabilities, and no way to get any back (the plan's
    drop_capabilities, no_new_privs and seccomp, which buildbox gives every command run as a user)."""
    uid, gid = plan["user"]
    keep = plan.get("capabilities") or []
    if plan["drop_capabilities"]:
        last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
        for cap in range(last_cap + 1):
            if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
                fail(f"dropping capability {cap}: {os.strerror(ctypes.get_errno())}")
    if keep and libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:   # across setuid, to be made ambient
        fail("keeping capabilities: " + os.strerror(ctypes.get_errno()))
    os.setgroups(plan["groups"])
    os.setgid(gid)
    os.setuid(uid)
    if keep:
        keep_only(keep)
    if plan["no_new_privs"] and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fail("no_new_privs: " + os.strerror(ctypes.get_errno()))
    if seccomp:
        seccomp_filter(seccomp)


def keep_only(caps):
    """The capabilities caps alone, permitted, effective, inheritable and ambient: what the
    program run next keeps (a service's [install] capabilities)."""
    data = (CapData * 2)()
    for cap in caps:
        word, bit = divmod(cap, 32)
        data[word].effective |= 1 << bit
        data[word].permitted |= 1 << bit
        data[word].inheritable |= 1 << bit
    if libc.capset(ctypes.byref(CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), data) != 0:
        fail("capset: " + os.strerror(ctypes.get_errno()))
    for cap in caps:
        if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
            fail(f"raising ambient capability {cap}: {os.strerror(ctypes.get_errno())}")


def child(plan, seccomp):
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec:
    # give the build the defaults (a pipeline's reader going away, a file past its size limit).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    for name, value in plan["limits"].items():
        # CPU: a hard limit above the soft one, so the build gets SIGXCPU (nameable), not SIGKILL.
        resource.setrlimit(LIMITS[name], (value, value + 1 if name == "cpu" else value))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if plan["user"]:
        drop_to(plan, seccomp)
    os.umask(0o022)
    try:
        os.chdir(plan["cwd"])
        os.execvpe(plan["argv"][0], plan["argv"], plan["env"])
    except OSError as err:
        sys.stderr.write(f"buildbox: cannot run {plan['argv'][0]} in {plan['cwd']}: {err.strerror}\n")
        os._exit(127)


def bind_here(root):
    """The box's root (the current directory) bound onto itself, and entered: a mount this
    namespace made, as pivot_root wants (the overlay, copied from the host's, is locked)."""
    mount(".", ".", None, MS_BIND | MS_REC)
    # By name from the parent: the current directory still is the mount below the new one. The
    # path from / is not walked: its cache folders are host root's alone, closed to box root.
    os.chdir("..")
    os.chdir(os.path.basename(root))


def pivot_into():
    """The current directory as /, the host's root detached: what the box's mountinfo lists is
    its own, and no host mount is held by the box."""
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        fail(f"pivot_root: no syscall number known for {os.uname().machine}")
    # pivot_root(".", "."): the host's root ends up stacked on the box's, and is detached at once.
    if libc.syscall(number, b".", b".") != 0:
        fail("pivot_root: " + os.strerror(ctypes.get_errno()))
    if libc.umount2(b".", MNT_DETACH) != 0:
        fail("detaching the host's root: " + os.strerror(ctypes.get_errno()))
    os.chdir("/")


def wait_for(pid):
    """Reap every child until pid ends; exit as it did."""
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:
            os._exit(125)
        except InterruptedError:
            continue
        if done == pid:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def enter_box(plan, seccomp):
    """Host side: the cgroup and network joined; the child makes its user namespace, this process
    maps its ids (and for a helper, idmaps its tree onto them, in a mount namespace that dies with
    it), then the child makes the rest of its namespaces."""
    if plan.get("netns"):   # pasta's namespace (the host's owns it: box root cannot reconfigure it)
        fd = os.open(plan["netns"], os.O_RDONLY | os.O_CLOEXEC)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            fail("joining the box's network namespace: " + os.strerror(ctypes.get_errno()))
        os.close(fd)
    helper = plan.get("host_view")
    if helper:   # the tree's idmapped mount lives here, and goes with this process, even by SIGKILL
        if libc.unshare(CLONE_NEWNS) != 0:
            fail("unshare: " + os.strerror(ctypes.get_errno()))
        mount("none", "/", None, MS_REC | MS_PRIVATE)
    flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID
    if not plan["network"] and not plan.get("netns"):
        flags |= CLONE_NEWNET
    unshared_r, unshared_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(unshared_r)
        os.close(mapped_w)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if libc.unshare(CLONE_NEWUSER) != 0:
            fail("unshare: " + os.strerror(ctypes.get_errno()))
        os.write(unshared_w, b"u")
        if os.read(mapped_r, 1) != b"m":
            os._exit(125)
        # Still host root's ids: the cache's folders on the way are open to it. unshare then
        # moves the current directory to the same place in the copy (a helper's: its tree).
        os.chdir(helper["writable"] if helper else plan["root"])
        if libc.unshare(flags) != 0:
            fail("unshare: " + os.strerror(ctypes.get_errno()))
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        # Again: a change of credentials clears the parent-death signal.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:   # the host side died before this line: die too
            os._exit(125)
        first = os.fork()   # the first process of the box's PID namespace
        if first == 0:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            in_box(plan, seccomp)
        wait_for(first)
    os.close(unshared_w)
    os.close(mapped_r)
    if os.read(unshared_r, 1) != b"u":
        wait_for(pid)
    try:
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(plan["ids"])
    except OSError as err:
        os.kill(pid, signal.SIGKILL)
        fail(f"mapping the box's ids ({plan['ids'].strip()}): {err.strerror}")
    if helper:
        idmap_onto_itself(helper["writable"], f"/proc/{pid}/ns/user")
    os.write(mapped_w, b"m")
    forward_signals(pid)
    wait_for(pid)


def idmap_onto_itself(path, userns):
    """Mount path over itself, its ids seen through userns's mapping (what the box's user
    namespace sees its layers through), nosuid and nodev."""
    ns = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
    fd = libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | os.O_CLOEXEC)
    if fd < 0:
        fail(f"open_tree {path}: " + os.strerror(ctypes.get_errno()))
    attr = MountAttr(MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, ns)
    if libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        fail(f"idmapping {path}: " + os.strerror(ctypes.get_errno()))
    if libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, path.encode(), MOVE_MOUNT_F_EMPTY_PATH) != 0:
        fail(f"move_mount {path}: " + os.strerror(ctypes.get_errno()))
    os.close(fd)
    os.close(ns)


def in_box(plan, seccomp):
    """The box's first process: its /proc and /dev, its name, its loopback, its root (or for a
    helper, mmdebstrap, the host view with the tree it makes writable)."""
    if plan.get("host_view"):
        plan["host_view"]["fd"] = os.open(".", os.O_PATH | os.O_DIRECTORY)   # the helper's tree
        host_view(plan["host_view"], plan["devices"])
        socket.sethostname(plan["hostname"])
        if not plan["network"]:
            loopback_up()
        run_command(plan, seccomp)
    mount("none", "/", None, MS_REC | MS_PRIVATE)   # nothing of the box's propagates to the host
    bind_here(plan["root"])
    mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    make_dev(".", plan["devices"])
    socket.sethostname(plan["hostname"])
    if not plan["network"] and not plan.get("netns"):
        loopback_up()
    pivot_into()
    run_command(plan, seccomp)


def enter_runtime(plan, seccomp):
    """A service in its runtime root (buildbox exec): mount, PID and IPC namespaces of its own,
    the host's network and ids; the first process of the PID namespace sets up the root."""
    if libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC) != 0:
        fail("unshare: " + os.strerror(ctypes.get_errno()))
    first = os.fork()
    if first == 0:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        in_runtime(plan, seccomp)
    forward_signals(first)
    wait_for(first)


def in_runtime(plan, seccomp):
    """The root bound onto itself and made read-only, a tmpfs /tmp, the state directories bound
    writable (never through a link), /proc and a box's /dev; then pivot_root into it."""
    view = plan["runtime"]
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    os.chdir(view["root"])
    bind_here(view["root"])
    here = os.getcwd()
    mount("tmpfs", "tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m")
    for host, at in view["state"]:
        target = at.lstrip("/")
        if os.path.realpath(target) != os.path.join(here, target):
            fail(f"the state directory {at} leads through a link in the root")
        mount(host, target, None, MS_BIND)
        set_attr(target, MountAttr(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0), recursive=False)
    mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    make_dev(".", plan["devices"], ptys=False)
    set_attr(".", MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0), recursive=False)
    pivot_into()
    run_command(plan, seccomp)


def run_command(plan, seccomp):
    """Fork the command, forward the signals a first process gets, reap orphans until it ends."""
    pid = os.fork()
    if pid == 0:
        child(plan, seccomp)
    forward_signals(pid)
    wait_for(pid)


def forward_signals(pid):
    def forward(signum, frame):
        # As the first process of the namespace, this one gets a signal only if it handles it.
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)


def main():
    with open(sys.argv[1]) as f:   # a file only root can read, not the command line: it holds the env
        plan = json.load(f)
    os.unlink(sys.argv[1])
    for procs in plan.get("cgroups", []):   # the box's cgroup, before anything of the box starts
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        except OSError as err:
            fail(f"joining the cgroup {os.path.dirname(procs)}: {err.strerror}")
    seccomp = load_seccomp() if plan["seccomp"] else None
    if plan.get("runtime"):
        enter_runtime(plan, seccomp)
    if plan.get("ids"):
        enter_box(plan, seccomp)
    host_view(plan["host_view"], plan["devices"])
    socket.sethostname(plan["hostname"])
    loopback_up()
    run_command(plan, seccomp)


if __name__ == "__main__":
    main()
