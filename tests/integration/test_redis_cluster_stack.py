"""The local Redis Cluster and Sentinel set-up themselves: `stack up|status|down --redis-cluster`
through the CLI with a master killed -9 in between, a paused master failing over and coming back
as a replica, a full restart keeping the data, and a Sentinel failover.

Each test starts its own nodes on free ports (a cluster is up in about 2 s, a failover takes
about 3-4 s with the 2 s node timeout), except the last, which checks the session fixtures that
the state-store tests use."""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode
from redis.sentinel import Sentinel

from stream_lstm.cli import main
from stream_lstm.errors import StackError
from stream_lstm.stack import procs
from stream_lstm.stack.redis_cluster import (
    CLUSTER_SLOTS,
    ClusterSpec,
    RedisCluster,
    RedisSentinel,
    SentinelSpec,
    free_ports,
)


def free_cluster_base() -> int:
    """A base port with BASE..BASE+5 and BASE+10000..BASE+10005 free (below the ephemeral
    range that free ports come from, so the Kafka ports cannot collide with it)."""
    for _ in range(200):
        base = random.randrange(20000, 22400, 6)
        wanted = [*range(base, base + 6), *range(base + 10000, base + 10006)]
        if all(procs.port_is_free("127.0.0.1", p) for p in wanted):
            return base
    raise AssertionError("no free block of cluster ports found")


@dataclass(frozen=True)
class Row:
    part: str
    address: str
    state: str
    pid: int | None

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1].split("/")[0])


def status_rows(out: str) -> list[Row]:
    """The rows of the `stack status` table (printed wide enough not to fold)."""
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] != "part":
            rows.append(
                Row(cells[0], cells[1], cells[2], None if cells[3] == "-" else int(cells[3]))
            )
    return rows


def test_stack_up_with_a_redis_cluster_survives_a_killed_master_and_down_stops_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the status table on one line per row
    base = free_cluster_base()
    kafka, controller, single = free_ports(3)
    flags = [
        "--dir", str(tmp_path / "stack"),
        "--kafka-port", str(kafka), "--controller-port", str(controller),
        "--redis-port", str(single), "--kafka-heap", "256m",
    ]  # fmt: skip
    cluster_flags = ["--redis-cluster", "--redis-cluster-port", str(base)]
    pids: set[int] = set()
    try:
        assert main(["stack", "up", *flags, *cluster_flags]) == 0
        out = capsys.readouterr().out
        seeds = ",".join(f"127\\.0\\.0\\.1:{p}" for p in range(base, base + 3))
        assert re.search(rf"redis-cluster: started at redis://{seeds}/0 \(pid \d+\)", out), out

        assert main(["stack", "status", *flags, *cluster_flags]) == 0
        rows = status_rows(capsys.readouterr().out)
        pids = {r.pid for r in rows if r.pid is not None}
        assert len(pids) == 8  # Kafka, the single Redis and six cluster nodes
        masters = [r for r in rows if r.part.startswith("redis-cluster master")]
        replicas = [r for r in rows if r.part.startswith("redis-cluster replica of")]
        assert sorted(r.port for r in masters) == [base, base + 1, base + 2]
        assert sorted(r.port for r in replicas) == [base + 3, base + 4, base + 5]
        assert sum(int(re.findall(r"\((\d+) slots\)", r.part)[0]) for r in masters) == 16384
        assert all(r.state == "ready" for r in rows)

        # kill -9 a master: its replica takes over its slots
        cluster = RedisCluster.recorded(tmp_path / "stack" / "redis-cluster")
        assert cluster is not None
        victim = masters[0]
        (heir,) = [r for r in replicas if r.part.endswith(f"of {victim.address}")]
        cluster.kill_node(victim.port)
        assert not procs.is_alive(victim.pid or 0)
        assert cluster.wait_failover(victim.port, timeout_s=60) == heir.address

        assert main(["stack", "status", *flags]) == 3  # found without the flags; one node down
        rows = {r.address: r for r in status_rows(capsys.readouterr().out)}
        assert rows[victim.address].state == "stopped"
        assert rows[victim.address].part in ("redis-cluster node failed", "redis-cluster node down")
        assert rows[heir.address].part.startswith("redis-cluster master (")
        assert len([r for r in rows.values() if "master (" in r.part]) == 3

        # `up` again restarts the missing node: it rejoins as the new master's replica
        assert main(["stack", "up", *flags, *cluster_flags]) == 0
        out = capsys.readouterr().out
        assert "kafka: already running" in out and "redis-cluster: started" in out
        assert main(["stack", "status", *flags]) == 0
        rows = {r.address: r for r in status_rows(capsys.readouterr().out)}
        assert rows[victim.address].part == f"redis-cluster replica of {heir.address}"
        assert rows[victim.address].pid is not None
        pids.add(rows[victim.address].pid)
    finally:
        assert main(["stack", "down", *flags]) == 0
    out = capsys.readouterr().out
    assert "redis-cluster: stopped" in out and "kafka: stopped" in out and "redis: stopped" in out
    assert pids and not any(procs.is_alive(p) for p in pids)
    assert main(["stack", "status", *flags, *cluster_flags]) == 3
    assert main(["stack", "down", *flags, *cluster_flags]) == 0
    assert "redis-cluster: was not running" in capsys.readouterr().out


