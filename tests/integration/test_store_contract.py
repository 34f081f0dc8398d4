"""The store contract (stream_lstm/stores/base.py), run against both backends as equals: the
Redis store on a real Redis and the in-memory store. Each numbered test is a clause of the
contract."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import redis

from stream_lstm.runtime.cache import StateCache
from stream_lstm.stack.redis_cluster import RedisCluster
from stream_lstm.stores.base import StateStore
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.stores.record import Layout, apply_delta, decode_any
from stream_lstm.stores.redis import RedisStateStore
from tests.integration.conftest import Services, unique
from tests.unit.test_state import feed

V1 = Layout("aaaaaaaaaaaa", 2, 8, 6, 3)
V2 = Layout("bbbbbbbbbbbb", 2, 8, 6, 3)
DB = 4  # a Redis database of its own: the wipe clause flushes it

Backend = tuple[StateStore, Callable[[], None]]  # the store, and what wipes it


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest) -> Iterator[Callable[[Layout], Backend]]:
    """A factory: a fresh store of this backend for a layout, and how to wipe it."""
    made: list[RedisStateStore] = []
    if request.param == "memory":

        def memory(layout: Layout) -> Backend:
            m = MemoryStore(layout)
            return m, m.wipe

        yield memory
        return
    ns = unique("contract")
    if request.param == "redis-cluster":  # the wipe: every master flushed (replicas follow)
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        url = cluster.spec.url
        clients = [cluster.client(m.port) for m in cluster.masters()]
    else:
        services: Services = request.getfixturevalue("services")
        url = services.redis_url.rsplit("/", 1)[0] + f"/{DB}"
        clients = [redis.Redis.from_url(url)]

    def wipe() -> None:
        for c in clients:
            c.flushdb()

    def real(layout: Layout) -> Backend:
        store = RedisStateStore(url, ns, layout, ttl_ms=60_000, chunk=2)
        store.connect()
        made.append(store)
        return store, wipe

    yield real
    for s in made:
        s.close()
    wipe()
    for c in clients:
        c.close()


def cache(layout: Layout, keys: list[str]) -> tuple[StateCache, np.ndarray]:
    c = StateCache(layout, np.zeros((2, 8)), np.zeros((2, 8)), keep_windows=False, capacity=8)
    return c, c.allocate(keys, [0] * len(keys))


def write(store: StateStore, c: StateCache, slots: np.ndarray, n: int, t0: int) -> list[str]:
    feed(c, slots, n, t0)
    c.h[slots] = float(t0)
    snap = c.snapshot(c.dirty_slots())
    c.dirty[:] = False
    res = store.save(snap)
    assert not res.wiped
    return res.refused


def test_1_load_keeps_key_order_and_gives_none_for_unseen_keys(
    backend: Callable[[Layout], Backend],
) -> None:
    store, _ = backend(V1)
    c, slots = cache(V1, ["a", "b", "c"])
    write(store, c, slots, 2, 1000)
    got = store.load(["c", "nobody", "a"])
    assert got[1] is None
    assert [decode_any(r).last_ts for r in (got[0], got[2])] == [  # type: ignore[arg-type, union-attr]
        int(c.last_ts[slots[2]]),
        int(c.last_ts[slots[0]]),
    ]


def test_1_a_new_version_loads_the_newer_of_its_own_and_the_previous_record(
    backend: Callable[[Layout], Backend],
) -> None:
    store, _ = backend(V1)
    c1, s1 = cache(V1, ["a", "b"])
    write(store, c1, s1, 5, 1000)  # offsets 5 under V1
    store.use_layout(V2)
    assert store.previous_version == V1.version
    c2, s2 = cache(V2, ["a"])
    write(store, c2, s2[:1], 9, 2000)  # offset 9 under V2 for "a" only
    a, b = store.load(["a", "b"])
    assert decode_any(a).version == V2.version  # type: ignore[arg-type, union-attr]
    assert decode_any(b).version == V1.version  # type: ignore[arg-type, union-attr]


def test_2_writes_are_deltas_applied_to_the_stored_record(
    backend: Callable[[Layout], Backend],
) -> None:
    store, _ = backend(V1)
    c, slots = cache(V1, ["a", "b"])
    expected: dict[str, bytes | None] = {"a": None, "b": None}
    for cycle in range(4):  # more rows than the window over the cycles: the ring wraps
        feed(c, slots, 4, 1000 * (cycle + 1))
        snap = c.snapshot(c.dirty_slots())
        c.dirty[:] = False
        for k, fixed, rows in snap.items():
            expected[k] = apply_delta(expected[k], fixed, rows, V1)
        assert not store.save(snap).refused
    assert store.load(["a", "b"]) == [expected["a"], expected["b"]]


def test_3_a_write_older_than_the_stored_offset_is_refused(
    backend: Callable[[Layout], Backend],
) -> None:
    store, _ = backend(V1)
    new_owner, slots = cache(V1, ["a", "b"])
    write(store, new_owner, slots, 6, 1000)  # offsets 6
    stored = store.load(["a"])[0]
    zombie, z = cache(V1, ["a", "b"])
    zombie.last_offset[z[1]] = 10  # "b" is ahead in the zombie's copy: written
    refused = write(store, zombie, z, 1, 500)  # "a" at offset 1 < 6: refused
    assert refused == ["a"]
    assert store.load(["a"])[0] == stored


def test_4_a_wipe_is_noticed_once_and_nothing_is_written_into_it(
    backend: Callable[[Layout], Backend],
) -> None:
    store, wipe = backend(V1)
    c, slots = cache(V1, ["a"])
    write(store, c, slots, 2, 1000)
    assert not store.wiped()
    wipe()
    feed(c, slots, 1, 5000)
    res = store.save(c.snapshot(c.dirty_slots()))
    assert res.wiped and res.written == 0
    assert store.load(["a"]) == [None]
    # said once: the caller rewrites every key it holds in full, and writes go through again
    assert store.wiped()
    assert not store.wiped()
    assert c.rewrite_all() == 1  # what the engine does after a wipe
    res = store.save(c.snapshot(c.dirty_slots(), everything=True))
    assert not res.wiped and res.written == 1


def test_6_applied_offsets_are_raised_never_lowered_and_kept_per_topic_and_partition(
    backend: Callable[[Layout], Backend],
) -> None:
    store, wipe = backend(V1)
    t1, t2 = b"\x01" * 16, b"\x02" * 16
    assert store.load_marks(t1, [0, 1, 2]) == {}
    store.save_marks(t1, {0: 100, 1: 7})
    store.save_marks(t1, {0: 40, 1: 9})  # a late write of an older cycle: 0 stays at 100
    store.save_marks(t2, {0: 3})  # another incarnation of the topic: its own marks
    assert store.load_marks(t1, [0, 1, 2]) == {0: 100, 1: 9}
    assert store.load_marks(t2, [0, 1]) == {0: 3}
    store.use_layout(V2)  # a model version switch keeps them (they are per namespace)
    assert store.load_marks(t1, [0, 1]) == {0: 100, 1: 9}
    wipe()
    assert store.load_marks(t1, [0, 1]) == {}, "a wiped store has no marks (nothing to replay)"
