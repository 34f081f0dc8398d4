"""State on a real local Redis Cluster (3 masters + 3 replicas) and behind real Sentinels:
parity with `predict` through the cluster, a master killed with -9, slots moved while a worker
writes, the whole cluster stopped and resumed, a Sentinel failover. Each fault test ends with
the same three checks as tests/integration/test_faults.py (every event forecast, duplicates
identical, every key's stored state equal to an uninterrupted run's).

The cluster and the Sentinel set-up are started once per test session (conftest.py); a test
that kills a node starts it again (it rejoins as a replica) before it ends.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_lstm.data.synthetic import synthetic_frame
from stream_lstm.stack.redis_cluster import RedisCluster, redis_cli
from stream_lstm.stack.redis_sentinel import RedisSentinel
from tests.integration.conftest import Services, unique
from tests.integration.faults import FaultReport, PacedProducer, WorkerProc, three_checks
from tests.integration.helpers import forecasts_frame, make_topics, produce, read_all, wait_for
from tests.integration.test_faults import finish, keyed_events
from tests.integration.test_worker import assert_each_event_forecast_once, assert_parity

pytestmark = pytest.mark.chaos


def ready(w: WorkerProc) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_three_workers_on_twelve_partitions_through_the_cluster_equal_predict(
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    tmp_path: Path,
    redis_cluster: RedisCluster,
) -> None:
    frame = synthetic_frame(keys=240, rows=25, features=2, seed=31)
    events = keyed_events(keys=240, rows=25, seed=31)
    n = len(events)
    topics = make_topics(topic_factory, partitions=12)
    group = unique("g")
    workers = [
        WorkerProc(
            synth_model, services.bootstrap, redis_cluster.spec.url, topics, group, tmp_path
        ).start()
        for _ in range(3)
    ]
    wait_for(  # the group has settled: the 12 partitions split over the three workers
        lambda: (
            all(w.metric("stream_lstm_assigned_partitions") >= 1 for w in workers)
            and sum(w.metric("stream_lstm_assigned_partitions") for w in workers) == 12
        ),
        180,
        "the partitions split over three workers",
    )
    produce(services.bootstrap, topics.input, events)
    wait_for(
        lambda: sum(w.metric("stream_lstm_forecasts_out_total") for w in workers) >= n,
        240,
        "every event forecast by the three workers",
    )
    for w in workers:
        assert w.metric("stream_lstm_forecasts_out_total") > 0, "each worker took partitions"
        assert "(cluster)" in w.log_text() and "wait for 1 replica" in w.log_text()
        assert w.stop() == 0
    got = forecasts_frame(read_all(services.bootstrap, topics.output, n), "f0")
    assert_each_event_forecast_once(got, n)
    assert_parity(synth_model, frame, got)
    # the records are spread over every master (one hash tag per key bucket, not per node)
    ns = f"slstm:{group}:*:{{s*}}:*"  # the records (not the epoch markers)
    per_master = [
        sum(1 for _ in redis_cluster.client(m.port).scan_iter(ns, count=1000))
        for m in redis_cluster.masters()
    ]
    assert len(per_master) == 3 and min(per_master) > 240 * 0.2, per_master


def _stream_with(
    fault: Callable[[WorkerProc], None],
    name: str,
    redis_url: str,
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    tmp_path: Path,
    *extra: str,
    rate: float = 1200,
) -> WorkerProc:
    """One worker on ``redis_url``, events paced in; ``fault`` runs mid-stream; then the three
    checks. Returns the (stopped) worker for more assertions on its log."""
    events = keyed_events(keys=300, rows=40, seed=hash(name) % 1000)
    n = len(events)
    topics = make_topics(topic_factory, partitions=4)
    group = unique("g")
    report = FaultReport(name, events=n, keys=300, partitions=4)
    w = WorkerProc(
        synth_model, services.bootstrap, redis_url, topics, group, tmp_path, *extra
    ).start()
    w.wait_up()
    producer = PacedProducer(services.bootstrap, topics.input, events, rate=rate)
    producer.start()
    w.wait_first_forecast()
    time.sleep(2)
    t0 = time.monotonic()
    fault(w)
    report.recovery_s.append(time.monotonic() - t0)
    report.kills = 1
    finish([w], producer, n)
    three_checks(report, synth_model, services.bootstrap, redis_url, f"slstm:{group}", topics, n)
    report.write()
    return w


def test_a_master_killed_mid_stream_fails_over_and_loses_nothing(
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    tmp_path: Path,
    redis_cluster: RedisCluster,
) -> None:
    """kill -9 of a master with --redis-min-replicas 1: its replica is promoted; until the
    killed node is back (as the new master's replica) that shard's writes cannot reach a
    replica, so the worker waits, unready, with its offsets uncommitted; then it carries on."""
    seen: dict[str, object] = {}

    def kill_a_master(w: WorkerProc) -> None:
        victim = redis_cluster.masters()[0].port
        redis_cluster.kill_node(victim)
        seen["new_master"] = redis_cluster.wait_failover(victim, timeout_s=60)
        wait_for(lambda: not ready(w), 30, "the worker unready while a shard has no replica")
        redis_cluster.start_node(victim)
        redis_cluster.wait_ok(60, links=True)
        wait_for(lambda: ready(w), 60, "the worker ready again")
        seen["victim"] = victim

    w = _stream_with(
        kill_a_master, "cluster master kill -9", redis_cluster.spec.url, services,
        topic_factory, synth_model, tmp_path, "--redis-min-replicas", "1",
    )  # fmt: skip
    victim_role = {n.port: n.role for n in redis_cluster.nodes()}[int(str(seen["victim"]))]
    assert victim_role == "replica", "the killed master came back as a replica"
    assert "WAIT" in w.log_text() or "Redis:" in w.log_text()


def test_slots_moved_while_the_worker_writes_lose_nothing(
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    tmp_path: Path,
    redis_cluster: RedisCluster,
) -> None:
    """`redis-cli --cluster reshard` moves 1,500 slots from one master to another mid-stream
    (ASK and MOVED redirections, TRYAGAIN on half-moved slots); then moves them back."""

    def reshard(w: WorkerProc) -> None:
        src, dst = redis_cluster.masters()[:2]
        ids = {
            m.port: redis_cluster.client(m.port).execute_command("CLUSTER", "MYID").decode()
            for m in (src, dst)
        }
        for a, b in ((src, dst), (dst, src)):
            subprocess.run(
                [
                    redis_cli(), "--cluster", "reshard", f"127.0.0.1:{a.port}",
                    "--cluster-from", ids[a.port], "--cluster-to", ids[b.port],
                    "--cluster-slots", "1500", "--cluster-yes", "--cluster-pipeline", "50",
                ],
                check=True, capture_output=True, timeout=180,
            )  # fmt: skip
            time.sleep(1)
        redis_cluster.wait_ok(60)

    _stream_with(
        reshard, "cluster reshard", redis_cluster.spec.url, services, topic_factory,
        synth_model, tmp_path,
    )  # fmt: skip


def test_the_whole_cluster_down_for_a_while_then_back(
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    tmp_path: Path,
    redis_cluster: RedisCluster,
) -> None:
    """Every node stopped (SIGSTOP) for about 15 s while events keep coming: the worker is
    unready, commits nothing it cannot store; resumed, it carries on."""

    def outage(w: WorkerProc) -> None:
        nodes = [n.port for n in redis_cluster.nodes()]
        for p in nodes:
            redis_cluster.pause_node(p)
        try:
            wait_for(lambda: not ready(w), 30, "the worker unready while the cluster is down")
            time.sleep(12)
        finally:
            for p in nodes:
                redis_cluster.resume_node(p)
        redis_cluster.wait_ok(60)
        wait_for(lambda: ready(w), 90, "the worker ready again")

    _stream_with(
        outage, "whole cluster down", redis_cluster.spec.url, services, topic_factory,
        synth_model, tmp_path, rate=600,
    )  # fmt: skip


def test_sentinel_promotes_a_replica_and_the_worker_follows(
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    tmp_path: Path,
    redis_sentinel: RedisSentinel,
) -> None:
    seen: dict[str, str] = {}

    def kill_master(w: WorkerProc) -> None:
        old = redis_sentinel.master_address()
        port = int(old.rsplit(":", 1)[1])
        redis_sentinel.kill_node(port)
        seen["old"], seen["new"] = old, redis_sentinel.wait_failover(port, timeout_s=60)
        redis_sentinel.start_node(port)  # back as the new master's replica (Sentinel says so)
        # writes wait for a replica: until the sentinels have turned the killed node into one
        # and it is linked (8-10 s and more), the worker cannot write, yet /readyz may still
        # say ready from its last write before the kill (a CI run stopped it then: exit 1)
        redis_sentinel.wait_ok(90)
        wait_for(lambda: ready(w), 90, "the worker ready on the new master")

    w = _stream_with(
        kill_master, "sentinel failover", redis_sentinel.url, services, topic_factory,
        synth_model, tmp_path,
    )  # fmt: skip
    assert seen["new"] != seen["old"]
    assert "(sentinel)" in w.log_text()


def test_a_manual_failover_is_followed(
    services: Services,
    topic_factory: Callable[..., str],
    synth_model: Path,
    tmp_path: Path,
    redis_cluster: RedisCluster,
) -> None:
    """`CLUSTER FAILOVER` on a replica mid-stream: the old master stays up, now a replica (its
    WAIT answers an error). Found by an outside trial: the worker kept sending its writes there
    for minutes; it must follow the new master within seconds."""

    def manual_failover(w: WorkerProc) -> None:
        m = redis_cluster.masters()[0]
        r = next(n for n in redis_cluster.nodes() if n.master_of == m.address)
        redis_cluster.client(r.port).execute_command("CLUSTER", "FAILOVER")
        wait_for(
            lambda: {n.port: n.role for n in redis_cluster.nodes()}[r.port] == "master",
            60,
            "the replica promoted",
        )
        redis_cluster.wait_ok(60, links=True)
        wait_for(lambda: ready(w), 30, "the worker ready on the new master")

    _stream_with(
        manual_failover, "cluster manual failover", redis_cluster.spec.url, services,
        topic_factory, synth_model, tmp_path,
    )  # fmt: skip


def test_a_shard_wiped_is_one_incident_and_seeds_from_elsewhere_are_refused(
    services: Services, redis_cluster: RedisCluster, redis_sentinel: RedisSentinel
) -> None:
    """A master's data lost (FLUSHALL on one shard): the first write that meets it finds every
    bucket of that shard at once (not one per bucket as keys come by). And URLs that mix in a
    node of another set-up are refused with what to fix."""
    from stream_lstm.errors import ConfigError, StateError
    from stream_lstm.stores.record import Layout
    from stream_lstm.stores.redis import BUCKETS, RedisStateStore
    from tests.integration.test_store_contract import cache, write

    lay = Layout("cccccccccccc", 2, 8, 6, 3)
    ns = unique("wipe")
    store = RedisStateStore(redis_cluster.spec.url, ns, lay, ttl_ms=60_000)
    store.connect()
    c, slots = cache(lay, ["k1", "k2", "k3"])
    write(store, c, slots, 2, 1000)
    shard = redis_cluster.masters()[1]
    redis_cluster.client(shard.port).flushall()
    before = list(store.epochs)
    c2, slots2 = cache(lay, ["k1", "k2", "k3"])
    from tests.unit.test_state import feed

    feed(c2, slots2, 1, 5000)
    res = store.save(c2.snapshot(c2.dirty_slots()))
    found = store.wiped() or res.wiped  # (k1..k3 may all live on other shards: then the
    if not found:  # idle check, which reads every marker, finds it)
        store._check_markers()
        found = store.wiped()
    assert found, "the lost shard was not noticed"
    changed = sum(1 for a, b in zip(before, store.epochs, strict=True) if a != b)
    assert changed > BUCKETS // 6, f"only {changed} buckets' markers renewed"
    store._check_markers()
    assert not store.wiped(), "the same shard's loss reported a second time"
    store.close()

    single = services.redis_url.split("//", 1)[1].split("/", 1)[0]
    bad = RedisStateStore(f"redis://{redis_cluster.masters()[0].address},{single}/0", ns, lay)
    with pytest.raises(ConfigError, match="not a Redis Cluster node"):
        bad.connect()
    wrong = RedisStateStore(
        f"redis+sentinel://127.0.0.1:{redis_sentinel.data_ports[0]}/stream-lstm", ns, lay
    )
    with pytest.raises(StateError, match="must be Sentinels"):
        wrong.connect()
