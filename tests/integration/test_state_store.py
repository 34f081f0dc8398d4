"""The Redis write script on a real Redis does exactly what the in-memory store does."""

from __future__ import annotations

import numpy as np
import redis

from stream_lstm.runtime.cache import StateCache
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.stores.record import Layout
from stream_lstm.stores.redis import RedisStateStore, bucket_of
from tests.integration.conftest import Services, unique
from tests.unit.test_state import feed

LAY = Layout("abcdefabcdef", 2, 8, 6, 3)


def _setup(
    services: Services, chunk: int, keys: list[str]
) -> tuple[str, RedisStateStore, MemoryStore, StateCache, np.ndarray]:
    """A store on the real Redis, the in-memory reference, a cache holding ``keys``."""
    ns = unique("ns")
    store = RedisStateStore(services.redis_url, ns, LAY, ttl_ms=60_000, chunk=chunk)
    store.connect()
    c = StateCache(LAY, np.zeros((2, 8)), np.zeros((2, 8)), keep_windows=False, capacity=16)
    return ns, store, MemoryStore(LAY), c, c.allocate(keys, [0] * len(keys))


def test_delta_writes_match_the_reference_and_refuse_older_offsets(services: Services) -> None:
    keys = [f"k{i}" for i in range(7)]
    _, store, ref, c, slots = _setup(services, 3, keys)
    rng = np.random.default_rng(1)
    client = redis.Redis.from_url(services.redis_url)
    for cycle in range(5):
        some = rng.choice(slots, size=4, replace=False)
        feed(c, some, int(rng.integers(1, 9)), t0=1000 * cycle)
        c.h[some] = rng.normal(size=(4, 2, 8))
        snap = c.snapshot(c.dirty_slots())
        c.dirty[:] = False
        res = store.save(snap)
        assert res.written == len(snap.keys) and not res.refused
        ref.save(snap)
        if cycle == 2:
            client.script_flush()  # as after a Redis restart: the store loads the script again
    for k in keys:
        stored = client.get(store.record_key(k))
        assert stored == ref.record(k), k
        assert 0 < client.pttl(store.record_key(k)) <= 60_000
    # a zombie's older state is refused, the newer one stays
    zombie = StateCache(LAY, np.zeros((2, 8)), np.zeros((2, 8)), keep_windows=False, capacity=2)
    [z] = zombie.allocate(["k0"], [0])
    zombie.last_offset[z] = 0
    zombie.dirty[z] = True
    res = store.save(zombie.snapshot(np.asarray([z])))
    assert res.refused == ["k0"] and res.written == 0
    assert client.get(store.record_key("k0")) == ref.record("k0")
    client.close()


def test_a_wiped_bucket_is_skipped_and_the_other_records_of_its_call_land_whole(
    services: Services,
) -> None:
    """One script call carries several buckets (one node): the records after a bucket whose
    epoch marker is gone get their own fixed parts and rows, not their neighbours'."""
    keys = [f"w{i}" for i in range(12)]
    ns, store, ref, c, slots = _setup(services, 64, keys)
    feed(c, slots, 2, t0=0)
    snap = c.snapshot(c.dirty_slots())
    c.dirty[:] = False
    assert store.save(snap).written == 12
    ref.save(snap)
    gone = min(bucket_of(k) for k in keys)  # the first group of the call
    hit = [k for k in keys if bucket_of(k) == gone]
    before = {k: ref.record(k) for k in hit}
    client = redis.Redis.from_url(services.redis_url)
    client.delete(f"{ns}:epoch:{{s{gone}}}")
    for i, s in enumerate(slots):  # 1 to 4 new rows a key
        feed(c, slots[i : i + 1], 1 + i % 4, t0=1000 + 10 * i)
        c.h[s] = i
    snap = c.snapshot(c.dirty_slots())
    c.dirty[:] = False
    res = store.save(snap)
    assert res.wiped
    assert res.written == len(keys) - len(hit)
    ref.save(snap)
    for k in keys:
        want = before[k] if k in hit else ref.record(k)
        assert client.get(store.record_key(k)) == want, k
    client.close()
