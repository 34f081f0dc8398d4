"""TLS and AUTH/ACL in every Redis mode the state store speaks, on real local servers: a Redis
Cluster with a password over TLS (client certificates, TLS on the cluster bus and the
replication links), a cluster reached as an ACL user that may run only the commands the store
needs, and a Sentinel set-up with passwords on the data nodes and on the sentinels, everything
over TLS, through a failover. The single-node cases are in test_security.py.

Each test starts its own nodes on free ports and stops them (by PID) when it ends."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import redis

from stream_lstm.errors import StateError
from stream_lstm.runtime.cache import StateCache
from stream_lstm.stack.redis_cluster import (
    ClusterSpec,
    RedisCluster,
    RedisSentinel,
    SentinelSpec,
    TlsFiles,
    free_ports,
)
from stream_lstm.stores.record import Layout, Snapshot, decode_any
from stream_lstm.stores.redis import RedisStateStore
from tests.integration.conftest import unique
from tests.integration.test_security import _tls_material
from tests.unit.test_state import feed

SECRET = "pw-" + unique("x")
SENTINEL_SECRET = "spw-" + unique("x")
LAYOUT = Layout("dddddddddddd", 2, 8, 6, 3)
KEYS = [f"entity-{i}" for i in range(48)]  # spread over the buckets, so over every master

# The smallest ACL the store works with (README): the commands it sends, the ones its write
# script runs (a script runs with its caller's permissions), and its namespace's keys only.
# +cluster|slots: the slot map; +info: replica count, cluster detection; +asking: a slot being
# migrated; +rpush: a model version's first start; +wait: --redis-min-replicas > 0; +ping: the
# readiness check. (+select too for a database other than 0 on a single node or Sentinel.)
STORE_COMMANDS = (
    "+cluster|slots", "+info", "+ping", "+script|load", "+evalsha", "+asking", "+wait",
    "+get", "+mget", "+set", "+getrange", "+strlen", "+setrange", "+pexpire",
    "+lrange", "+rpush",
)  # fmt: skip


def store_acl(namespace: str, password: str) -> tuple[str, ...]:
    """ACL SETUSER rules: nothing but the store's commands on ``<namespace>:*`` keys."""
    return ("reset", "on", f">{password}", "resetchannels", f"~{namespace}:*", *STORE_COMMANDS)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a certificate for 127.0.0.1 that it signed (server and client certificate)."""
    f = _tls_material(tmp_path_factory.mktemp("tls"))
    return TlsFiles(cert=f["server.crt"], key=f["server.key"], ca=f["ca.crt"])


def snapshot(keys: Sequence[str], n: int, t0: int) -> tuple[Snapshot, list[int]]:
    """A snapshot of ``keys`` after ``n`` events each from ``t0``, and their last event times."""
    c = StateCache(LAYOUT, np.zeros((2, 8)), np.zeros((2, 8)), keep_windows=False, capacity=64)
    slots = c.allocate(list(keys), [0] * len(keys))
    feed(c, slots, n, t0)
    return c.snapshot(c.dirty_slots()), [int(c.last_ts[s]) for s in slots]


def last_ts(store: RedisStateStore, keys: Sequence[str]) -> list[int]:
    out = []
    for rec in store.load(keys):
        assert rec is not None
        decoded = decode_any(rec)
        assert decoded is not None
        out.append(int(decoded.last_ts))
    return out


def save_and_load(store: RedisStateStore, n: int, t0: int) -> list[int]:
    snap, expected = snapshot(KEYS, n, t0)
    res = store.save(snap)
    assert (res.written, res.refused, res.wiped) == (len(KEYS), [], False)
    assert last_ts(store, KEYS) == expected
    return expected


def refused(url: str, ns: str) -> str:
    """The StateError message of a store that cannot connect with ``url``."""
    store = RedisStateStore(url, ns, LAYOUT)
    try:
        with pytest.raises(StateError) as e:
            store.connect()
    finally:
        store.close()
    return str(e.value)


def test_cluster_over_tls_with_a_password(tmp_path: Path, tls: TlsFiles) -> None:
    ports = free_ports(12)
    cluster = RedisCluster(
        ClusterSpec(
            run_dir=tmp_path, ports=ports[:6], bus_ports=ports[6:], password=SECRET, tls=tls
        )
    )
    ns = unique("tls")
    try:
        cluster.start()  # formed over TLS (redis-cli --tls), replicas linked over TLS
        with pytest.raises(redis.ConnectionError):
            redis.Redis("127.0.0.1", ports[0], socket_timeout=2).ping()  # no plain port

        seeds = f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
        query = tls.url_query()
        # WAIT 1: every save has to reach a replica over the TLS replication links
        url = f"rediss://:{SECRET}@{seeds}/0?{query}"
        store = RedisStateStore(url, ns, LAYOUT, min_replicas=1)
        try:
            store.connect()
            assert store.mode == "cluster"
            save_and_load(store, 3, 1000)
            assert SECRET not in store.url_shown and SECRET not in store.nodes.describe()
        finally:
            store.close()
        masters = cluster.masters()
        assert len(masters) == 3
        for m in masters:  # the TLS+password clients of the launcher itself
            assert any(cluster.client(m.port).scan_iter(f"{ns}:*", count=1000)), m.address

        wrong = refused(f"rediss://:{SECRET}-wrong@{seeds}/0?{query}", ns)
        assert "refused the credentials" in wrong and SECRET not in wrong
        # tls-auth-clients yes: a client without a certificate of the CA is turned away
        no_cert = refused(f"rediss://:{SECRET}@{seeds}/0?ssl_ca_certs={tls.ca}", ns)
        assert "cannot reach Redis" in no_cert and SECRET not in no_cert
    finally:
        cluster.stop(grace_s=5)
    assert cluster.pids() == {}


def test_cluster_over_tls_without_the_password_says_it_is_missing(
    tmp_path: Path, tls: TlsFiles
) -> None:
    ports = free_ports(6)
    cluster = RedisCluster(
        ClusterSpec(
            run_dir=tmp_path, ports=ports[:3], bus_ports=ports[3:], replicas=0, password=SECRET,
            tls=tls,
        )
    )  # fmt: skip
    try:
        cluster.start()
        missing = refused(f"rediss://127.0.0.1:{ports[0]}/0?{tls.url_query()}", unique("tls"))
        assert SECRET not in missing
        assert "needs a password or ACL user in the URL" in missing
    finally:
        cluster.stop(grace_s=5)


def test_cluster_as_an_acl_user_with_only_the_store_commands(tmp_path: Path) -> None:
    ports = free_ports(12)
    cluster = RedisCluster(
        ClusterSpec(run_dir=tmp_path, ports=ports[:6], bus_ports=ports[6:], password=SECRET)
    )
    ns = unique("acl")
    try:
        cluster.start()
        for p in ports[:6]:  # ACL users are per node: set on every one (replicas too)
            cluster.client(p).execute_command("ACL", "SETUSER", "app", *store_acl(ns, SECRET))
        seeds = f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
        url = f"redis://app:{SECRET}@{seeds}/0"
        store = RedisStateStore(url, ns, LAYOUT, min_replicas=1)  # the writes end with WAIT
        try:
            store.connect()
            assert store.mode == "cluster"
            save_and_load(store, 3, 1000)
            assert store.ping()
        finally:
            store.close()
        for m in cluster.masters():
            assert any(cluster.client(m.port).scan_iter(f"{ns}:*", count=1000)), m.address
        # the same user is kept out of other namespaces' keys
        other = refused(f"redis://app:{SECRET}@{seeds}/0", unique("other"))
        assert "NoPermissionError" in other and SECRET not in other
        wrong = refused(f"redis://app:{SECRET}-wrong@{seeds}/0", ns)
        assert "refused the credentials" in wrong and SECRET not in wrong
    finally:
        cluster.stop(grace_s=5)


def test_sentinel_over_tls_with_passwords_on_data_nodes_and_sentinels(
    tmp_path: Path, tls: TlsFiles
) -> None:
    ports = free_ports(5)
    s = RedisSentinel(
        SentinelSpec(
            run_dir=tmp_path, data_ports=ports[:2], sentinel_ports=ports[2:], password=SECRET,
            sentinel_password=SENTINEL_SECRET, tls=tls,
        )
    )  # fmt: skip
    ns = unique("sentinel")
    store = None
    try:
        s.start()
        with pytest.raises(redis.AuthenticationError):  # the sentinels ask for their password
            redis.Redis("127.0.0.1", ports[2], socket_timeout=2, **tls.client_kwargs()).ping()

        sentinels = ",".join(f"127.0.0.1:{p}" for p in ports[2:])
        url = (
            f"rediss+sentinel://:{SECRET}@{sentinels}/stream-lstm?{tls.url_query()}"
            f"&sentinel_password={SENTINEL_SECRET}"
        )
        store = RedisStateStore(url, ns, LAYOUT, ttl_ms=60_000, min_replicas=0)
        store.connect()
        assert store.mode == "sentinel"
        assert f"master 127.0.0.1:{ports[0]}" in store.nodes.describe()
        before = save_and_load(store, 3, 1000)
        shown = store.url_shown + store.nodes.describe()
        assert SECRET not in shown and SENTINEL_SECRET not in shown
        assert s.client(ports[0]).wait(1, 5000) == 1  # the replica has it (over TLS)

        s.kill_node(ports[0])
        assert s.wait_failover(ports[0], timeout_s=30) == f"127.0.0.1:{ports[1]}"
        assert last_ts(store, KEYS) == before  # read from the promoted replica
        save_and_load(store, 5, 2000)  # written to the new master
        assert f"master 127.0.0.1:{ports[1]}" in store.nodes.describe()
    finally:
        if store is not None:
            store.close()
        s.stop(grace_s=5)
    assert s.pids() == {}
