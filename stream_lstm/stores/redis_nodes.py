"""Where each Redis command goes: one node, a Sentinel-managed master, or a Redis Cluster.

:func:`open_nodes` reads the ``--redis`` URL and returns one of three :class:`Nodes`:

- ``redis://host:port/db`` (and ``rediss://``, ``unix://``) — one node. When that node turns out
  to be a Redis Cluster node (``INFO cluster`` says ``cluster_enabled:1``), it becomes the seed of
  a cluster instead.
- ``redis://host1:port1,host2:port2,…/0`` — the seed nodes of a Redis Cluster.
- ``redis+sentinel://[user:password@]host1:port1,host2:port2/<service>[/db]`` (``rediss+sentinel``
  for TLS) — the master that the Sentinels name for ``<service>``; query parameters
  ``sentinel_username`` / ``sentinel_password`` authenticate to the Sentinels themselves.

Credentials, TLS parameters and other query parameters of the URL apply to every data node.

Cluster routing is done here, not by redis-py's ``RedisCluster``: the slot map comes from
``CLUSTER SLOTS`` and every node gets a plain client built from the URL's own connection
settings. The store sends one pipeline per node and handles MOVED / ASK / TRYAGAIN /
CLUSTERDOWN / READONLY itself, refreshing the slot map from whichever node answers. That keeps
the one-round-trip-per-node rule, lets a ``WAIT`` follow the writes on the same connection
(``WAIT`` counts the replicas that have this connection's writes), and stays clear of
``ClusterPipeline``'s known failover gaps (redis/redis-py #3130: a timeout inside a pipeline
leaves a stale slot table; #3560 and #3874: stale topology and connections to a failed master
after a failover). After any node error the map is read again before the next attempt.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.sentinel import Sentinel

from stream_lstm.errors import ConfigError
from stream_lstm.redact import redact_url

log = logging.getLogger(__name__)

SLOTS = 16384
SINGLE = "single"  # the address of the one node in the single and Sentinel modes


def _fix_url_error(shown: str, e: Exception) -> ConfigError:
    # (redis-py's message can quote a piece of the password: never shown)
    return ConfigError(
        f"--redis / STREAM_LSTM_REDIS {shown} is not a Redis URL redis-py can read "
        f"({type(e).__name__}); the forms are redis[s]://[user:password@]host:port/db, "
        "redis://host1:port1,host2:port2/0 (cluster seed nodes) and "
        "redis+sentinel://[user:password@]host:port[,host:port]/service (Sentinel), with / # ? @ "
        "in a password percent-encoded (%2F %23 %3F %40)"
    )


def _client_from(url: str, shown: str, socket_timeout_s: float) -> redis.Redis:
    try:
        return redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
    except (ValueError, TypeError) as e:
        raise _fix_url_error(shown, e) from None


def _hosts(netloc: str) -> tuple[str, list[str]]:
    """``user:pw@h1:p1,h2:p2`` → (``user:pw@``, [``h1:p1``, ``h2:p2``])."""
    userinfo, _, hosts = netloc.rpartition("@")
    return (userinfo + "@" if userinfo else ""), [h for h in hosts.split(",") if h]


def _host_port(addr: str, default_port: int) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host:
        return addr, default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"--redis: {addr!r} is not host:port") from None


class Nodes:
    """Routing of commands to the nodes that hold the data (base: one node)."""

    mode = SINGLE
    cross_slot = True  # one command may touch keys of many slots (not in a cluster)

    def __init__(self, client: redis.Redis, shown: str) -> None:
        self._client = client
        self.shown = shown

    def connect(self) -> None:
        """Reach the data node(s); raises redis-py's errors."""
        self._client.ping()

    def refresh(self) -> None:
        """After an error: find the current node(s) again (drops pooled connections)."""
        self._client.connection_pool.disconnect()

    def node_of(self, slot: int) -> str:
        return SINGLE

    def client(self, addr: str) -> redis.Redis:
        return self._client

    def masters(self) -> list[str]:
        return [SINGLE]

    def replicas(self) -> int:
        """The fewest replicas any master has (what ``WAIT`` can count on)."""
        info = self._client.info("replication")
        return int(info.get("connected_slaves", 0))

    def describe(self) -> str:
        return self.shown

    def close(self) -> None:
        self._client.close()


class SentinelNodes(Nodes):
    """The master that the Sentinels name for a service; followed across failovers (redis-py's
    Sentinel pool asks the Sentinels again for every new connection; :meth:`refresh` drops the
    connections to a master that was demoted, which otherwise answer READONLY)."""

    mode = "sentinel"

    def __init__(self, sentinel: Sentinel, service: str, client: redis.Redis, shown: str) -> None:
        super().__init__(client, shown)
        self.sentinel = sentinel
        self.service = service

    def connect(self) -> None:
        self.sentinel.discover_master(self.service)  # MasterNotFoundError is a ConnectionError
        super().connect()

    def describe(self) -> str:
        try:
            host, port = self.sentinel.discover_master(self.service)
            return f"{self.shown} (master {host}:{port})"
        except redis.RedisError:
            return self.shown


