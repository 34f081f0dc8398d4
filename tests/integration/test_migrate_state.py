"""`stream-lstm migrate-state` on a real Redis: old-layout records (``<ns>:<version>:{<key>}``)
are copied to the bucketed names with their TTL, so the store of this release loads exactly
them; ``--dry-run`` changes nothing; a second run copies nothing new; a record already at its
new name is kept; ``--delete-old`` removes the old names and the old epoch marker. On the
session's Redis Cluster: old names on one master are copied to new names on others."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis
from redis.crc import key_slot

from stream_lstm.cli import main
from stream_lstm.runtime.cache import StateCache
from stream_lstm.stack.redis_cluster import RedisCluster
from stream_lstm.stores.record import Layout, apply_delta
from stream_lstm.stores.redis import RedisStateStore
from stream_lstm.stores.redis_nodes import Nodes, open_nodes, resolve
from tests.integration.conftest import Services, unique
from tests.unit.test_state import feed

V1 = Layout("aaaaaaaaaaaa", 2, 8, 6, 3)
V2 = Layout("bbbbbbbbbbbb", 2, 8, 6, 3)
DB = 5  # a Redis database of its own, flushed before and after each test
KEYS = ["sensor-1", "b:with:colons", "ends}", "{braced}", "ü"]
TTL_MS = 600_000


def records(layout: Layout, keys: list[str], t0: int = 1000) -> dict[str, bytes]:
    """Real records, as the worker writes them."""
    c = StateCache(layout, np.zeros((2, 8)), np.zeros((2, 8)), keep_windows=False, capacity=8)
    slots = c.allocate(keys, [0] * len(keys))
    feed(c, slots, 4, t0)
    c.h[slots] = float(t0)
    snap = c.snapshot(c.dirty_slots())
    return {k: apply_delta(None, fixed, rows, layout) for k, fixed, rows in snap.items()}


def old_name(ns: str, version: str, key: str) -> str:
    return f"{ns}:{version}:{{{key}}}"


@pytest.fixture
def db(services: Services) -> Iterator[tuple[str, redis.Redis]]:
    url = services.redis_url.rsplit("/", 1)[0] + f"/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()


def write_old(client: redis.Redis, ns: str, recs: dict[str, bytes], version: str) -> None:
    """Old-layout records as the releases before wrote them: the first without a TTL."""
    for i, (k, v) in enumerate(recs.items()):
        client.set(old_name(ns, version, k), v, px=TTL_MS if i else None)
    client.set(f"{ns}:epoch", "old-epoch-marker")
    client.rpush(f"{ns}:versions", version)


def migrate(capsys: pytest.CaptureFixture[str], url: str, ns: str, *flags: str) -> str:
    assert main(["migrate-state", "--redis", url, "--namespace", ns, "--no-progress", *flags]) == 0
    return capsys.readouterr().out


def everything(client: redis.Redis) -> dict[object, tuple[object, bool]]:
    """Every name in the database with its value (strings) and whether it has a TTL."""
    out: dict[object, tuple[object, bool]] = {}
    for name in client.scan_iter(count=1000):
        value = client.get(name) if client.type(name) == b"string" else None
        out[name] = (value, client.pttl(name) > 0)
    return out


def load(url: str, ns: str, layout: Layout, keys: list[str]) -> list[bytes | None]:
    store = RedisStateStore(url, ns, layout)
    try:
        store.connect()
        return store.load(keys)
    finally:
        store.close()


def test_old_records_are_copied_and_loaded_by_the_store_and_a_second_run_copies_nothing(
    db: tuple[str, redis.Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    url, client = db
    ns = unique("mig")
    recs = records(V1, KEYS)
    write_old(client, ns, recs, V1.version)
    out = migrate(capsys, url, ns)
    assert "old-layout records found: 5" in out
    assert "copied: 5" in out
    assert "already at the new name (kept): 0" in out
    assert "old names kept" in out
    assert load(url, ns, V1, KEYS) == [recs[k] for k in KEYS]
    store = RedisStateStore(url, ns, V1)
    for i, k in enumerate(KEYS):  # the TTL travels with the record; the old names stay
        new_ttl = client.pttl(store.record_key(k))
        assert new_ttl == -1 if i == 0 else 0 < new_ttl <= TTL_MS
        assert client.get(old_name(ns, V1.version, k)) == recs[k]
    assert client.lrange(f"{ns}:versions", 0, -1) == [V1.version.encode()]
    # a second run (now with the new epoch markers present): nothing new
    out = migrate(capsys, url, ns)
    assert "old-layout records found: 5" in out
    assert "copied: 0" in out
    assert "already at the new name (kept): 5" in out


def test_dry_run_changes_nothing(
    db: tuple[str, redis.Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    url, client = db
    ns = unique("mig")
    write_old(client, ns, records(V1, KEYS), V1.version)
    before = everything(client)
    out = migrate(capsys, url, ns, "--dry-run", "--delete-old")
    assert everything(client) == before
    assert "dry run: nothing was changed" in out
    assert "would be copied: 5" in out
    assert "old names would be deleted: 5 (and the old epoch marker" in out
    store = RedisStateStore(url, ns, V1)
    assert f"{old_name(ns, V1.version, KEYS[0])} -> {store.record_key(KEYS[0])}" in out


def test_a_record_already_at_the_new_name_is_kept(
    db: tuple[str, redis.Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    url, client = db
    ns = unique("mig")
    recs = records(V1, KEYS)
    write_old(client, ns, recs, V1.version)
    newer = records(V1, KEYS[:1], t0=5000)[KEYS[0]]  # a worker of this release wrote it
    assert newer != recs[KEYS[0]]
    client.set(RedisStateStore(url, ns, V1).record_key(KEYS[0]), newer)
    out = migrate(capsys, url, ns)
    assert "copied: 4" in out
    assert "already at the new name (kept): 1" in out
    assert load(url, ns, V1, KEYS) == [newer, *(recs[k] for k in KEYS[1:])]


def test_delete_old_removes_the_old_names_and_marker_and_migrates_every_version(
    db: tuple[str, redis.Redis], capsys: pytest.CaptureFixture[str]
) -> None:
    url, client = db
    ns = unique("mig")
    other_ns = unique("mig")  # another namespace in the same database: untouched
    old1, old2 = records(V1, KEYS), records(V2, KEYS[:2], t0=3000)
    write_old(client, ns, old1, V1.version)
    write_old(client, ns, old2, V2.version)
    write_old(client, other_ns, old1, V1.version)
    client.set(f"{ns}:{V1.version}:not-a-record", b"x")  # not the old layout: left alone
    client.set(old_name(ns, V1.version, "not-state"), b"plain text")  # not a record: left alone
    out = migrate(capsys, url, ns, "--delete-old")
    assert "old-layout records found: 8" in out
    assert "copied: 7" in out
    assert "skipped (not a state record, or expired meanwhile): 1" in out
    assert f"old names deleted: 7 (and the old epoch marker {ns}:epoch)" in out
    for v, recs in ((V1, old1), (V2, old2)):
        assert all(client.get(old_name(ns, v.version, k)) is None for k in recs)
    assert client.get(f"{ns}:epoch") is None
    assert client.get(old_name(ns, V1.version, "not-state")) == b"plain text"
    assert client.get(f"{ns}:{V1.version}:not-a-record") == b"x"
    assert client.lrange(f"{ns}:versions", 0, -1) == [V1.version.encode(), V2.version.encode()]
    assert all(client.get(old_name(other_ns, V1.version, k)) == old1[k] for k in KEYS)
    assert client.get(f"{other_ns}:epoch") == b"old-epoch-marker"
    store = RedisStateStore(url, ns, V1)
    for v, recs in ((V1, old1), (V2, old2)):
        assert all(client.get(store.record_key(k, v.version)) == recs[k] for k in recs)
    # the store of the newest version loads its own records, the older version's for the rest
    assert load(url, ns, V2, KEYS) == [*(old2[k] for k in KEYS[:2]), *(old1[k] for k in KEYS[2:])]
    out = migrate(capsys, url, ns, "--delete-old")
    assert "old-layout records found: 1" in out  # only the one that is not a record
    assert "copied: 0" in out


def _nodes(url: str) -> Nodes:
    return resolve(open_nodes(url))


def test_on_a_cluster_old_names_on_one_master_are_copied_to_the_new_names_elsewhere(
    redis_cluster: RedisCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_cluster.spec.url
    ns = unique("mig")
    nodes = _nodes(url)
    assert nodes.mode == "cluster"
    try:
        assert "old-layout records found: 0" in migrate(capsys, url, ns)
        recs = records(V1, KEYS)
        for k, v in recs.items():  # each old name in its own slot, on the master that owns it
            name = old_name(ns, V1.version, k)
            nodes.client(nodes.node_of(key_slot(name.encode()))).set(name, v, px=TTL_MS)
        out = migrate(capsys, url, ns, "--delete-old")
        assert "(cluster)" in out
        assert "copied: 5" in out
        assert "old names deleted: 5" in out
        assert load(url, ns, V1, KEYS) == [recs[k] for k in KEYS]
        for k in KEYS:
            name = old_name(ns, V1.version, k)
            assert nodes.client(nodes.node_of(key_slot(name.encode()))).exists(name) == 0
    finally:
        for addr in nodes.masters():  # this test's names only (the cluster is the session's)
            c = nodes.client(addr)
            names = list(c.scan_iter(match=f"{ns}:*", count=1000))
            for name in names:
                c.delete(name)
        nodes.close()
