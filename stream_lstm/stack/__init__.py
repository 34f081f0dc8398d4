"""The local stack: a real Apache Kafka broker (KRaft) and a real Redis, started by PID, and on
request a local Redis Cluster (3 masters + 3 replicas) next to them.

Used by ``stream-lstm stack up|down|status``, the test fixtures, the benchmarks and the demo.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from stream_lstm.stack import procs
from stream_lstm.stack.kafka import KafkaBroker, KafkaSpec, kafka_version
from stream_lstm.stack.redis import RedisServer, RedisSpec
from stream_lstm.stack.redis_cluster import ClusterSpec, NodeStatus, RedisCluster
from stream_lstm.stack.registry import RegistrySpec, SchemaRegistry

__all__ = [
    "ClusterSpec",
    "ComponentStatus",
    "KafkaBroker",
    "KafkaSpec",
    "RedisCluster",
    "RedisServer",
    "RedisSpec",
    "Stack",
]

CLUSTER_NODES = 6  # 3 masters + 3 replicas: ports BASE..BASE+5


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    pid: int | None
    rss_bytes: int | None
    ready: bool
    detail: str = ""
    # a Redis Cluster node only (None for the others): what ``detail`` says, as fields
    role: str | None = None  # master | replica | down | fail
    slots: int | None = None  # slots served (a dead master: those not yet taken over)
    master_of: str | None = None  # a replica's master (host:port)
    cluster_ok: bool | None = None  # its CLUSTER INFO cluster_state:ok

    @property
    def state(self) -> str:
        if self.pid is None:
            return "ready (not ours)" if self.ready else "stopped"
        return "ready" if self.ready else "starting or unhealthy"


@dataclass(frozen=True)
class UpResult:
    name: str
    address: str
    pid: int | None
    started: bool  # False when it was already running
    seconds: float


class Stack:
    """Kafka + Redis under one run directory (``<root>/kafka``, ``<root>/redis``), and a Redis
    Cluster in ``<root>/redis-cluster`` when ``redis_cluster_port`` (its base port) is given.

    A cluster that an earlier ``up`` started is found again from its ``cluster.json`` while any
    of its nodes runs, so ``status`` and ``down`` cover it without the flag.
    """

    def __init__(
        self,
        root: Path,
        cache_dir: Path,
        *,
        host: str = "127.0.0.1",
        kafka_port: int = 9092,
        controller_port: int = 9093,
        redis_port: int = 6379,
        kafka_heap: str = "512m",
        redis_password: str | None = None,
        redis_cluster_port: int | None = None,
        registry_port: int | None = None,
    ) -> None:
        self.root = root
        self.kafka = KafkaBroker(
            KafkaSpec(
                run_dir=root / "kafka",
                cache_dir=cache_dir,
                host=host,
                broker_port=kafka_port,
                controller_port=controller_port,
                heap=kafka_heap,
            )
        )
        self.redis = RedisServer(
            RedisSpec(run_dir=root / "redis", host=host, port=redis_port, password=redis_password)
        )
        self.cluster: RedisCluster | None = None
        cluster_dir = root / "redis-cluster"
        if redis_cluster_port is not None:
            ports = tuple(range(redis_cluster_port, redis_cluster_port + CLUSTER_NODES))
            self.cluster = RedisCluster(
                ClusterSpec(run_dir=cluster_dir, ports=ports, host=host, password=redis_password)
            )
        else:
            recorded = RedisCluster.recorded(cluster_dir, redis_password)
            if recorded is not None and recorded.pid() is not None:
                self.cluster = recorded
        reg_dir = root / "schema-registry"
        self.registry: SchemaRegistry | None = (
            SchemaRegistry(RegistrySpec(reg_dir, cache_dir, host=host, port=registry_port))
            if registry_port is not None
            else SchemaRegistry.recorded(reg_dir, cache_dir, host)
        )

    @property
    def bootstrap(self) -> str:
        return self.kafka.spec.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.spec.url

    def up(self) -> list[UpResult]:
        """Start whatever is not running yet (idempotent). Redis first: it is quick. A cluster
        with some nodes missing gets them restarted (and counts as started)."""
        results = []
        for comp, address in ((self.redis, self.redis_url), (self.kafka, self.bootstrap)):
            pid = comp.pid()
            if pid is not None:
                results.append(UpResult(comp.name, address, pid, started=False, seconds=0.0))
                continue
            t0 = time.monotonic()
            # a broker starts on a fresh log (its topics and offsets gone); Redis restarts on
            # its append-only file, so the states it had come back
            comp.start(fresh=comp is not self.redis)
            results.append(UpResult(comp.name, address, comp.pid(), True, time.monotonic() - t0))
        if self.cluster is not None:
            c = self.cluster
            if len(c.pids()) == len(c.spec.ports):
                results.append(UpResult(c.name, c.spec.url, c.pid(), started=False, seconds=0.0))
            else:
                seconds = c.start(fresh=c.pid() is None)
                results.append(UpResult(c.name, c.spec.url, c.pid(), True, seconds))
        if self.registry is not None:
            r = self.registry
            if r.pid() is not None:
                results.append(UpResult(r.name, r.url, r.pid(), started=False, seconds=0.0))
            else:
                seconds = r.start()
                results.append(UpResult(r.name, r.url, r.pid(), True, seconds))
        return results

    def down(self, grace_s: float = 30.0) -> list[tuple[str, bool]]:
        """Stop everything by PID; returns (name, was_running) pairs."""
        parts: list[KafkaBroker | RedisCluster | RedisServer | SchemaRegistry] = []
        if self.registry is not None:
            parts.append(self.registry)
        parts.append(self.kafka)
        if self.cluster is not None:
            parts.append(self.cluster)
        parts.append(self.redis)
        return [(c.name, c.stop(grace_s)) for c in parts]

    def status(self) -> list[ComponentStatus]:
        out = []
        for comp, address, detail in (
            (self.kafka, self.bootstrap, f"kafka {kafka_version()} (KRaft)"),
            (self.redis, self.redis_url, "redis (AOF on)"),
        ):
            pid = comp.pid()
            out.append(
                ComponentStatus(
                    name=comp.name,
                    address=address,
                    pid=pid,
                    rss_bytes=procs.rss_bytes(pid) if pid else None,
                    ready=comp.ready(),
                    detail=detail,
                )
            )
        if self.cluster is not None:
            out += [
                ComponentStatus(
                    name=self.cluster.name,
                    address=n.address,
                    pid=n.pid,
                    rss_bytes=n.rss_bytes,
                    ready=n.up,
                    detail=cluster_detail(n),
                    role=n.role,
                    slots=n.slots,
                    master_of=n.master_of,
                    cluster_ok=n.cluster_ok,
                )
                for n in self.cluster.nodes()
            ]
        if self.registry is not None:
            pid = self.registry.pid()
            out.append(
                ComponentStatus(
                    name=self.registry.name,
                    address=self.registry.url,
                    pid=pid,
                    rss_bytes=procs.rss_bytes(pid) if pid else None,
                    ready=self.registry.ready(),
                    detail=f"schema registry (Apicurio {self.registry.spec.version}, in memory)",
                )
            )
        return out


def cluster_detail(n: NodeStatus) -> str:
    """The ``part`` column of a cluster node in ``stack status``."""
    if n.role == "master":
        text = f"redis-cluster master ({n.slots} slots)"
    elif n.role == "replica":
        text = f"redis-cluster replica of {n.master_of}"
    else:  # down or fail
        text = f"redis-cluster node {'failed' if n.role == 'fail' else 'down'}"
        if n.slots:
            text += f" ({n.slots} slots not taken over)"
    if n.cluster_ok is False:
        text += ", cluster_state not ok"
    return text
