"""Enter a box: run as the first process of fresh namespaces (unshare --mount --uts --ipc --pid
[--net] --fork), it mounts the box's own /proc and /dev, names the host, brings up loopback, chroots,
and runs the command as its child: with limits, and for the build user without any way back to
root. When the command ends, this process exits, and the kernel kills everything left in the box.

Run by path with the host's python3 (stdlib only: it imports nothing of buildbox), one JSON
argument. Order of the privilege drop as in OpenBSD's chroot(8): chroot, chdir, setgroups,
setgid, setuid; then no_new_privs, so setuid binaries in the box grant nothing.
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
LIMITS = {"memory": resource.RLIMIT_AS, "processes": resource.RLIMIT_NPROC, "files": resource.RLIMIT_NOFILE,
          "cpu": resource.RLIMIT_CPU, "file-size": resource.RLIMIT_FSIZE}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}

# Syscalls a build never needs, refused with EPERM (the spirit of pledge(2)): mounting and
# namespaces of filesystems, modules, kexec and reboot, the kernel keyring, bpf and perf, clocks,
# swap, raw I/O ports, file handles that reach past a chroot. x86_64 numbers; elsewhere no filter.
AUDIT_ARCH_X86_64 = 0xC000003E
DENIED = {
    "umount2": 166, "mount": 165, "pivot_root": 155, "swapon": 167, "swapoff": 168, "reboot": 169,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "init_module": 175,
    "delete_module": 176, "finit_module": 313, "kexec_load": 246, "kexec_file_load": 320, "add_key": 248,
    "request_key": 249, "keyctl": 250, "bpf": 321, "perf_event_open": 298, "acct": 163,
    "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "userfaultfd": 323, "quotactl": 179,
    "lookup_dcookie": 212, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2

libc = ctypes.CDLL(None, use_errno=True)


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def seccomp_filter():
    """Install the deny list; returns False where it does not apply (not x86_64)."""
    if os.uname().machine != "x86_64":
        return False
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    numbers = sorted(DENIED.values())
    program = [
        SockFilter(BPF_LD_W_ABS, 0, 0, 4),                                  # arch
        SockFilter(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        SockFilter(BPF_RET_K, 0, 0, deny),                                  # another ABI: refused
        SockFilter(BPF_LD_W_ABS, 0, 0, 0),                                  # syscall number
        SockFilter(BPF_JGE_K, len(numbers) + 1, 0, 0x40000000),             # x32 ABI: refused
    ]
    for index, number in enumerate(numbers):
        program.append(SockFilter(BPF_JEQ_K, len(numbers) - index, 0, number))
    program += [SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), SockFilter(BPF_RET_K, 0, 0, deny)]
    filters = (SockFilter * len(program))(*program)
    prog = SockFprog(len(program), filters)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        fail("seccomp: " + os.strerror(ctypes.get_errno()))
    return True


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


def loopback_up():
    """A new network namespace has a loopback that is down: bring it up, so tests can listen on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP | IFF_RUNNING))


def drop_to(uid, gid):
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
    seccomp_filter()


def child(plan):
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec:
    # give the build the defaults (a pipeline's reader going away, a file past its size limit).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    for name, value in plan["limits"].items():
        # CPU: a hard limit above the soft one, so the build gets SIGXCPU (nameable), not SIGKILL.
        resource.setrlimit(LIMITS[name], (value, value + 1 if name == "cpu" else value))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if plan["user"]:
        drop_to(*plan["user"])
    os.umask(0o022)
    try:
        os.chdir(plan["cwd"])
        os.execvpe(plan["argv"][0], plan["argv"], plan["env"])
    except OSError as err:
        sys.stderr.write(f"buildbox: cannot run {plan['argv'][0]} in {plan['cwd']}: {err.strerror}\n")
        os._exit(127)


def main():
    plan = json.loads(sys.argv[1])
    root = plan["root"]
    mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    make_dev(root, plan["devices"])
    socket.sethostname(plan["hostname"])
    if not plan["network"]:
        loopback_up()
    os.chroot(root)
    os.chdir("/")
    pid = os.fork()
    if pid == 0:
        child(plan)

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
