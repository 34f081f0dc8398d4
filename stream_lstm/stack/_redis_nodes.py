"""Per-node plumbing shared by the local Redis Cluster and the Sentinel set-up.

One directory per node (``<run_dir>/<port>/``) holds the ``redis.conf`` written here, the data,
``redis.log``, ``redis.out`` (stdout/stderr) and ``redis.pid``. The process title carries that
config file's path (``proc-title-template``), and the PID file's fingerprint is the same path, so
a PID is only ever taken for ours while the process runs from our directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil
import redis

from stream_lstm.errors import StackError
from stream_lstm.stack import procs
from stream_lstm.stack.redis import ensure_redis_server

# The process title names the config file, which lies in our run directory: see procs.read_pid.
PROC_TITLE = "{title} {listen-addr} {server-mode} {config-file}"
APPENDFSYNC = ("always", "everysec", "no")


def free_ports(n: int, host: str = "127.0.0.1") -> tuple[int, ...]:
    """``n`` distinct ports that are free right now (all held open together, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return tuple(int(s.getsockname()[1]) for s in socks)
    finally:
        for s in socks:
            s.close()


def quote_conf(value: str) -> str:
    """A value for a redis.conf line: double-quoted, with backslash, quote and newlines escaped."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


@dataclass(frozen=True)
class TlsFiles:
    """TLS for local nodes: their certificate and key (served to clients, and presented as the
    client certificate on the replication links, the cluster bus and the sentinels' links) and
    the CA that signed them (what every node and client trusts). With TLS a node serves
    ``tls-port`` only (``port 0``)."""

    cert: Path
    key: Path
    ca: Path
    auth_clients: bool = True  # tls-auth-clients: clients must show a certificate the CA signed

    def conf(self) -> list[str]:
        """The redis.conf lines (certificate files by absolute path)."""
        return [
            f"tls-cert-file {quote_conf(str(Path(self.cert).absolute()))}",
            f"tls-key-file {quote_conf(str(Path(self.key).absolute()))}",
            f"tls-ca-cert-file {quote_conf(str(Path(self.ca).absolute()))}",
            f"tls-auth-clients {'yes' if self.auth_clients else 'no'}",
        ]

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py connection settings for these files."""
        return {
            "ssl": True,
            "ssl_certfile": str(self.cert),
            "ssl_keyfile": str(self.key),
            "ssl_ca_certs": str(self.ca),
            "ssl_cert_reqs": "required",
        }

    def cli_args(self) -> list[str]:
        """``redis-cli`` flags for these files."""
        return ["--tls", "--cacert", str(self.ca), "--cert", str(self.cert), "--key", str(self.key)]

    def url_query(self) -> str:
        """``ssl_ca_certs=…&ssl_certfile=…&ssl_keyfile=…``: the query of a ``rediss://`` URL."""
        return urlencode(
            {"ssl_ca_certs": self.ca, "ssl_certfile": self.cert, "ssl_keyfile": self.key},
            safe="/",
        )

    def record(self) -> dict[str, object]:
        """A JSON-able form (paths, no secrets), read back by :meth:`from_record`."""
        return {
            "cert": str(self.cert),
            "key": str(self.key),
            "ca": str(self.ca),
            "auth_clients": self.auth_clients,
        }

    @classmethod
    def from_record(cls, rec: Any) -> TlsFiles | None:
        if rec is None:
            return None
        return cls(
            cert=Path(rec["cert"]),
            key=Path(rec["key"]),
            ca=Path(rec["ca"]),
            auth_clients=bool(rec.get("auth_clients", True)),
        )


@dataclass(frozen=True)
class NodeStatus:
    """One node as the cluster (or Sentinel set-up) sees it now."""

    address: str  # host:port
    port: int
    pid: int | None  # None: no live process of ours
    role: str  # master | replica | sentinel | down (not reachable) | fail (flagged by the cluster)
    slots: int  # slots served (0 for replicas; a dead master: those not yet taken over)
    master_of: str | None  # for a replica: its master's address
    rss_bytes: int | None
    cluster_ok: bool | None = None  # its own CLUSTER INFO cluster_state:ok (None: not asked)

    @property
    def up(self) -> bool:
        """Reachable and serving its role (and, in a cluster, reporting cluster_state:ok)."""
        return self.role in ("master", "replica", "sentinel") and self.cluster_ok is not False


def parse_info(text: str) -> dict[str, str]:
    """``key:value`` lines of INFO / CLUSTER INFO output."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


class RedisNodes:
    """Per-node plumbing shared by the cluster and the Sentinel set-up: one directory, config
    file, log and PID file per port; start, stop, kill, pause and resume by PID."""

    name = "redis-nodes"
    what = "Redis node"  # in error messages
    flag = "the port settings"  # what changes a busy port, in error messages

    def __init__(
        self,
        run_dir: Path,
        host: str,
        password: str | None,
        ports: Sequence[int],
        tls: TlsFiles | None = None,
    ):
        self._run_dir = run_dir
        self._host = host
        self._password = password
        self._ports = tuple(ports)
        self._tls = tls

    # -- paths ---------------------------------------------------------------------------------
    def node_dir(self, port: int) -> Path:
        return self._run_dir / str(port)

    def conf_file(self, port: int) -> Path:
        return (self.node_dir(port) / "redis.conf").absolute()

    def pid_file(self, port: int) -> Path:
        return self.node_dir(port) / "redis.pid"

    def log_file(self, port: int) -> Path:
        return self.node_dir(port) / "redis.log"

    def out_file(self, port: int) -> Path:
        return self.node_dir(port) / "redis.out"

    def address(self, port: int) -> str:
        return f"{self._host}:{port}"

    # -- processes -----------------------------------------------------------------------------
    def node_pid(self, port: int) -> int | None:
        """The live PID of the node on ``port`` (started by us from our directory), or None."""
        return procs.read_pid(self.pid_file(port))

    def pid(self) -> int | None:
        """The first live node's PID (None: none is running), as Stack.up/down/status expect."""
        for p in self._ports:
            pid = self.node_pid(p)
            if pid is not None:
                return pid
        return None

    def pids(self) -> dict[int, int]:
        """port → PID of every live node."""
        return {p: pid for p in self._ports if (pid := self.node_pid(p)) is not None}

    def _require_pid(self, port: int) -> int:
        if port not in self._ports:
            raise StackError(f"{self.address(port)} is not one of this set-up's nodes")
        pid = self.node_pid(port)
        if pid is None:
            raise StackError(f"{self.what} {self.address(port)} is not running")
        return pid

    def _node_conf(self, port: int) -> list[str]:
        """Config lines for the node on ``port`` (written once per fresh start)."""
        raise NotImplementedError

    def _common_conf(self, port: int) -> list[str]:
        d = self.node_dir(port).absolute()
        listen = [f"port {port}"] if self._tls is None else ["port 0", f"tls-port {port}"]
        return [
            f"bind {self._host}",
            *listen,
            *(self._tls.conf() if self._tls else []),
            f"dir {quote_conf(str(d))}",
            "daemonize no",
            f"logfile {quote_conf(str(d / 'redis.log'))}",
            f"proc-title-template {quote_conf(PROC_TITLE)}",
        ]

    def _write_conf(self, port: int) -> None:
        path = self.conf_file(port)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold a password
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(self._node_conf(port)) + "\n")

    def _spawn(self, port: int, binary: str) -> subprocess.Popen[bytes]:
        conf = self.conf_file(port)
        if not conf.is_file():
            raise StackError(
                f"{self.what} {self.address(port)} has no {conf}: it was never started here; "
                "start the whole set-up first"
            )
        return procs.spawn(
            self._argv(port, binary),
            log_file=self.out_file(port),
            pid_file=self.pid_file(port),
            fingerprint=str(conf),
        )

    def _argv(self, port: int, binary: str) -> list[str]:
        return [binary, str(self.conf_file(port))]

    def _password_for(self, port: int) -> str | None:
        """The password a client needs for the node on ``port``."""
        return self._password

    def _require_free(self, port: int) -> None:
        procs.require_free_port(self._host, port, self.what, self.flag)

    def _wait_pings(self, port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> float:
        return procs.wait_until(
            lambda: self._pings(port),
            alive=lambda: proc.poll() is None,
            timeout_s=timeout_s,
            what=f"redis-server {self.address(port)} (pid {proc.pid})",
            log_hint=f"{self.log_file(port)} and {self.out_file(port)}",
            log_files=[self.log_file(port), self.out_file(port)],
        )

    def _start_nodes(self, ports: Sequence[int], timeout_s: float) -> None:
        """Spawn the given nodes from their config files and wait until each answers PING."""
        binary = ensure_redis_server()
        for p in ports:
            self._require_free(p)
        started: dict[int, subprocess.Popen[bytes]] = {}
        try:
            for p in ports:
                started[p] = self._spawn(p, binary)
            deadline = time.monotonic() + timeout_s
            for p, proc in started.items():
                self._wait_pings(p, proc, max(1.0, deadline - time.monotonic()))
        except BaseException:
            self._stop_pids(list(started.values()), grace_s=5)
            raise

    def start_node(self, port: int) -> None:
        """Restart one stopped or killed node from its own directory (data, config, nodes.conf)
        and wait until it answers PING (not until it has rejoined: see ``wait_ok``)."""
        if port not in self._ports:
            raise StackError(f"{self.address(port)} is not one of this set-up's nodes")
        pid = self.node_pid(port)
        if pid is not None:
            raise StackError(f"{self.what} {self.address(port)} is already running (pid {pid})")
        self._start_nodes([port], timeout_s=60.0)

    def kill_node(self, port: int) -> None:
        """SIGKILL one node by its PID and wait until it is gone."""
        pid = self._require_pid(port)
        procs.stop_pid(pid, grace_s=0, first=signal.SIGKILL)

    def pause_node(self, port: int) -> None:
        """SIGSTOP one node: it keeps its sockets but answers nothing (a hung server)."""
        os.kill(self._require_pid(port), signal.SIGSTOP)

    def resume_node(self, port: int) -> None:
        """SIGCONT a node paused with :meth:`pause_node`."""
        os.kill(self._require_pid(port), signal.SIGCONT)

    def paused(self, port: int) -> bool:
        pid = self.node_pid(port)
        if pid is None:
            return False
        with contextlib.suppress(psutil.Error):
            return psutil.Process(pid).status() == psutil.STATUS_STOPPED
        return False

    @staticmethod
    def _stop_pids(pids: Sequence[int | subprocess.Popen[bytes]], grace_s: float) -> None:
        """SIGCONT (a paused node) and SIGTERM to all at once, then wait for each (SIGKILL after
        ``grace_s``), so stopping N nodes takes about as long as the slowest one."""
        nums = [p if isinstance(p, int) else p.pid for p in pids]
        for pid in nums:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        for pid in nums:
            procs.stop_pid(pid, grace_s)

    def stop(self, grace_s: float = 30.0) -> bool:
        """Stop every node by PID (SIGTERM lets each flush its append-only file; SIGKILL after
        ``grace_s``). False if none was running."""
        live = self.pids()
        self._stop_pids(list(live.values()), grace_s)
        for p in live:
            self.pid_file(p).unlink(missing_ok=True)
        return bool(live)

    # -- clients -------------------------------------------------------------------------------
    def _client_kwargs(self, port: int) -> dict[str, Any]:
        """Connection settings for one node: host, port, password and TLS files when set."""
        kw: dict[str, Any] = {
            "host": self._host,
            "port": port,
            "password": self._password_for(port),
        }
        if self._tls is not None:
            kw.update(self._tls.client_kwargs())
        return kw

    def client(self, port: int) -> redis.Redis:
        """A plain client to one node (password and TLS applied; bytes replies, like
        RedisServer's)."""
        return redis.Redis(**self._client_kwargs(port), socket_timeout=2, socket_connect_timeout=2)

    def _text_client(self, port: int, timeout: float = 1.0) -> redis.Redis:
        return redis.Redis(
            **self._client_kwargs(port),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )

    def _call(self, port: int, fn: Callable[[redis.Redis], Any], timeout: float = 1.0) -> Any:
        """``fn(client)`` on one node, or None when it does not answer (down, paused, loading).
        Never raises for an unreachable node."""
        if self.node_pid(port) is None and not procs.port_accepts(self._host, port, 0.2):
            return None
        client = self._text_client(port, timeout)
        try:
            return fn(client)
        except redis.RedisError:
            return None
        finally:
            client.close()

    def _ask(self, port: int, *command: str, timeout: float = 1.0) -> str | None:
        """A raw text reply from one node (None: it does not answer)."""
        reply = self._call(port, lambda c: c.execute_command(*command), timeout)
        return None if reply is None else str(reply)

    def _pings(self, port: int) -> bool:
        return bool(self._call(port, lambda c: c.ping()))

    def _info(self, port: int, section: str) -> dict[str, Any] | None:
        info = self._call(port, lambda c: c.info(section))
        return info if isinstance(info, dict) else None

    @staticmethod
    def _poll(
        check: Callable[[], list[str]],
        timeout_s: float,
        what: str,
        details: Callable[[], str],
        interval_s: float = 0.05,
    ) -> float:
        """Poll ``check`` (a list of what is still wrong) until it is empty; StackError with the
        last problems and ``details()`` after ``timeout_s``. Returns the seconds waited."""
        start = time.monotonic()
        while True:
            problems = check()
            if not problems:
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                listed = "".join(f"\n  - {p}" for p in problems[:12])
                raise StackError(
                    f"{what} within {timeout_s:.0f} s; still:{listed}\n{details()}".rstrip()
                )
            time.sleep(interval_s)
