"""The local stack: a real Apache Kafka broker (KRaft) and a real Redis, started by PID.

Used by ``stream-lstm stack up|down|status``, the test fixtures, the benchmarks and the demo.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from stream_lstm.stack import procs
from stream_lstm.stack.kafka import KafkaBroker, KafkaSpec, kafka_version
from stream_lstm.stack.redis import RedisServer, RedisSpec

__all__ = ["ComponentStatus", "KafkaBroker", "KafkaSpec", "RedisServer", "RedisSpec", "Stack"]


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    address: str
    pid: int | None
    rss_bytes: int | None
    ready: bool
    detail: str = ""

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
    """Kafka + Redis under one run directory (``<root>/kafka``, ``<root>/redis``)."""

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

    @property
    def bootstrap(self) -> str:
        return self.kafka.spec.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.spec.url

    def up(self) -> list[UpResult]:
        """Start whatever is not running yet (idempotent). Redis first: it is quick."""
        results = []
        for comp, address in ((self.redis, self.redis_url), (self.kafka, self.bootstrap)):
            pid = comp.pid()
            if pid is not None:
                results.append(UpResult(comp.name, address, pid, started=False, seconds=0.0))
                continue
            t0 = time.monotonic()
            comp.start(fresh=True)
            results.append(UpResult(comp.name, address, comp.pid(), True, time.monotonic() - t0))
        return results

    def down(self, grace_s: float = 30.0) -> list[tuple[str, bool]]:
        """Stop both by PID; returns (name, was_running) pairs."""
        return [(c.name, c.stop(grace_s)) for c in (self.kafka, self.redis)]

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
        return out
