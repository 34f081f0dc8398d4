"""A local Redis Sentinel set-up from Debian's ``redis-server``: one master, its replica(s)
(``replicaof``) and three sentinels (``redis-server <conf> --sentinel``), each started by PID.

Every process has its own directory ``<run_dir>/<port>/`` with the ``redis.conf`` written here.
The sentinels and, on a failover, the data nodes rewrite their own config files (``CONFIG
REWRITE``), so a node restarted with :meth:`RedisSentinel.start_node` comes back in the role the
sentinels last gave it (a killed ex-master is turned into a replica of the promoted one).

The data nodes take ``password`` (``requirepass`` and ``masterauth``) and the sentinels are
told it with ``sentinel auth-pass``. The sentinels take ``sentinel_password`` of their own
(``requirepass`` in sentinel.conf, which a sentinel also uses to reach the other sentinels);
without it clients reach them without one (the store's ``?sentinel_password=``).

With ``tls`` (:class:`TlsFiles`) every process, data node and sentinel alike, serves TLS only
(``port 0``, ``tls-port``) and talks TLS to the others (``tls-replication yes``), so one
``rediss+sentinel://`` URL with the same certificate files reaches all of them.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_lstm.errors import StackError
from stream_lstm.stack import procs
from stream_lstm.stack._redis_nodes import (
    APPENDFSYNC,
    NodeStatus,
    RedisNodes,
    TlsFiles,
    quote_conf,
)
from stream_lstm.stack.redis import ensure_redis_server

__all__ = ["RedisSentinel", "SentinelSpec"]

SERVICE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class SentinelSpec:
    """Where a local Sentinel set-up lives: ``data_ports`` (the first starts as the master, the
    others as its replicas) and ``sentinel_ports`` (3 sentinels, quorum 2, by default)."""

    run_dir: Path  # one sub-directory per process: <run_dir>/<port>/
    data_ports: tuple[int, ...]  # master first, then replicas
    sentinel_ports: tuple[int, ...]
    host: str = "127.0.0.1"
    service: str = "stream-lstm"  # the name the sentinels monitor the master under
    password: str | None = field(default=None, repr=False)  # data nodes (requirepass, auth-pass)
    quorum: int = 2
    down_after_ms: int = 1000  # sentinel down-after-milliseconds
    failover_timeout_ms: int = 5000  # sentinel failover-timeout
    appendfsync: str = "everysec"
    ready_timeout_s: float = 60.0
    sentinel_password: str | None = field(default=None, repr=False)  # the sentinels' requirepass
    tls: TlsFiles | None = None  # every process serves TLS only and links to the others over TLS

    def __post_init__(self) -> None:
        if len(self.data_ports) < 2:
            raise StackError(
                f"a Sentinel set-up needs a master and at least one replica: give at least two "
                f"data ports (got {list(self.data_ports)})"
            )
        if not self.sentinel_ports:
            raise StackError("a Sentinel set-up needs at least one sentinel port")
        every = tuple(self.data_ports) + tuple(self.sentinel_ports)
        for p in every:
            if not 1 <= p <= 65535:
                raise StackError(f"Sentinel set-up port {p} is outside 1..65535")
        if len(set(every)) != len(every):
            raise StackError(
                f"data and sentinel ports must all differ (data {list(self.data_ports)}, "
                f"sentinels {list(self.sentinel_ports)})"
            )
        if not 1 <= self.quorum <= len(self.sentinel_ports):
            raise StackError(
                f"quorum must be between 1 and the number of sentinels "
                f"({len(self.sentinel_ports)}); got {self.quorum}"
            )
        if not SERVICE_NAME.match(self.service):
            raise StackError(
                f"service name {self.service!r} may only hold letters, digits, '.', '_' and '-'"
            )
        if self.down_after_ms < 100 or self.failover_timeout_ms < 1000:
            raise StackError(
                "down_after_ms must be >= 100 and failover_timeout_ms >= 1000 "
                f"(got {self.down_after_ms}, {self.failover_timeout_ms})"
            )
        if self.appendfsync not in APPENDFSYNC:
            raise StackError(f"appendfsync must be one of {APPENDFSYNC} (got {self.appendfsync!r})")

    @property
    def url(self) -> str:
        """``redis+sentinel://host:s1,host:s2,host:s3/<service>`` (no password; with TLS
        ``rediss+sentinel://…/<service>?ssl_ca_certs=…&ssl_certfile=…&ssl_keyfile=…``)."""
        nodes = ",".join(f"{self.host}:{p}" for p in self.sentinel_ports)
        if self.tls is None:
            return f"redis+sentinel://{nodes}/{self.service}"
        return f"rediss+sentinel://{nodes}/{self.service}?{self.tls.url_query()}"


