"""The one way buildbox runs a program: logged, streamed or captured, killed with its group on the way out."""

from __future__ import annotations

import collections
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

from buildbox.errors import BuildFailed, Interrupted
from buildbox.log import printable

TAIL_LINES = 30
LINE_MAX = 64 << 10   # the longest line of a command's output buildbox holds; longer ones are cut
# Shorter secret values are not masked: hiding every "a" of a log hides the log, not a secret.
MASK_SHORTEST = 4
MASK = b"***"

_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()
_interrupted = threading.Event()
_masked: tuple[bytes, ...] = ()   # longest first, so that a secret holding another goes whole
_masked_lock = threading.Lock()


def mask(values: Iterable[str]) -> None:
    """Show these values as *** wherever buildbox copies a command's output from now on: its
    log, the terminal, an error's tail (as CI services mask secrets). Each line of a value on
    its own (output comes by lines), and only those of MASK_SHORTEST characters or more."""
    global _masked
    pieces = {os.fsencode(line.strip()) for value in values for line in value.splitlines()
              if len(line.strip()) >= MASK_SHORTEST}
    with _masked_lock:
        _masked = tuple(sorted(set(_masked) | pieces, key=len, reverse=True))


def _mask(raw: bytes) -> bytes:
    for secret in _masked:
        raw = raw.replace(secret, MASK)
    return raw


# A helper that mounts (mmdebstrap) or may leave processes behind runs in a mount and PID
# namespace of its own, killed with buildbox even by SIGKILL: PDEATHSIG kills unshare when
# buildbox dies, --kill-child then kills the namespace's first process and with it every other,
# and the mount namespace takes every mount made in it along. (PDEATHSIG follows the thread that
# started the child: the thread that calls run() waits for it, so it lives as long as it does.)
CONTAINED = ["setpriv", "--pdeathsig", "KILL", "unshare", "--mount", "--pid", "--fork", "--kill-child",
             "--propagation", "private", "--"]


def run(argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None,
        cwd: Path | None = None, log: Path | None = None, stream: bool = False,
        capture: bool = False, cleanup: bool = False, timeout: float | None = None,
        silence: float | None = None, interactive: bool = False, contained: bool = False,
        log_limit: int | None = None, timeout_key: str = "[limits] timeout", ok: Sequence[int] = (0,),
        rerun: str | None = None, show_command: bool = True) -> str:
    """Run argv to the end; return its stdout when capture is set; raise BuildFailed with the output's tail
    when it exits with a status not in ok. With contained, in namespaces of its own that die with
    buildbox (CONTAINED). The failure's hint names the command line, or with rerun what a user
    types to run it again; without show_command (a command line that cannot be rerun as it was:
    a box's names a plan file removed once read), neither but for rerun.

    Once interrupted, only cleanup commands (unmounting) still start.
    """
    shown = [str(a) for a in argv]   # what the user can copy and rerun
    argv = [*(CONTAINED if contained else []), *shown]
    if _interrupted.is_set() and not cleanup:
        raise Interrupted(f"interrupted before {what}")
    if interactive:
        return str(_run_on_pty(argv, env, cwd))
    # A session of its own, so that Ctrl-C reaches buildbox alone and buildbox decides how the
    # command's whole process group is stopped (before the mounts under it are undone).
    proc = subprocess.Popen(argv, env=dict(env) if env is not None else None, cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if capture else subprocess.STDOUT,
                            start_new_session=True)
    with _live_lock:
        _live.add(proc)
    watch = _Watchdog(proc, timeout, silence, timeout_key) if timeout or silence else None
    try:
        if capture:
            out, err = proc.communicate()
            text, tail = out.decode(errors="replace"), _mask(err + out).decode(errors="replace")
        else:
            text, tail = "", _pump(proc.stdout, log, stream, watch, log_limit)
            proc.wait()
    except OSError as err:
        _stop(proc)
        if log and not capture and err.filename is None:   # a write that failed (a full disk): the log's
            raise OSError(err.errno, err.strerror, str(log)) from None
        raise
    except BaseException:
        _stop(proc)
        raise
    finally:
        with _live_lock:
            _live.discard(proc)
        if watch:
            watch.stop()
    if watch and watch.reason:
        raise BuildFailed(f"{what} was stopped: {watch.reason}", tail=tail)
    if proc.returncode not in ok and _interrupted.is_set() and not cleanup:
        raise Interrupted(f"interrupted during {what}")
    if proc.returncode not in ok:
        lines = tail.rstrip("\n").splitlines()[-TAIL_LINES:]
        command = shlex.join(shown)
        # A command that carries a recipe's script is too long to show on the error's one line.
        shown_ok = show_command and "\n" not in command and len(command) < 400
        hints = [f"rerun it: {rerun}"] if rerun else [f"command: {command}"] if shown_ok else []
        hints += [f"full log: {log}"] if log else []
        raise BuildFailed(f"{what} failed (exit status {proc.returncode})", hint="; ".join(hints) or None,
                          tail="\n".join(lines))
    return text


class _Watchdog:
    """Kills a command's process group when it runs too long, or prints nothing for too long."""

    def __init__(self, proc: subprocess.Popen, timeout: float | None, silence: float | None,
                 timeout_key: str = "[limits] timeout") -> None:
        self.proc, self.timeout, self.silence, self.timeout_key = proc, timeout, silence, timeout_key
        self.started = self.last_output = time.monotonic()
        self.reason = ""
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def heard(self) -> None:
        self.last_output = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(0.5):
            now = time.monotonic()
            if self.timeout and now - self.started > self.timeout:
                self.reason = f"it ran longer than its wall-clock limit ({self.timeout_key} = {self.timeout:g}s)"
            elif self.silence and now - self.last_output > self.silence:
                self.reason = f"it printed nothing for {self.silence:g}s ([limits] silence)"
            else:
                continue
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return


