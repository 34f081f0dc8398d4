"""A local Redis Cluster (by default 3 masters + 3 replicas) from Debian's ``redis-server``.

Every node is one ``redis-server`` started in the foreground of its own session from a config
file written into the node's directory ``<run_dir>/<port>/`` (next to its ``nodes.conf``,
append-only files, ``redis.log``, ``redis.out`` and ``redis.pid``); see
:mod:`stream_lstm.stack._redis_nodes` for that plumbing and how PIDs are recognised.

The cluster is formed with ``redis-cli --cluster create … --cluster-replicas N --cluster-yes``
(the password, when set, goes through ``REDISCLI_AUTH``, never the command line). With
``tls`` (:class:`TlsFiles`) every node serves TLS only (``port 0``, ``tls-port``), the cluster
bus and the replication links use TLS too (``tls-cluster yes``, ``tls-replication yes``), and
``redis-cli`` and this module's own clients connect with the same certificate files. Used by the
integration tests (fault tests kill, pause and restart single nodes), the benchmarks and
``stream-lstm stack up --redis-cluster``.

The Sentinel set-up (:class:`RedisSentinel`, :class:`SentinelSpec`) lives in
:mod:`stream_lstm.stack.redis_sentinel` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from stream_lstm.errors import StackError
from stream_lstm.stack import procs
from stream_lstm.stack._redis_nodes import (
    APPENDFSYNC,
    NodeStatus,
    RedisNodes,
    TlsFiles,
    free_ports,
    parse_info,
    quote_conf,
)
from stream_lstm.stack.redis import ensure_redis_server
from stream_lstm.stack.redis_sentinel import RedisSentinel, SentinelSpec

__all__ = [
    "CLUSTER_SLOTS",
    "ClusterSpec",
    "NodeStatus",
    "RedisCluster",
    "RedisSentinel",
    "SentinelSpec",
    "TlsFiles",
    "free_ports",
    "redis_cli",
]

CLUSTER_SLOTS = 16384


def redis_cli() -> str:
    """Path to ``redis-cli``: ``STREAM_LSTM_REDIS_CLI``, next to ``redis-server``, or on PATH."""
    override = os.environ.get("STREAM_LSTM_REDIS_CLI")
    if override:
        if not Path(override).is_file():
            raise StackError(f"STREAM_LSTM_REDIS_CLI={override} is not a file")
        return override
    sibling = Path(ensure_redis_server()).with_name("redis-cli")
    if sibling.is_file():
        return str(sibling)
    found = shutil.which("redis-cli")
    if found is None:
        raise StackError(
            "redis-cli was not found (it forms the cluster): install Debian's redis-tools "
            "(`sudo apt-get install -y redis-tools`) or set STREAM_LSTM_REDIS_CLI."
        )
    return found


def _check_ports(ports: Iterable[int], what: str) -> None:
    for p in ports:
        if not 1 <= p <= 65535:
            raise StackError(f"{what} port {p} is outside 1..65535")


@dataclass(frozen=True)
class ClusterSpec:
    """Where a local Redis Cluster lives and how it is shaped.

    ``ports`` lists the masters first, then the replicas: ``len(ports) == masters * (1 +
    replicas)`` with at least 3 masters (what ``redis-cli --cluster create`` accepts). Each node's
    cluster bus listens on ``bus_ports`` (by default its port + 10000, which must stay <= 65535).
    """

    run_dir: Path  # one sub-directory per node: <run_dir>/<port>/ (data, nodes.conf, log, pid)
    ports: tuple[int, ...]  # masters first, then replicas
    host: str = "127.0.0.1"
    replicas: int = 1  # replicas per master
    password: str | None = field(default=None, repr=False)  # requirepass + masterauth
    node_timeout_ms: int = 2000  # cluster-node-timeout: short, so a failover takes seconds
    appendfsync: str = "everysec"
    ready_timeout_s: float = 60.0
    bus_ports: tuple[int, ...] = ()  # cluster-port of each node; () = port + 10000
    tls: TlsFiles | None = None  # serve TLS only, with TLS on the cluster bus and replication

    def __post_init__(self) -> None:
        ports = tuple(self.ports)
        if self.replicas < 0:
            raise StackError(f"replicas per master must be >= 0 (got {self.replicas})")
        per = 1 + self.replicas
        if len(ports) % per or len(ports) // per < 3:
            raise StackError(
                f"a Redis Cluster with {self.replicas} replica(s) per master needs a multiple of "
                f"{per} ports and at least 3 masters ({3 * per} ports); got {len(ports)}"
            )
        _check_ports(ports, "Redis Cluster node")
        if len(set(ports)) != len(ports):
            raise StackError(f"Redis Cluster node ports must differ (got {list(ports)})")
        if self.bus_ports:
            if len(self.bus_ports) != len(ports):
                raise StackError(
                    f"give one cluster bus port per node: {len(ports)} ports but "
                    f"{len(self.bus_ports)} bus ports"
                )
            _check_ports(self.bus_ports, "Redis Cluster bus")
        elif max(ports) + 10000 > 65535:
            raise StackError(
                f"the cluster bus of node {max(ports)} would listen on {max(ports) + 10000}, "
                "beyond 65535: choose node ports <= 55535 or give bus_ports"
            )
        everything = ports + self.cluster_bus_ports
        if len(set(everything)) != len(everything):
            raise StackError(
                f"Redis Cluster node and bus ports must all differ (nodes {list(ports)}, "
                f"buses {list(self.cluster_bus_ports)})"
            )
        if self.node_timeout_ms < 100:
            raise StackError(f"node_timeout_ms must be >= 100 (got {self.node_timeout_ms})")
        if self.appendfsync not in APPENDFSYNC:
            raise StackError(f"appendfsync must be one of {APPENDFSYNC} (got {self.appendfsync!r})")

    @property
    def masters(self) -> int:
        """How many masters the cluster is created with."""
        return len(self.ports) // (1 + self.replicas)

    @property
    def master_ports(self) -> tuple[int, ...]:
        """The ports created as masters (after a failover other nodes may be the masters)."""
        return tuple(self.ports[: self.masters])

    @property
    def cluster_bus_ports(self) -> tuple[int, ...]:
        return tuple(self.bus_ports) or tuple(p + 10000 for p in self.ports)

    def bus_port(self, port: int) -> int:
        return self.cluster_bus_ports[self.ports.index(port)]

    @property
    def url(self) -> str:
        """``redis://host:p1,host:p2,host:p3/0``: the created masters as seed nodes, no password
        (with TLS: ``rediss://…/0?ssl_ca_certs=…&ssl_certfile=…&ssl_keyfile=…``)."""
        seeds = ",".join(f"{self.host}:{p}" for p in self.master_ports)
        if self.tls is None:
            return f"redis://{seeds}/0"
        return f"rediss://{seeds}/0?{self.tls.url_query()}"


@dataclass(frozen=True)
class ClusterNodeLine:
    """One line of ``CLUSTER NODES`` (or of a ``nodes.conf``)."""

    node_id: str
    address: str  # host:port (the bus port and any hostname dropped)
    flags: frozenset[str]
    master_id: str | None
    slots: frozenset[int]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags


def parse_cluster_nodes(text: str) -> list[ClusterNodeLine]:
    """Parse ``CLUSTER NODES`` output (also the node lines of a ``nodes.conf``)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8 or parts[0] == "vars":
            continue
        node_id, addr, flags, master = parts[0], parts[1], parts[2], parts[3]
        slots: set[int] = set()
        for token in parts[8:]:
            if token.startswith("["):
                continue  # a slot being imported or migrated
            lo, _, hi = token.partition("-")
            slots.update(range(int(lo), int(hi or lo) + 1))
        out.append(
            ClusterNodeLine(
                node_id=node_id,
                address=addr.split("@", 1)[0],
                flags=frozenset(flags.split(",")),
                master_id=None if master == "-" else master,
                slots=frozenset(slots),
            )
        )
    return out


class RedisCluster(RedisNodes):
    """Start, stop, inspect and disturb a local Redis Cluster described by a :class:`ClusterSpec`.

    Every node runs with ``cluster-enabled yes``, ``appendonly yes`` (``appendfsync`` from the
    spec), ``save ""`` and its ``nodes.conf`` in its own directory.

    ``cluster-require-full-coverage no``: when a master dies, only the keys of *its* slots fail
    (``CLUSTERDOWN``) until its replica takes over; the rest of the key space stays writable.
    With the default ``yes`` every node refuses every command from the moment the dead master is
    flagged until the failover completes, which hides whether a client copes with a partial
    outage, the case a store on a cluster has to handle. Because ``cluster_state:ok`` then no
    longer implies full coverage, :meth:`ready` and :meth:`wait_ok` also check that every slot
    is served by a master that answers.
    """

    name = "redis-cluster"
    what = "Redis Cluster node"
    flag = "--redis-cluster-port"

    def __init__(self, spec: ClusterSpec) -> None:
        super().__init__(spec.run_dir, spec.host, spec.password, spec.ports, spec.tls)
        self.spec = spec

    @classmethod
    def recorded(cls, run_dir: Path, password: str | None = None) -> RedisCluster | None:
        """The cluster a previous :meth:`start` recorded in ``<run_dir>/cluster.json``, if any
        (lets ``stack status``/``down`` find it without the flags ``up`` was given)."""
        try:
            rec = json.loads((run_dir / "cluster.json").read_text())
            spec = ClusterSpec(
                run_dir=run_dir,
                ports=tuple(int(p) for p in rec["ports"]),
                host=str(rec["host"]),
                replicas=int(rec["replicas"]),
                bus_ports=tuple(int(p) for p in rec["bus_ports"]),
                password=password,
                tls=TlsFiles.from_record(rec.get("tls")),
            )
        except (OSError, ValueError, KeyError, TypeError, StackError):
            return None
        return cls(spec)

    def _record(self) -> None:
        s = self.spec
        rec = {
            "host": s.host,
            "ports": list(s.ports),
            "replicas": s.replicas,
            "bus_ports": list(s.cluster_bus_ports),
            "tls": s.tls.record() if s.tls else None,
        }
        (s.run_dir / "cluster.json").write_text(json.dumps(rec) + "\n")

    def _node_conf(self, port: int) -> list[str]:
        s = self.spec
        lines = [
            *self._common_conf(port),
            "appendonly yes",
            f"appendfsync {s.appendfsync}",
            'save ""',
            # a replica (re)joining syncs at once, not after the default 5 s of waiting for others
            "repl-diskless-sync-delay 0",
            "cluster-enabled yes",
            f"cluster-config-file {quote_conf(str(self.node_dir(port).absolute() / 'nodes.conf'))}",
            f"cluster-node-timeout {s.node_timeout_ms}",
            f"cluster-port {s.bus_port(port)}",
            "cluster-require-full-coverage no",
        ]
        if s.tls:
            lines += ["tls-cluster yes", "tls-replication yes"]
        if s.password:
            lines += [
                f"requirepass {quote_conf(s.password)}",
                f"masterauth {quote_conf(s.password)}",
            ]
        return lines

    def _require_free(self, port: int) -> None:
        super()._require_free(port)
        procs.require_free_port(
            self.spec.host, self.spec.bus_port(port), "Redis Cluster bus", self.flag
        )

    def start(self, *, fresh: bool = True) -> float:
        """Start every node, form the cluster, wait until it is whole. Returns seconds.

        Whole: every node reports ``cluster_state:ok`` and all 16384 slots assigned, every slot
        is served by a master that answers, and every replica's ``master_link_status`` is up.
        ``fresh`` empties each node's directory first (data and ``nodes.conf``); otherwise
        nodes that already belong to a cluster rejoin it. Idempotent: when some nodes already
        run, the missing ones are restarted from their directories (never wiping a running
        cluster) and it waits until the cluster is whole again (0 s when nothing was missing).
        """
        s = self.spec
        t0 = time.monotonic()
        live = self.pids()
        if live:
            missing = [p for p in s.ports if p not in live]
            if missing:
                self._start_nodes(missing, s.ready_timeout_s)
            self.wait_ok(s.ready_timeout_s, links=True)
            return time.monotonic() - t0 if missing else 0.0
        cli = redis_cli()
        for p in s.ports:
            self._require_free(p)
        for p in s.ports:
            if fresh:
                shutil.rmtree(self.node_dir(p), ignore_errors=True)
            if fresh or not self.conf_file(p).is_file():
                self._write_conf(p)
        self._start_nodes(s.ports, s.ready_timeout_s)
        try:
            formed = [self._formed(p) for p in s.ports]
            if not any(formed):
                self._create(cli)
            elif not all(formed):
                raise StackError(
                    f"only some nodes of the cluster in {s.run_dir} belong to a cluster (ports "
                    f"{[p for p, f in zip(s.ports, formed, strict=True) if f]}): start it fresh"
                )
            remaining = s.ready_timeout_s - (time.monotonic() - t0)
            self.wait_ok(max(remaining, 5.0), links=True)
        except BaseException:
            self.stop(grace_s=5)
            raise
        self._record()
        return time.monotonic() - t0

    def _formed(self, port: int) -> bool:
        info = parse_info(self._ask(port, "CLUSTER", "INFO") or "")
        return int(info.get("cluster_known_nodes", "1")) > 1 or (
            int(info.get("cluster_slots_assigned", "0")) > 0
        )

    def _create(self, cli: str) -> None:
        s = self.spec
        argv = [
            cli,
            "--cluster",
            "create",
            *(self.address(p) for p in s.ports),
            "--cluster-replicas",
            str(s.replicas),
            "--cluster-yes",
            *(s.tls.cli_args() if s.tls else []),
        ]
        env = dict(os.environ)
        env.pop("REDISCLI_AUTH", None)
        if s.password:
            env["REDISCLI_AUTH"] = s.password
        log = s.run_dir / "cluster-create.log"
        try:
            res = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=env,
                timeout=s.ready_timeout_s,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            raise StackError(
                f"`redis-cli --cluster create` did not finish within {s.ready_timeout_s:.0f} s; "
                f"read the nodes' logs under {s.run_dir}"
            ) from e
        log.write_text(f"$ {' '.join(argv)}\n{res.stdout}{res.stderr}")
        if res.returncode != 0 or "All 16384 slots covered" not in res.stdout:
            last = "".join(f"\n  | {line}" for line in (res.stdout + res.stderr).splitlines()[-8:])
            raise StackError(
                f"`redis-cli --cluster create` failed (exit {res.returncode}); read {log}{last}"
            )

    # -- what the cluster says -----------------------------------------------------------------
    def _views(self) -> dict[int, list[ClusterNodeLine]]:
        """port → that node's CLUSTER NODES, for every node that answers (paused ones skipped)."""
        views = {}
        for p in self.spec.ports:
            if self.paused(p):
                continue
            text = self._ask(p, "CLUSTER", "NODES")
            if text is not None:
                views[p] = parse_cluster_nodes(text)
        return views

    def _problems(self, *, links: bool) -> list[str]:
        """What keeps the cluster from being whole now (empty when it is)."""
        problems = []
        views = self._views()
        answering = {self.address(p) for p in views}
        for p in self.spec.ports:
            pid = self.node_pid(p)
            if pid is None or self.paused(p):
                continue  # stopped, killed or paused on purpose: not a live node
            if p not in views:
                problems.append(f"{self.address(p)} (pid {pid}) does not answer")
                continue
            info = parse_info(self._ask(p, "CLUSTER", "INFO") or "")
            if info.get("cluster_state") != "ok":
                problems.append(f"{self.address(p)}: cluster_state:{info.get('cluster_state')}")
            if info.get("cluster_slots_assigned") != str(CLUSTER_SLOTS):
                problems.append(
                    f"{self.address(p)}: cluster_slots_assigned:"
                    f"{info.get('cluster_slots_assigned')}"
                )
            covered: set[int] = set()
            for line in views[p]:
                if line.is_master and not line.failed and line.address in answering:
                    covered |= line.slots
            if len(covered) != CLUSTER_SLOTS:
                problems.append(
                    f"{self.address(p)} sees {CLUSTER_SLOTS - len(covered)} slots without a "
                    "master that answers"
                )
            me = next((ln for ln in views[p] if "myself" in ln.flags), None)
            if links and me is not None and "slave" in me.flags:
                repl = self._info(p, "replication") or {}
                if repl.get("master_link_status") != "up":
                    problems.append(
                        f"replica {self.address(p)}: master_link_status:"
                        f"{repl.get('master_link_status')}"
                    )
        routes = {
            p: frozenset((ln.address, ln.slots) for ln in lines if ln.is_master and ln.slots)
            for p, lines in views.items()
        }
        if len(set(routes.values())) > 1:
            problems.append("the nodes do not yet agree which master serves which slots")
        if not views:
            problems.append("no node answers")
        return problems

    def cluster_nodes_text(self) -> str:
        """CLUSTER NODES as the first node that answers sees it (for error messages)."""
        for p in self.spec.ports:
            if not self.paused(p):
                text = self._ask(p, "CLUSTER", "NODES")
                if text:
                    return f"CLUSTER NODES from {self.address(p)}:\n{text.rstrip()}"
        return "(no node answers CLUSTER NODES)"

    def ready(self) -> bool:
        """True when the cluster is whole for clients: every live node says cluster_state:ok
        and every slot is served by a master that answers (replica links not required)."""
        return not self._problems(links=False)

    def wait_ok(self, timeout_s: float = 60.0, *, links: bool = False) -> float:
        """Wait until every live node (not killed, stopped or paused) reports cluster_state:ok
        with all slots assigned and every slot has a master that answers; ``links``: also every
        replica's link to its master is up. StackError with CLUSTER NODES on timeout. Returns
        the seconds waited."""
        return self._poll(
            lambda: self._problems(links=links),
            timeout_s,
            f"the Redis Cluster in {self.spec.run_dir} did not become whole",
            self.cluster_nodes_text,
        )

    def nodes(self) -> list[NodeStatus]:
        """Every node with its role and slots. A node's role and slots come from what it says
        about itself; a node that does not answer is ``fail`` once another node flags it so
        (``down`` before that), with the slots the others still map to it."""
        views = self._views()
        own: dict[int, ClusterNodeLine] = {}
        by_id: dict[str, str] = {}
        seen: dict[str, list[ClusterNodeLine]] = {}
        for p, lines in views.items():
            for line in lines:
                by_id.setdefault(line.node_id, line.address)
                seen.setdefault(line.address, []).append(line)
                if "myself" in line.flags:
                    own[p] = line
                    by_id[line.node_id] = line.address
        claimed = frozenset().union(*(ln.slots for ln in own.values() if ln.is_master))
        out = []
        for p in self.spec.ports:
            address = self.address(p)
            pid = self.node_pid(p)
            cluster_ok = None
            if p in own:
                me = own[p]
                role = "master" if me.is_master else "replica"
                info = parse_info(self._ask(p, "CLUSTER", "INFO") or "")
                cluster_ok = info.get("cluster_state") == "ok"
                slots = len(me.slots)
                master_of = by_id.get(me.master_id, me.master_id) if me.master_id else None
            else:
                others = [ln for ln in seen.get(address, []) if "myself" not in ln.flags]
                role = "fail" if any(ln.failed for ln in others) else "down"
                held = frozenset().union(*(ln.slots for ln in others))
                slots = len(held - claimed)  # still mapped to it and not taken over
                master_of = None
            out.append(
                NodeStatus(
                    address=address,
                    port=p,
                    pid=pid,
                    role=role,
                    slots=slots if role != "replica" else 0,
                    master_of=master_of,
                    rss_bytes=procs.rss_bytes(pid) if pid else None,
                    cluster_ok=cluster_ok,
                )
            )
        return out

    def masters(self) -> list[NodeStatus]:
        """The nodes that answer as masters now."""
        return [n for n in self.nodes() if n.role == "master"]

    def _own_slots(self, port: int) -> tuple[str, frozenset[int]]:
        """The node id and slots of ``port`` as it last saw itself: from its answer, or, when it
        does not answer (killed, paused), from the ``nodes.conf`` it left in its directory."""
        text = None if self.paused(port) else self._ask(port, "CLUSTER", "NODES")
        if text is None:
            with contextlib.suppress(OSError):
                text = (self.node_dir(port) / "nodes.conf").read_text()
        me = next((ln for ln in parse_cluster_nodes(text or "") if "myself" in ln.flags), None)
        if me is None:
            raise StackError(f"no cluster state for {self.address(port)} in {self.node_dir(port)}")
        return me.node_id, me.slots

    def wait_failover(self, dead_port: int, timeout_s: float = 60.0) -> str:
        """Wait until the slots the master on ``dead_port`` served are served by another master
        (its promoted replica) that answers and that every answering node routes them to.
        Returns the new master's address (``host:port``)."""
        dead_id, dead_slots = self._own_slots(dead_port)
        if not dead_slots:
            raise StackError(
                f"{self.address(dead_port)} served no slots (a replica?): no failover to wait for"
            )
        found: list[str] = []

        def check() -> list[str]:
            views = self._views()
            views.pop(dead_port, None)
            owners: set[str] = set()
            for lines in views.values():
                for line in lines:
                    if line.is_master and not line.failed and dead_slots <= line.slots:
                        owners.add(line.address)
                if not any(ln.is_master and dead_slots <= ln.slots for ln in lines):
                    owners.add("(none)")
            if len(owners) != 1 or "(none)" in owners:
                return [f"the slots of {self.address(dead_port)} are routed to {sorted(owners)}"]
            (new,) = owners
            port = int(new.rsplit(":", 1)[1])
            if new == self.address(dead_port) or port not in views:
                return [f"{new} still serves the slots of {self.address(dead_port)}"]
            me = next((ln for ln in views[port] if "myself" in ln.flags), None)
            if me is None or me.node_id == dead_id or not me.is_master:
                return [f"{new} does not say it is a master"]
            found[:] = [new]
            return []

        self._poll(
            check,
            timeout_s,
            f"no replica took over the slots of {self.address(dead_port)}",
            self.cluster_nodes_text,
        )
        return found[0]
