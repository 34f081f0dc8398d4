"""How the Redis store reads ``--redis`` and lays out its keys (no network: nothing connects)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from stream_lstm.errors import ConfigError, StateError
from stream_lstm.stores.record import Layout
from stream_lstm.stores.redis import (
    ATTEMPTS,
    BUCKETS,
    TAG_SLOT,
    Call,
    RedisStateStore,
    bucket_of,
)
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


# -- one round: redirections and retries, against scripted nodes (no network) ---------------
class FakePipe:
    def __init__(self, node: FakeNode) -> None:
        self.node, self.cmds = node, []  # type: ignore[var-annotated]

    def execute_command(self, *args: object) -> None:
        self.cmds.append(args)

    def execute(self, raise_on_error: bool = True) -> list[object]:
        self.node.sent.append(self.cmds)
        return [self.node.answer(c) for c in self.cmds]


class FakeNode:
    def __init__(self, answer: Callable[[tuple[object, ...]], object]) -> None:
        self.answer, self.sent = answer, []  # type: ignore[var-annotated]
        self.connection_pool = SimpleNamespace(disconnect=lambda: None)

    def pipeline(self, transaction: bool = False) -> FakePipe:
        return FakePipe(self)

    def script_load(self, script: str) -> str:
        self.sent.append([("SCRIPT LOAD",)])
        return "sha"


class FakeNodes(ClusterNodes):
    def __init__(self, nodes: dict[str, FakeNode], owner: Callable[[int], str]) -> None:
        super().__init__(seeds=[], base=None, shown="fake")  # type: ignore[arg-type]
        self.fakes, self.owner, self.refreshes = nodes, owner, 0

    def client(self, addr: str) -> Any:
        return self.fakes[addr]

    def refresh(self) -> None:
        self.refreshes += 1

    def node_of(self, slot: int) -> str:
        return self.owner(slot)

    def masters(self) -> list[str]:
        return sorted(self.fakes)


def store_on(nodes: FakeNodes) -> RedisStateStore:
    s = RedisStateStore("redis://h1:1,h2:2/0", "ns", LAY)
    s.nodes = nodes
    return s


def test_moved_refreshes_the_slot_map_and_retries_on_the_new_owner() -> None:
    moved = {"done": False}
    a = FakeNode(lambda c: redis.exceptions.MovedError("3999 b:2"))
    b = FakeNode(lambda c: b"ok")
    nodes = FakeNodes({"a:1": a, "b:2": b}, lambda slot: "b:2" if moved["done"] else "a:1")

    def refresh() -> None:
        moved["done"] = True

    nodes.refresh = refresh  # type: ignore[method-assign]
    got = store_on(nodes)._round("t", [Call(5, ("GET", "x"), [], 1)])
    assert got == [b"ok"] and len(a.sent) == 1 and len(b.sent) == 1


def test_ask_goes_to_the_named_node_with_asking_then_back_to_the_owner() -> None:
    a = FakeNode(lambda c: redis.exceptions.AskError("3999 b:2"))
    b = FakeNode(lambda c: "OK" if c[0] == "ASKING" else b"v")
    got = store_on(FakeNodes({"a:1": a, "b:2": b}, lambda slot: "a:1"))._round(
        "t", [Call(5, ("GET", "x"), [], 1)]
    )
    assert got == [b"v"]
    assert b.sent == [[("ASKING",), ("GET", "x")]]


def test_only_the_failed_calls_are_retried_and_tryagain_is_bounded() -> None:
    a = FakeNode(lambda c: redis.exceptions.TryAgainError("TRYAGAIN") if c[1] == "bad" else b"1")
    store = store_on(FakeNodes({"a:1": a}, lambda slot: "a:1"))
    with pytest.raises(StateError, match="TryAgainError"):
        store._round("t", [Call(1, ("GET", "good"), [], 1), Call(1, ("GET", "bad"), [], 1)])
    assert a.sent[0] == [("GET", "good"), ("GET", "bad")]
    assert all(cmds == [("GET", "bad")] for cmds in a.sent[1:]) and len(a.sent) == ATTEMPTS


def test_a_missing_replica_fails_the_write_at_once_and_an_unknown_error_is_not_retried() -> None:
    a = FakeNode(lambda c: 0 if c[0] == "WAIT" else [1, [], []])
    store = store_on(FakeNodes({"a:1": a}, lambda slot: "a:1"))
    with pytest.raises(StateError, match="0 of 1 replica"):
        store._round("t", [Call(1, ("EVALSHA", "x"), [], 1)], wait=1)
    assert len(a.sent) == 1 and a.sent[0][-1][0] == "WAIT"
    oom = FakeNode(lambda c: redis.exceptions.OutOfMemoryError("OOM command not allowed"))
    with pytest.raises(StateError, match="OOM"):
        store_on(FakeNodes({"a:1": oom}, lambda slot: "a:1"))._round(
            "t", [Call(1, ("GET", "x"), [], 1)]
        )
    assert len(oom.sent) == 1


def test_noscript_on_a_promoted_replica_loads_the_script_there_and_retries() -> None:
    calls = {"n": 0}

    def answer(c: tuple[object, ...]) -> object:
        calls["n"] += 1
        return redis.exceptions.NoScriptError("NOSCRIPT") if calls["n"] == 1 else [1, [], []]

    a = FakeNode(answer)
    got = store_on(FakeNodes({"a:1": a}, lambda slot: "a:1"))._round(
        "t", [Call(1, ("EVALSHA", "x"), [], 1)]
    )
    assert got == [[1, [], []]] and ("SCRIPT LOAD",) in a.sent[1]


def test_noscript_is_sent_again_within_the_same_attempt() -> None:
    """A Redis restarted just now has lost the script: the reload and the resend take no retry
    attempt (no back-off, no slot-map refresh), so a quick restart cannot exhaust them."""
    calls = {"n": 0}

    def answer(c: tuple[object, ...]) -> object:
        calls["n"] += 1
        return redis.exceptions.NoScriptError("NOSCRIPT") if calls["n"] == 1 else [1, [], []]

    nodes = FakeNodes({"a:1": FakeNode(answer)}, lambda slot: "a:1")
    refreshed: list[int] = []
    nodes.refresh = lambda: refreshed.append(1)  # type: ignore[method-assign]
    got = store_on(nodes)._round("t", [Call(1, ("EVALSHA", "x"), [], 1)])
    assert got == [[1, [], []]] and not refreshed


def test_a_master_demoted_by_a_manual_failover_is_left_for_the_new_one() -> None:
    """CLUSTER FAILOVER: the old master still takes the connection but is a replica now; its
    WAIT answers an error (once, the worker kept sending WAIT there for 6 minutes)."""
    state = {"failed_over": False}
    old = FakeNode(
        lambda c: (
            redis.ResponseError("WAIT cannot be used with replica instances")
            if c[0] == "WAIT"
            else redis.exceptions.MovedError("1 b:2")
        )
    )
    new = FakeNode(lambda c: 1 if c[0] == "WAIT" else [1, [], []])
    nodes = FakeNodes({"a:1": old, "b:2": new}, lambda s: "b:2" if state["failed_over"] else "a:1")
    nodes.refresh = lambda: state.update(failed_over=True)  # type: ignore[method-assign]
    got = store_on(nodes)._round("t", [Call(1, ("EVALSHA", "x"), [], 1)], wait=1)
    assert got == [[1, [], []]] and len(new.sent) == 1


def test_after_a_failed_round_the_next_one_reads_the_slot_map_first() -> None:
    a = FakeNode(lambda c: 0 if c[0] == "WAIT" else [1, [], []])
    nodes = FakeNodes({"a:1": a}, lambda slot: "a:1")
    store = store_on(nodes)
    with pytest.raises(StateError):
        store._round("t", [Call(1, ("EVALSHA", "x"), [], 1)], wait=1)
    assert nodes.refreshes == 0  # a missing replica is not a routing problem: no retry here
    store._round("t", [Call(1, ("GET", "x"), [], 1)])
    assert nodes.refreshes == 1  # but the next round starts from a fresh map
