"""How the Redis store reads ``--redis`` and lays out its keys (no network: nothing connects)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from stream_lstm.errors import ConfigError
from stream_lstm.stores.record import Layout
from stream_lstm.stores.redis import BUCKETS, TAG_SLOT, RedisStateStore, bucket_of
from stream_lstm.stores.redis_nodes import ClusterNodes, Nodes, SentinelNodes, open_nodes

LAY = Layout("v1v1v1v1v1v1", 2, 4, 5, 3)


def test_one_url_is_one_node_and_seed_lists_are_a_cluster() -> None:
    assert type(open_nodes("redis://127.0.0.1:6379/2")) is Nodes
    c = open_nodes("redis://u:pw@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0")
    assert isinstance(c, ClusterNodes)
    assert c.seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert "pw" not in c.shown
    # every node's client gets the URL's credentials and settings, at its own address
    kw = c.client("10.0.0.9:7005").connection_pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["password"], kw["username"]) == ("10.0.0.9", 7005, "pw", "u")


def test_tls_settings_reach_every_cluster_node() -> None:
    c = open_nodes("rediss://h1:7000,h2:7001/0?ssl_cert_reqs=none")
    assert isinstance(c, ClusterNodes)
    pool = c.client("h3:7002").connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"


def test_sentinel_url_names_the_service_and_the_sentinels() -> None:
    s = open_nodes("redis+sentinel://:secret@s1:26379,s2/mymaster/3?sentinel_password=sp")
    assert isinstance(s, SentinelNodes)
    assert s.service == "mymaster"
    assert [(c.connection_pool.connection_kwargs["host"]) for c in s.sentinel.sentinels] == [
        "s1",
        "s2",
    ]
    assert s.sentinel.sentinels[1].connection_pool.connection_kwargs["port"] == 26379
    assert s.sentinel.sentinels[0].connection_pool.connection_kwargs["password"] == "sp"
    assert s.sentinel.connection_kwargs["password"] == "secret"
    assert s.sentinel.connection_kwargs["db"] == 3
    assert "secret" not in s.shown


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://h1:7000,h2:7001/3", "only database 0"),
        ("redis+sentinel://s1:26379", "redis+sentinel://"),
        ("redis+sentinel://s1:26379/bad{name}", "service name"),
        ("redis://h1:7000,h2:x/0", "host:port"),
    ],
)
def test_bad_cluster_or_sentinel_urls_say_what_to_fix(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        open_nodes(url)
    assert says in str(e.value)
    assert e.value.exit_code == 2


def test_braces_in_the_namespace_are_refused() -> None:
    with pytest.raises(ConfigError, match="hash tag"):
        RedisStateStore("redis://127.0.0.1:1/0", "app{x}", LAY)


def test_a_bucket_s_records_and_marker_share_one_slot() -> None:
    store = RedisStateStore("redis://127.0.0.1:1/0", "ns", LAY)
    for key in ("sensor-1", "k{odd}", "ü", ""):
        b = bucket_of(key)
        name = store.record_key(key)
        assert name == f"ns:{LAY.version}:{{s{b}}}:{key}"
        assert key_slot(name.encode()) == key_slot(store._epoch_key(b).encode()) == TAG_SLOT[b]
    # the 1,024 buckets spread over the slots, so over any number of shards
    assert len(set(TAG_SLOT)) == BUCKETS
    per_third = [sum(1 for s in TAG_SLOT if s * 3 // 16384 == i) for i in range(3)]
    assert min(per_third) > BUCKETS // 3 * 0.85


def test_calls_stay_in_one_bucket_on_a_cluster_and_are_packed_on_one_node() -> None:
    keys = [f"k{i}" for i in range(300)]
    single = RedisStateStore("redis://127.0.0.1:1/0", "ns", LAY, chunk=64)
    calls = single._calls(keys, 64)
    assert sum(len(p) for call in calls for _, p in call) == 300
    assert all(sum(len(p) for _, p in call) <= 64 for call in calls)
    assert len(calls) <= 300 // 64 + 2  # packed: about keys / chunk calls

    cluster = RedisStateStore("redis://h1:7000,h2:7001/0", "ns", LAY, chunk=64)
    calls = cluster._calls(keys, 64)
    assert all(len(call) == 1 for call in calls)  # one bucket (so one slot) per call
    assert sorted(i for call in calls for _, p in call for i in p) == list(range(300))
    for call in calls:
        ((b, part),) = call
        assert {bucket_of(keys[i]) for i in part} == {b}