class RedisSentinel(RedisNodes):
    """Start, stop, inspect and disturb a local Sentinel set-up described by a
    :class:`SentinelSpec`."""

    name = "redis-sentinel"
    what = "Redis Sentinel set-up node"
    flag = "other ports"

    def __init__(self, spec: SentinelSpec) -> None:
        super().__init__(
            spec.run_dir,
            spec.host,
            spec.password,
            (*spec.data_ports, *spec.sentinel_ports),
            spec.tls,
        )
        self.spec = spec
        self._extra_args: dict[int, list[str]] = {}

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def data_ports(self) -> tuple[int, ...]:
        return tuple(self.spec.data_ports)

    @property
    def sentinel_ports(self) -> tuple[int, ...]:
        return tuple(self.spec.sentinel_ports)

    def _password_for(self, port: int) -> str | None:
        if port in self.spec.sentinel_ports:
            return self.spec.sentinel_password
        return self.spec.password

    def _argv(self, port: int, binary: str) -> list[str]:
        argv = [*super()._argv(port, binary), *self._extra_args.get(port, [])]
        return [*argv, "--sentinel"] if port in self.spec.sentinel_ports else argv

    def _node_conf(self, port: int) -> list[str]:
        s = self.spec
        lines = self._common_conf(port)
        if s.tls:
            lines.append("tls-replication yes")  # data nodes: replication; sentinels: every link
        master = s.data_ports[0]
        if port in s.sentinel_ports:
            svc = s.service
            lines += [
                f"sentinel monitor {svc} {s.host} {master} {s.quorum}",
                f"sentinel down-after-milliseconds {svc} {s.down_after_ms}",
                f"sentinel failover-timeout {svc} {s.failover_timeout_ms}",
                f"sentinel parallel-syncs {svc} 1",
            ]
            if s.password:
                lines.append(f"sentinel auth-pass {svc} {quote_conf(s.password)}")
            if s.sentinel_password:
                # clients must authenticate; the sentinels use it with each other too
                lines.append(f"requirepass {quote_conf(s.sentinel_password)}")
            return lines
        lines += [
            "appendonly yes",
            f"appendfsync {s.appendfsync}",
            'save ""',
            "repl-diskless-sync-delay 0",
        ]
        if s.password:
            lines += [
                f"requirepass {quote_conf(s.password)}",
                f"masterauth {quote_conf(s.password)}",
            ]
        if port != master:
            lines.append(f"replicaof {s.host} {master}")
        return lines

    def start(self, *, fresh: bool = True) -> float:
        """Start the data nodes, then the sentinels; wait until every sentinel reports the master,
        knows its replicas and the other sentinels, and every replica's link is up. ``fresh``
        empties each directory first (data and the rewritten configs). Idempotent: when some
        processes already run, only the missing ones are started (0 s when none was missing).
        Returns seconds."""
        s = self.spec
        t0 = time.monotonic()
        live = self.pids()
        if live:
            missing = [p for p in self._ports if p not in live]
            if missing:
                self._start_nodes(missing, s.ready_timeout_s)
            self.wait_ok(s.ready_timeout_s)
            return time.monotonic() - t0 if missing else 0.0
        ensure_redis_server()
        for p in self._ports:
            self._require_free(p)
        for p in self._ports:
            if fresh:
                shutil.rmtree(self.node_dir(p), ignore_errors=True)
            if fresh or not self.conf_file(p).is_file():
                self._write_conf(p)
        # Sentinels learn the replicas from the master's INFO, which they read at once and then
        # every 10 s: start them once the replicas are linked, so the first reading lists them.
        self._start_nodes(self.data_ports, s.ready_timeout_s)
        try:
            self._poll(
                self._link_problems,
                s.ready_timeout_s,
                "the replicas did not link to their master",
                self._describe,
            )
            self._start_nodes(self.sentinel_ports, s.ready_timeout_s)
            self.wait_ok(max(s.ready_timeout_s - (time.monotonic() - t0), 5.0))
        except BaseException:
            self.stop(grace_s=5)
            raise
        return time.monotonic() - t0

    # -- what the sentinels and nodes say ------------------------------------------------------
    def _live(self, ports: tuple[int, ...]) -> list[int]:
        """Of ``ports``, those whose process runs and is not paused."""
        return [p for p in ports if self.node_pid(p) is not None and not self.paused(p)]

    def _sentinel_master(self, port: int) -> dict[str, str] | None:
        reply = self._call(
            port, lambda c: c.execute_command("SENTINEL", "MASTER", self.spec.service)
        )
        if isinstance(reply, dict):  # RESP3
            return {str(k): str(v) for k, v in reply.items()}
        if isinstance(reply, list):  # RESP2: key, value, key, value, ...
            return {str(k): str(v) for k, v in zip(reply[::2], reply[1::2], strict=False)}
        return None

    def _sentinel_answers(self) -> dict[int, str]:
        """sentinel port → the master address it reports, for every live sentinel that answers."""
        out = {}
        for p in self._live(self.sentinel_ports):
            reply = self._call(
                p,
                lambda c: c.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.spec.service
                ),
            )
            if isinstance(reply, list | tuple) and len(reply) == 2:
                out[p] = f"{reply[0]}:{reply[1]}"
        return out

    def _role(self, port: int) -> dict[str, Any] | None:
        return None if self.paused(port) else self._info(port, "replication")

    def master_address(self) -> str:
        """The master's ``host:port`` as the first sentinel that answers reports it."""
        answers = self._sentinel_answers()
        if not answers:
            raise StackError(
                f"no sentinel of {self.spec.url} answers: is the set-up in {self.spec.run_dir} "
                "running?"
            )
        return next(iter(answers.values()))

    def _problems(self) -> list[str]:
        problems = []
        answers = self._sentinel_answers()
        live_sentinels = self._live(self.sentinel_ports)
        for p in live_sentinels:
            if p not in answers:
                problems.append(f"sentinel {self.address(p)} does not answer")
        masters = set(answers.values())
        if len(masters) != 1:
            problems.append(f"the sentinels report masters {sorted(masters) or 'none'}")
            return problems
        (master,) = masters
        live_data = self._live(self.data_ports)
        for p in live_sentinels:
            state = self._sentinel_master(p) or {}
            if state.get("flags") != "master":
                problems.append(f"sentinel {self.address(p)} flags the master {state.get('flags')}")
            if int(state.get("num-slaves", 0)) < len(live_data) - 1:
                problems.append(
                    f"sentinel {self.address(p)} knows {state.get('num-slaves')} replica(s)"
                )
            if int(state.get("num-other-sentinels", 0)) < len(live_sentinels) - 1:
                problems.append(
                    f"sentinel {self.address(p)} knows {state.get('num-other-sentinels')} "
                    "other sentinel(s)"
                )
        for p in live_data:
            info = self._role(p)
            if info is None:
                problems.append(f"{self.address(p)} does not answer")
            elif self.address(p) == master:
                if info.get("role") != "master":
                    problems.append(
                        f"{master} (the sentinels' master) says role:{info.get('role')}"
                    )
            elif info.get("role") != "slave":
                problems.append(f"{self.address(p)} says role:{info.get('role')}, not replica")
            elif f"{info.get('master_host')}:{info.get('master_port')}" != master:
                problems.append(
                    f"{self.address(p)} replicates {info.get('master_host')}:"
                    f"{info.get('master_port')}, not {master}"
                )
            elif info.get("master_link_status") != "up":
                problems.append(
                    f"{self.address(p)}: master_link_status:{info.get('master_link_status')}"
                )
        return problems

    def _link_problems(self) -> list[str]:
        """Replicas (by configuration) whose link to the first data node is not up."""
        master = self.address(self.spec.data_ports[0])
        problems = []
        for p in self.data_ports[1:]:
            info = self._role(p) or {}
            linked = f"{info.get('master_host')}:{info.get('master_port')}" == master
            if not linked or info.get("master_link_status") != "up":
                problems.append(
                    f"{self.address(p)}: master_link_status:{info.get('master_link_status')}"
                )
        return problems

    def start_node(self, port: int, *, follow_master: bool = False) -> None:
        """Restart one stopped or killed process from its directory (its config as the
        sentinels last rewrote it) and wait until it answers PING.

        A killed ex-master comes back as a master with its old data; the sentinels turn it into
        a replica of the promoted node only after it has reported itself as master for about
        8-10 s (``wait_ok`` waits for that). ``follow_master``: start a data node as a replica
        of the master the sentinels report now (what an operator would do), so it never serves
        as a second master."""
        if follow_master and port in self.spec.data_ports:
            master = self.master_address()
            if master != self.address(port):
                host, master_port = master.rsplit(":", 1)
                self._extra_args[port] = ["--replicaof", host, master_port]
        try:
            super().start_node(port)
        finally:
            self._extra_args.pop(port, None)

    def _describe(self) -> str:
        lines = [
            f"  {n.address} {n.role}" + (f" of {n.master_of}" if n.master_of else "")
            for n in self.nodes()
        ]
        return "nodes now:\n" + "\n".join(lines)

    def ready(self) -> bool:
        """The sentinels agree on a master that says role:master, replicas linked to it."""
        return not self._problems()

    def wait_ok(self, timeout_s: float = 60.0) -> float:
        """Wait until every live sentinel reports the same master, that node says role:master,
        every other live data node replicates it with its link up, and each sentinel knows the
        live replicas and the other live sentinels. Returns the seconds waited."""
        return self._poll(
            self._problems,
            timeout_s,
            f"the Sentinel set-up in {self.spec.run_dir} did not settle",
            self._describe,
        )

    def wait_failover(self, old_master_port: int, timeout_s: float = 60.0) -> str:
        """Wait until every live sentinel reports the same new master (not ``old_master_port``)
        and that node says role:master. Returns its address (``host:port``)."""
        old = self.address(old_master_port)
        found: list[str] = []

        def check() -> list[str]:
            answers = self._sentinel_answers()
            masters = set(answers.values())
            if len(masters) != 1 or old in masters:
                return [f"the sentinels report masters {sorted(masters) or 'none'}"]
            (new,) = masters
            info = self._role(int(new.rsplit(":", 1)[1])) or {}
            if info.get("role") != "master":
                return [f"{new} says role:{info.get('role')}"]
            found[:] = [new]
            return []

        self._poll(check, timeout_s, f"the sentinels did not replace master {old}", self._describe)
        return found[0]

    def nodes(self) -> list[NodeStatus]:
        """Data nodes with their role from INFO replication (``down`` when they do not answer),
        then the sentinels (role ``sentinel``, or ``down``)."""
        out = []
        for p in self._ports:
            pid = self.node_pid(p)
            master_of = None
            if p in self.spec.sentinel_ports:
                up = not self.paused(p) and self._pings(p)
                role = "sentinel" if up else "down"
            else:
                info = self._role(p)
                role = "down" if info is None else str(info.get("role"))
                if role == "slave":
                    role = "replica"
                    master_of = (
                        f"{info.get('master_host')}:{info.get('master_port')}" if info else None
                    )
            out.append(
                NodeStatus(
                    address=self.address(p),
                    port=p,
                    pid=pid,
                    role=role,
                    slots=0,
                    master_of=master_of,
                    rss_bytes=procs.rss_bytes(pid) if pid else None,
                )
            )
        return out
