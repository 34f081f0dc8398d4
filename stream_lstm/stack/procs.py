"""Process plumbing for the local stack: spawn detached, record the PID, stop by PID, RSS.

A PID file holds the PID and a *fingerprint* (a string that must appear in the process's command
line, such as the run directory). A PID whose process is gone, is a zombie, or no longer carries
the fingerprint (the PID was recycled) is treated as not running, so ``down`` never signals a
stranger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

from stream_lstm.errors import StackError


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (a bind with SO_REUSEADDR succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connect to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now (for tests that start their own stack)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listener_pid(port: int) -> int | None:
    """PID of the process listening on ``port``, when the OS lets us see it."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


def require_free_port(host: str, port: int, what: str, flag: str) -> None:
    """Raise a StackError naming the owner of a busy port and the flag that changes it."""
    if port_is_free(host, port):
        return
    owner = listener_pid(port)
    who = ""
    if owner is not None:
        with contextlib.suppress(psutil.Error):
            who = f" by pid {owner} ({' '.join(psutil.Process(owner).cmdline()[:3])})"
    raise StackError(
        f"{what} port {host}:{port} is already in use{who}. "
        f"Stop that process or choose another port with {flag}."
    )


def spawn(
    argv: Sequence[str],
    *,
    log_file: Path,
    pid_file: Path,
    fingerprint: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with output to ``log_file``; record its PID.

    Output goes to a file, never a pipe: an unread pipe eventually blocks the child.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    pid_file.write_text(f"{proc.pid}\n{fingerprint}\n")
    _wait_for_cmdline(proc)
    return proc


def _wait_for_cmdline(proc: subprocess.Popen[bytes], timeout_s: float = 2.0) -> None:
    """Popen returns once the child has begun its exec, but Linux shows the new command line
    in /proc only a moment later (an empty one meanwhile), and :func:`read_pid` identifies
    the process by it: wait for it (or for the child's exit)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if psutil.Process(proc.pid).cmdline():
                return
        except psutil.Error:
            return
        time.sleep(0.001)


def read_pid(pid_file: Path) -> int | None:
    """The live PID recorded in ``pid_file``, or None (no file, dead, zombie, recycled PID)."""
    try:
        lines = pid_file.read_text().splitlines()
        pid, fingerprint = int(lines[0]), lines[1]
    except (OSError, ValueError, IndexError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return None
        if fingerprint not in " ".join(proc.cmdline()):
            return None
    except psutil.Error:
        return None
    return pid


def _reap(pid: int) -> None:
    """Collect the exit status of our own child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(pid: int) -> bool:
    _reap(pid)
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_pid(pid: int, grace_s: float = 30.0, first: signal.Signals = signal.SIGTERM) -> bool:
    """Send ``first`` (SIGTERM), wait up to ``grace_s``, then SIGKILL; wait until it is gone.

    Returns True if SIGKILL was needed.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return False
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while is_alive(pid):
        time.sleep(0.02)
    return True


def rss_bytes(pid: int) -> int | None:
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return None


def wait_until(
    ready: Callable[[], bool],
    *,
    alive: Callable[[], bool],
    timeout_s: float,
    what: str,
    log_hint: str,
    log_files: Sequence[Path] = (),
) -> float:
    """Poll ``ready`` until true; fail early if the process dies. Returns the seconds waited.

    The error names the logs to read and quotes the last lines of each (``log_files``).
    """
    start = time.monotonic()
    while True:
        if ready():
            return time.monotonic() - start
        problem = None
        if not alive():
            problem = f"{what} exited during start-up"
        elif time.monotonic() - start > timeout_s:
            problem = f"{what} did not become ready within {timeout_s:.0f} s"
        if problem:
            last = [line for f in log_files for line in tail(f, 6).splitlines()]
            quoted = "".join(f"\n  | {line}" for line in last)
            raise StackError(f"{problem}; read {log_hint}{quoted}")
        time.sleep(0.1)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