@dataclass
class ClusterNodes(Nodes):
    """A Redis Cluster: the slot map from ``CLUSTER SLOTS``, one client per node."""

    seeds: list[tuple[str, int]]
    base: redis.Redis  # a client built from the URL: its connection settings serve every node
    shown: str
    slot_owner: list[str] = field(default_factory=list)  # slot → "host:port" of its master
    replica_count: dict[str, int] = field(default_factory=dict)
    clients: dict[str, redis.Redis] = field(default_factory=dict)
    mode = "cluster"
    cross_slot = False

    def client(self, addr: str) -> redis.Redis:
        c = self.clients.get(addr)
        if c is None:
            host, port = _host_port(addr, 6379)
            pool = self.base.connection_pool
            kwargs = {**pool.connection_kwargs, "host": host, "port": port}
            c = redis.Redis(
                connection_pool=redis.ConnectionPool(
                    connection_class=pool.connection_class, **kwargs
                )
            )
            self.clients[addr] = c
        return c

    def connect(self) -> None:
        self.refresh()
        self._check_seeds()

    def _check_seeds(self) -> None:
        """Every seed that answers must be a node of the cluster whose slot map was read (a
        typo could otherwise point one seed at another cluster, or at a plain Redis, unseen
        until the other seeds fail): a cluster node whose own slot map names one of our
        masters. (Only INFO and CLUSTER SLOTS: what the store's least ACL allows.)"""
        if len(self.seeds) < 2:
            return
        ours = set(self.replica_count)
        for host, port in self.seeds:
            addr = f"{host}:{port}"
            try:
                info = self.client(addr).info("cluster")
                if int(info.get("cluster_enabled", 0)) != 1:
                    raise ConfigError(
                        f"--redis {self.shown}: seed {addr} is not a Redis Cluster node"
                    )
                theirs = {
                    f"{_text(e[2][0]) or host}:{int(e[2][1])}"
                    for e in self.client(addr).execute_command("CLUSTER", "SLOTS")
                }
            except redis.RedisError as e:
                log.warning("Redis Cluster seed %s does not answer (%s); using the others", addr, e)
                continue
            if not theirs & ours:
                raise ConfigError(
                    f"--redis {self.shown}: seed {addr} belongs to another cluster (its masters "
                    f"{', '.join(sorted(theirs))}; this one's {', '.join(sorted(ours))})"
                )

    def refresh(self) -> None:
        """Read the slot map from the first node that answers: known masters first, then the
        seeds. Raises the last error when none answers."""
        tried: list[str] = []
        candidates = [a for a in dict.fromkeys(self.slot_owner) if a]
        candidates += [f"{h}:{p}" for h, p in self.seeds]
        last: Exception | None = None
        for addr in dict.fromkeys(candidates):
            tried.append(addr)
            try:
                reply = self.client(addr).execute_command("CLUSTER", "SLOTS")
            except redis.RedisError as e:
                self.client(addr).connection_pool.disconnect()
                last = e
                continue
            self._apply(reply, addr)
            return
        assert last is not None
        raise type(last)(f"no cluster node answered ({', '.join(tried)}): {last}")

    def _apply(self, reply: Sequence[Any], via: str) -> None:
        owner = [""] * SLOTS
        replicas: dict[str, int] = {}
        for entry in reply:
            start, end, master, *reps = entry
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            if not host or host == "?":
                host = via.rpartition(":")[0]
            addr = f"{host}:{int(master[1])}"
            owner[int(start) : int(end) + 1] = [addr] * (int(end) - int(start) + 1)
            replicas[addr] = min(replicas.get(addr, len(reps)), len(reps))
        changed = owner != self.slot_owner
        self.slot_owner, self.replica_count = owner, replicas
        if changed:
            missing = owner.count("")
            log.info(
                "Redis Cluster slot map from %s: %d masters %s%s", via, len(replicas),
                ", ".join(sorted(replicas)), f"; {missing} slots unserved" if missing else "",
            )  # fmt: skip

    def node_of(self, slot: int) -> str:
        addr = self.slot_owner[slot]
        if not addr:
            raise redis.exceptions.ClusterDownError(f"slot {slot} is not served by any node")
        return addr

    def masters(self) -> list[str]:
        return sorted(self.replica_count)

    def replicas(self) -> int:
        """The fewest replicas linked to any master (``INFO replication``: ``CLUSTER SLOTS`` of
        Redis 7.0 leaves out a replica that has not replicated any write yet)."""
        counts = [
            int(self.client(a).info("replication").get("connected_slaves", 0))
            for a in self.masters()
        ]
        return min(counts, default=0)

    def describe(self) -> str:
        return f"{self.shown} (cluster of {len(self.replica_count)} masters)"

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        self.base.close()


