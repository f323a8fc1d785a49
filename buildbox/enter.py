"""Enter a box: run as the first process of fresh namespaces (unshare --mount --uts --ipc --pid
[--net] --fork), it mounts the box's own /proc and /dev, names the host, brings up loopback, chroots,
and runs the command as its child: with limits, and for the build user without any way back to
root. When the command ends, this process exits, and the kernel kills everything left in the box.

Run by path with the host's python3 (it imports nothing of buildbox; libseccomp through
pyseccomp), with the path of its plan: a JSON file only root can read, removed once read. Order
of the privilege drop as in OpenBSD's chroot(8): chroot, chdir, setgroups, setgid, setuid; then
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

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND = 0x2, 0x4, 0x8, 0x1000
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
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
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1


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


def make_dev(root, devices):
    """A /dev of the box's own: a tmpfs holding the few host nodes a build needs, and nothing else."""
    dev = os.path.join(root, "dev")
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1m")
    for name in devices:
        node = os.path.join(dev, name)
        open(node, "w").close()
        mount(f"/dev/{name}", node, None, MS_BIND)
    for name, target in DEV_LINKS.items():
        os.symlink(target, os.path.join(dev, name))
    for name in ("pts", "shm"):
        os.mkdir(os.path.join(dev, name))
    mount("tmpfs", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m")
    mount("devpts", os.path.join(dev, "pts"), "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")


def host_view(view):
    """The host's own tree, all of it read-only, with a private /tmp, a /proc of this PID namespace,
    and one directory writable (bound at view["at"]): what runs the build's output on the host sees
    the host's libraries and can change nothing of it."""
    keep = os.open(view["writable"], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)   # before /tmp is covered
    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    if libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        fail("read-only host: " + os.strerror(ctypes.get_errno()))
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=1g")
    os.mkdir(view["at"])
    mount(f"/proc/self/fd/{keep}", view["at"], None, MS_BIND)
    writable = MountAttr(0, MOUNT_ATTR_RDONLY, 0, 0)
    if libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, view["at"].encode(), 0, ctypes.byref(writable),
                    ctypes.sizeof(writable)) != 0:
        fail(f"writable {view['at']}: " + os.strerror(ctypes.get_errno()))
    os.close(keep)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def loopback_up():
    """A new network namespace has a loopback that is down: bring it up, so tests can listen on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP | IFF_RUNNING))


def drop_to(uid, gid, seccomp):
    """Become the build user with no capabilities, and no way to get any back."""
    last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last_cap + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            fail(f"dropping capability {cap}: {os.strerror(ctypes.get_errno())}")
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fail("no_new_privs: " + os.strerror(ctypes.get_errno()))
    seccomp_filter(seccomp)


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
        drop_to(*plan["user"], seccomp)
    os.umask(0o022)
    try:
        os.chdir(plan["cwd"])
        os.execvpe(plan["argv"][0], plan["argv"], plan["env"])
    except OSError as err:
        sys.stderr.write(f"buildbox: cannot run {plan['argv'][0]} in {plan['cwd']}: {err.strerror}\n")
        os._exit(127)


def main():
    with open(sys.argv[1]) as f:   # a file only root can read, not the command line: it holds the env
        plan = json.load(f)
    os.unlink(sys.argv[1])
    root = plan["root"]
    for procs in plan.get("cgroups", []):   # the box's cgroup, before anything of the box starts
        try:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        except OSError as err:
            fail(f"joining the cgroup {os.path.dirname(procs)}: {err.strerror}")
    seccomp = load_seccomp() if plan["user"] else None
    if plan.get("host_view"):
        host_view(plan["host_view"])
    else:
        mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        make_dev(root, plan["devices"])
    socket.sethostname(plan["hostname"])
    if not plan["network"]:
        loopback_up()
    os.chroot(root)
    os.chdir("/")
    pid = os.fork()
    if pid == 0:
        child(plan, seccomp)

    def forward(signum, frame):
        # As the first process of the namespace, this one gets a signal only if it handles it.
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:   # reap every orphan until the command itself ends
        try:
            done, status = os.wait()
        except ChildProcessError:
            os._exit(125)
        except InterruptedError:
            continue
        if done == pid:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
