"""Redis from Debian's ``redis-server`` package, with append-only persistence on.

Installed with apt-get when missing (root, or password-less sudo). Started in the foreground
(``--daemonize no``) in its own session, so the recorded PID is the server's own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from stream_lstm.errors import StackError
from stream_lstm.stack import procs


def ensure_redis_server() -> str:
    """Path to ``redis-server``; installs Debian's package if it is missing."""
    override = os.environ.get("STREAM_LSTM_REDIS_SERVER")
    if override:
        if not Path(override).is_file():
            raise StackError(f"STREAM_LSTM_REDIS_SERVER={override} is not a file")
        return override
    found = shutil.which("redis-server")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise StackError(
            "redis-server was not found on PATH and apt-get is not available to install it; "
            "install Redis 6+ and put redis-server on PATH (or set STREAM_LSTM_REDIS_SERVER)."
        )
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            raise StackError(
                "redis-server is missing and installing it needs root: "
                "run `sudo apt-get install -y redis-server`."
            )
        prefix = [sudo, "-n"]
    print("Installing redis-server from Debian's packages (once) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        [*prefix, apt, "-qq", "update"],
        [*prefix, apt, "-qq", "install", "-y", "redis-server"],
    ):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if res.returncode != 0:
            raise StackError(
                f"`{' '.join(cmd)}` failed (exit {res.returncode}): {res.stderr.strip()[-500:]}"
            )
    found = shutil.which("redis-server")
    if found is None:
        raise StackError("apt-get installed redis-server but it is not on PATH")
    return found


@dataclass(frozen=True)
class RedisSpec:
    run_dir: Path  # holds the AOF/data dir, redis.log and redis.pid
    host: str = "127.0.0.1"
    port: int = 6379
    password: str | None = field(default=None, repr=False)
    extra_args: tuple[str, ...] = ()
    ready_timeout_s: float = 30.0

    @property
    def url(self) -> str:
        """Connection URL without the password (safe to print)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "redis.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "redis.log"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"


class RedisServer:
    """Start, stop and inspect one local ``redis-server`` described by a :class:`RedisSpec`."""

    name = "redis"

    def __init__(self, spec: RedisSpec) -> None:
        self.spec = spec

    def pid(self) -> int | None:
        return procs.read_pid(self.spec.pid_file)

    def argv(self, binary: str) -> Sequence[str]:
        s = self.spec
        argv = [
            binary,
            "--bind",
            s.host,
            "--port",
            str(s.port),
            "--dir",
            str(s.data_dir),
            "--daemonize",
            "no",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            str(s.log_file),
        ]
        if s.password:
            argv += ["--requirepass", s.password]
        return [*argv, *s.extra_args]

    def client(self) -> redis.Redis:
        s = self.spec
        return redis.Redis(host=s.host, port=s.port, password=s.password, socket_timeout=2)

    def _pings(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.exceptions.BusyLoadingError:
            return False  # replaying the append-only file; not ready yet
        except redis.RedisError:
            return False

    def start(self, *, fresh: bool = True) -> float:
        """Start the server; ``fresh`` empties the data dir first. Returns seconds to ready."""
        s = self.spec
        binary = ensure_redis_server()
        procs.require_free_port(s.host, s.port, "Redis", "--redis-port")
        if fresh:
            shutil.rmtree(s.data_dir, ignore_errors=True)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        proc = procs.spawn(
            self.argv(binary),
            log_file=s.run_dir / "redis.out",
            pid_file=s.pid_file,
            fingerprint=f"{s.host}:{s.port}",
        )
        try:
            return procs.wait_until(
                self._pings,
                alive=lambda: proc.poll() is None,
                timeout_s=s.ready_timeout_s,
                what=f"redis-server (pid {proc.pid})",
                log_hint=f"{s.log_file} and {s.run_dir / 'redis.out'}",
                log_files=[s.log_file, s.run_dir / "redis.out"],
            )
        except Exception:
            procs.stop_pid(proc.pid, grace_s=5)
            raise

    def stop(self, grace_s: float = 30.0) -> bool:
        """Stop by PID (SIGTERM lets Redis flush the append-only file). False if not running."""
        pid = self.pid()
        if pid is None:
            return False
        procs.stop_pid(pid, grace_s)
        self.spec.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        pid = self.pid()
        if pid is not None:
            procs.stop_pid(pid, grace_s=0, first=signal.SIGKILL)

    def ready(self) -> bool:
        return self._pings()