def test_paused_master_fails_over_comes_back_as_replica_and_data_survives_a_restart(
    tmp_path: Path,
) -> None:
    ports = free_ports(12)
    password = 's3cret "pw"'
    cluster = RedisCluster(
        ClusterSpec(run_dir=tmp_path, ports=ports[:6], bus_ports=ports[6:], password=password)
    )

    def client() -> redis.RedisCluster:
        return redis.RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports[:3]], password=password
        )

    try:
        cluster.start()
        assert cluster.start() == 0.0  # already running: nothing to do
        assert cluster.ready()
        rc = client()
        for i in range(200):
            rc.set(f"k{i}", i)
        for m in cluster.masters():
            assert cluster.client(m.port).wait(1, 5000) == 1  # every write is on a replica too
        replica = next(n for n in cluster.nodes() if n.role == "replica")
        with pytest.raises(StackError, match="served no slots"):
            cluster.wait_failover(replica.port, timeout_s=1)

        victim = cluster.masters()[0].port
        cluster.pause_node(victim)
        t0 = time.monotonic()
        new = cluster.wait_failover(victim, timeout_s=60)
        failover_s = time.monotonic() - t0
        cluster.resume_node(victim)
        cluster.wait_ok(60, links=True)
        nodes = {n.port: n for n in cluster.nodes()}
        assert nodes[victim].role == "replica" and nodes[victim].master_of == new
        assert sum(n.slots for n in nodes.values()) == CLUSTER_SLOTS
        assert failover_s < 30
        assert [rc.get(f"k{i}") for i in range(200)] == [str(i).encode() for i in range(200)]
        rc.close()

        # a full stop, then a start from the nodes' directories: same cluster, same data
        for m in cluster.masters():
            assert cluster.client(m.port).wait(1, 5000) == 1
        assert cluster.stop() is True
        assert cluster.pid() is None and cluster.stop() is False
        cluster.start(fresh=False)
        rc = client()
        assert [rc.get(f"k{i}") for i in range(200)] == [str(i).encode() for i in range(200)]
        rc.close()
    finally:
        cluster.stop(grace_s=10)
    assert cluster.pids() == {}


def test_sentinel_promotes_the_replica_when_the_master_is_killed(tmp_path: Path) -> None:
    ports = free_ports(5)
    s = RedisSentinel(
        SentinelSpec(
            run_dir=tmp_path, data_ports=ports[:2], sentinel_ports=ports[2:], password="pw"
        )
    )
    try:
        s.start()
        roles = {n.port: n.role for n in s.nodes()}
        assert roles == {
            ports[0]: "master", ports[1]: "replica",
            ports[2]: "sentinel", ports[3]: "sentinel", ports[4]: "sentinel",
        }  # fmt: skip
        assert s.master_address() == f"127.0.0.1:{ports[0]}"
        s.client(ports[0]).set("before", "1")
        assert s.client(ports[0]).wait(1, 5000) == 1

        s.kill_node(ports[0])
        assert s.wait_failover(ports[0], timeout_s=60) == f"127.0.0.1:{ports[1]}"
        found = Sentinel([("127.0.0.1", p) for p in ports[2:]], socket_timeout=2)
        master = found.master_for("stream-lstm", password="pw", socket_timeout=2)
        assert master.get("before") == b"1"
        master.set("after", "2")

        s.start_node(ports[0], follow_master=True)
        s.wait_ok(60)
        nodes = {n.port: n for n in s.nodes()}
        # the ex-master rejoins as a replica of the promoted node; on a loaded machine the
        # sentinels may have failed over once more since (back to it): either way the two data
        # nodes must be one master and its replica, with every write
        head = ports[1] if nodes[ports[1]].role == "master" else ports[0]
        tail = ports[0] if head == ports[1] else ports[1]
        assert nodes[head].role == "master", s._describe()
        assert nodes[tail].role == "replica", s._describe()
        assert nodes[tail].master_of == f"127.0.0.1:{head}", s._describe()
        assert s.client(head).get("before") == b"1" and s.client(head).get("after") == b"2"
        assert s.ready()
    finally:
        assert s.stop(grace_s=10) is True
    assert s.pids() == {}


def test_session_fixtures_are_whole_and_reachable_through_their_urls(
    redis_cluster: RedisCluster, redis_sentinel: RedisSentinel
) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3 and sum(m.slots for m in masters) == CLUSTER_SLOTS
    seeds = redis_cluster.spec.url.removeprefix("redis://").removesuffix("/0").split(",")
    rc = redis.RedisCluster(
        startup_nodes=[ClusterNode(h, int(p)) for h, p in (a.rsplit(":", 1) for a in seeds)]
    )
    key = f"fixture-check-{random.random()}"
    rc.set(key, "v", px=60_000)
    assert rc.get(key) == b"v"
    rc.close()

    url = redis_sentinel.url
    assert url.startswith("redis+sentinel://") and url.endswith("/stream-lstm")
    hosts = url.removeprefix("redis+sentinel://").split("/")[0].split(",")
    found = Sentinel([(h, int(p)) for h, p in (a.rsplit(":", 1) for a in hosts)], socket_timeout=2)
    host, port = found.discover_master("stream-lstm")
    assert f"{host}:{port}" == redis_sentinel.master_address()
    assert port in redis_sentinel.data_ports
    master = found.master_for("stream-lstm", socket_timeout=2)
    master.set(key, "v", px=60_000)
    assert master.get(key) == b"v"