def _run_on_pty(argv: list[str], env: Mapping[str, str] | None, cwd: Path | None) -> int:
    """Run argv for a person at the terminal, on a pty of its own in a session of its own, with
    buildbox relaying the keys and the screen (as systemd-nspawn and `machinectl shell` do).

    The command never holds the user's terminal: what it pushes into its terminal (TIOCSTI)
    lands in its own pty, read by its own shell, never by the user's shell once it has ended.
    Returns the exit status.
    """
    import pty
    import tty
    pid, master = pty.fork()
    if pid == 0:   # the child: a new session, the pty's slave as its terminal
        try:
            if cwd:
                os.chdir(cwd)
            os.execvpe(argv[0], argv, dict(env) if env is not None else os.environ)
        finally:
            os._exit(127)
    user = sys.stdin.fileno()
    at_terminal = os.isatty(user)

    def resize(*_: object) -> None:
        if at_terminal:
            size = fcntl.ioctl(user, termios.TIOCGWINSZ, bytes(8))
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)
    resize()
    previous = signal.signal(signal.SIGWINCH, resize)
    saved = termios.tcgetattr(user) if at_terminal else None
    try:
        if at_terminal:
            tty.setraw(user)   # every key goes to the box's pty, whose own line discipline acts on it
        _relay(master, user)
    finally:
        if saved is not None:
            termios.tcsetattr(user, termios.TCSAFLUSH, saved)
        signal.signal(signal.SIGWINCH, previous)
        os.close(master)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _relay(master: int, user: int) -> None:
    """Copy the user's keys to the pty and the pty's output to the user's screen until the pty closes."""
    import select
    screen = sys.stdout.fileno()
    inputs = [master, user]
    while True:
        try:
            ready, _, _ = select.select(inputs, [], [])
        except InterruptedError:
            continue
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:   # EIO: every process holding the pty's other end has gone
                return
            if not data:
                return
            os.write(screen, data)
        if user in ready:
            data = os.read(user, 65536)
            if data:
                os.write(master, data)
            else:   # the user's input ended (not a terminal): end the box's input too
                inputs.remove(user)
                os.write(master, bytes([termios.tcgetattr(master)[6][termios.VEOF][0]]))


def _pump(pipe: IO[bytes], log: Path | None, stream: bool, watch: _Watchdog | None = None,
          log_limit: int | None = None) -> str:
    """Copy a command's output to its log and, when streaming, the terminal; keep the last lines.

    What a build prints is untrusted: buildbox holds at most LINE_MAX bytes of it at a time (a
    longer line is cut, and says so), and writes at most log_limit bytes of it to the log. The
    secrets given to mask() are *** in all three.
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    logfile = open(log, "ab") if log else None
    logged = 0
    inside_long_line = False
    try:
        while raw := pipe.readline(LINE_MAX):
            if watch:
                watch.heard()
            if inside_long_line:   # the rest of a line already cut: dropped
                inside_long_line = not raw.endswith(b"\n")
                continue
            cut = len(raw) == LINE_MAX and not raw.endswith(b"\n")
            raw = _mask(raw)
            if cut:
                inside_long_line = True
                raw += f"\n[buildbox: this line was cut at {LINE_MAX} bytes]\n".encode()
            if logfile and log_limit is not None and logged + len(raw) > log_limit:
                logfile.write(f"\n[buildbox: the log was cut here at {logged} bytes ([limits] log = {log_limit}); "
                              "the build went on]\n".encode())
                logfile.close()
                logfile = None
            if logfile:
                logfile.write(raw)
                logged += len(raw)
            if stream:   # the user's terminal gets no control sequences from a build
                sys.__stderr__.buffer.write(printable(raw.decode(errors="replace")).encode())
                sys.__stderr__.flush()
            tail.append(raw.decode(errors="replace"))
    finally:
        if logfile:
            logfile.close()
    return "".join(tail)


def foreground(argv: Sequence[str], *, what: str) -> int:
    """Run argv with buildbox's own terminal or pipes, passing on the signals a supervisor (rc,
    runit, a shell's Ctrl-C) sends buildbox; its exit status (128 + N for signal N)."""
    try:
        # A process group of its own: a terminal's Ctrl-C reaches buildbox alone, which passes it
        # on once (as every signal), not the service three times over.
        proc = subprocess.Popen([str(a) for a in argv], process_group=0)
    except OSError as err:
        raise BuildFailed(f"{what}: cannot start {argv[0]}: {err.strerror}") from None
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

    def forward(signum: int, frame: object) -> None:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass
    old = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        while True:
            try:
                status = proc.wait()
                break
            except InterruptedError:
                continue
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return status if status >= 0 else 128 - status


def _stop(proc: subprocess.Popen) -> None:
    """Stop a command and everything in its process group: TERM, a grace period, then KILL."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_if_interrupted(what: str) -> None:
    """For work done in buildbox itself (no command to stop): give up at the next safe point."""
    if _interrupted.is_set():
        raise Interrupted(f"interrupted during {what}")


def interrupt() -> None:
    """Stop every command still running and start no new one but cleanups (Ctrl-C, SIGTERM)."""
    _interrupted.set()
    _signal_all(signal.SIGTERM)
    # Called from a signal handler: never wait here. Whatever ignores TERM gets KILL a little later.
    timer = threading.Timer(5, _signal_all, args=(signal.SIGKILL,))
    timer.daemon = True
    timer.start()


def _signal_all(sig: int) -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