def open_nodes(url: str, socket_timeout_s: float = 5.0) -> Nodes:
    """The :class:`Nodes` for a ``--redis`` URL (no connection is made yet; a single node that
    is a cluster node is found out in :func:`resolve`)."""
    shown = redact_url(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel(parts, shown, socket_timeout_s)
    if scheme in ("redis", "rediss"):
        userinfo, hosts = _hosts(parts.netloc)
        if len(hosts) > 1:
            db = parts.path.strip("/")
            if db not in ("", "0"):
                raise ConfigError(f"--redis {shown}: a Redis Cluster has only database 0")
            first = urlunsplit(parts._replace(netloc=userinfo + hosts[0]))
            base = _client_from(first, shown, socket_timeout_s)
            seeds = [_host_port(h, 0) for h in hosts]
            for h, (_, port) in zip(hosts, seeds, strict=True):
                if not port:
                    raise ConfigError(f"--redis {shown}: give each seed node as host:port ({h!r})")
            return ClusterNodes(seeds=seeds, base=base, shown=shown)
    return Nodes(_client_from(url, shown, socket_timeout_s), shown)


def resolve(nodes: Nodes) -> Nodes:
    """Connect; a single node with ``cluster_enabled:1`` becomes the seed of a cluster."""
    nodes.connect()
    if type(nodes) is Nodes:
        info = nodes.client(SINGLE).info("cluster")
        if int(info.get("cluster_enabled", 0)) == 1:
            kw = nodes.client(SINGLE).connection_pool.connection_kwargs
            if int(kw.get("db", 0) or 0) != 0:
                raise ConfigError(f"--redis {nodes.shown}: a Redis Cluster has only database 0")
            cluster = ClusterNodes(
                seeds=[(str(kw.get("host")), int(kw.get("port", 6379)))],
                base=nodes.client(SINGLE),
                shown=nodes.shown,
            )
            cluster.connect()
            return cluster
    return nodes


def _sentinel(parts: Any, shown: str, socket_timeout_s: float) -> SentinelNodes:
    userinfo, hosts = _hosts(parts.netloc)
    path = [p for p in parts.path.split("/") if p]
    if not hosts or not path:
        raise ConfigError(
            f"--redis {shown}: a Sentinel URL is redis+sentinel://[user:password@]host:port"
            "[,host:port]/<service name>[/db]"
        )
    service, db = unquote(path[0]), (path[1] if len(path) > 1 else "0")
    query = dict(parse_qsl(parts.query))
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
    }
    for name in ("sentinel_username", "sentinel_password"):
        if name in query:
            sentinel_kwargs[name.removeprefix("sentinel_")] = query.pop(name)
    tls = parts.scheme.lower().startswith("rediss")
    # the data nodes' connection settings, read the way redis-py reads any URL
    data_url = urlunsplit(
        (
            "rediss" if tls else "redis",
            userinfo + "sentinel-master",
            f"/{db}",
            urlencode(query),
            "",
        )
    )
    base = _client_from(data_url, shown, socket_timeout_s)
    kwargs = {
        k: v
        for k, v in base.connection_pool.connection_kwargs.items()
        if k not in ("host", "port", "connection_class")
    }
    base.close()
    if tls:
        kwargs["ssl"] = True
        sentinel_kwargs.update({k: v for k, v in kwargs.items() if k.startswith("ssl")})
    if not re.fullmatch(r"[A-Za-z0-9._-]+", service):
        raise ConfigError(f"--redis {shown}: {service!r} is not a Sentinel service name")
    try:
        sentinel = Sentinel(
            [_host_port(h, 26379) for h in hosts], sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        client = sentinel.master_for(service)
    except (ValueError, TypeError) as e:
        raise _fix_url_error(shown, e) from None
    return SentinelNodes(sentinel, service, client, shown)


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def data_credentials(url: str) -> bool:
    """Whether ``url`` gives the data nodes a user or password (userinfo, or ``password=`` /
    ``username=`` in the query) — not the TLS files or the Sentinels' own password."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    query = dict(parse_qsl(parts.query))
    return bool(userinfo) or bool(query.get("password") or query.get("username"))


def retryable(e: BaseException) -> bool:
    """An error that a refreshed slot map, a new connection or a short wait can cure."""
    return isinstance(
        e,
        (
            redis.ConnectionError,
            redis.TimeoutError,
            redis.exceptions.AskError,  # (MovedError too)
            redis.exceptions.TryAgainError,
            redis.exceptions.ClusterDownError,
            redis.exceptions.ReadOnlyError,
            redis.exceptions.BusyLoadingError,
            redis.exceptions.MasterDownError,
        ),
    ) or (isinstance(e, redis.ResponseError) and str(e).startswith(("LOADING", "MASTERDOWN")))
