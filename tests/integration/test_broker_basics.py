"""The real broker and Redis behave as the worker's design relies on.

Topics with a chosen partition count; a consumer group whose committed offsets survive a
restart; an idempotent producer; aborted transactions invisible to ``read_committed``;
a Redis round trip including a Lua script (the conditional state write uses one).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import redis
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient


def consumer(bootstrap: str, group: str, **extra: object) -> Consumer:
    conf: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    }
    conf.update(extra)
    return Consumer(conf)


def drain(c: Consumer, partitions: int, max_messages: int | None = None) -> list[Message]:
    """Read until every assigned partition reports EOF (or ``max_messages`` were read)."""
    out: list[Message] = []
    eof: set[int] = set()
    for _ in range(600):
        for m in c.consume(num_messages=500, timeout=0.1):
            err = m.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err
                eof.add(m.partition())
                continue
            out.append(m)
            if max_messages is not None and len(out) >= max_messages:
                return out
        if len(eof) >= partitions:
            return out
    raise AssertionError(f"no EOF on all {partitions} partitions; got {len(out)} messages")


def produce_numbers(bootstrap: str, topic: str, n: int, **extra: object) -> None:
    p = Producer({"bootstrap.servers": bootstrap, **extra})
    for i in range(n):
        p.produce(topic, key=f"k{i % 7}".encode(), value=str(i).encode())
    assert p.flush(30) == 0


def test_topic_has_the_requested_partition_count(
    admin: AdminClient, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("parts", partitions=6)
    md = admin.list_topics(topic, timeout=10)
    assert len(md.topics[topic].partitions) == 6


def test_group_commits_offsets_and_resumes_after_restart(
    bootstrap: str, topic_factory: Callable[..., str], group_id: str
) -> None:
    topic = topic_factory("resume", partitions=3)
    produce_numbers(bootstrap, topic, 300)

    first = consumer(bootstrap, group_id)
    first.subscribe([topic])
    got_first = drain(first, partitions=3, max_messages=120)
    # commit exactly what was read: the next offset per partition
    last: dict[int, int] = {}
    for m in got_first:
        last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
    first.commit(
        offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()], asynchronous=False
    )
    first.close()

    second = consumer(bootstrap, group_id)
    second.subscribe([topic])
    got_second = drain(second, partitions=3)
    second.close()

    seen = [int(m.value()) for m in got_first + got_second]
    assert len(got_first) == 120
    assert sorted(seen) == list(range(300)), "every message exactly once across the restart"


def test_idempotent_producer_delivers_each_message_once_in_order(
    bootstrap: str, topic_factory: Callable[..., str], group_id: str
) -> None:
    topic = topic_factory("idem", partitions=2)
    delivered: list[tuple[int, int]] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        delivered.append((msg.partition(), msg.offset()))

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 5,
        }
    )
    for i in range(2000):
        p.produce(
            topic, key=f"key-{i % 5}".encode(), value=str(i).encode(), on_delivery=on_delivery
        )
        p.poll(0)
    assert p.flush(30) == 0
    assert len(delivered) == 2000
    assert len(set(delivered)) == 2000

    c = consumer(bootstrap, group_id)
    c.subscribe([topic])
    msgs = drain(c, partitions=2)
    c.close()
    values_by_key: dict[bytes, list[int]] = {}
    for m in msgs:
        values_by_key.setdefault(m.key(), []).append(int(m.value()))
    assert sum(len(v) for v in values_by_key.values()) == 2000
    for values in values_by_key.values():
        assert values == sorted(values), "per-key order is kept"


def test_aborted_transaction_is_invisible_to_read_committed(
    bootstrap: str, topic_factory: Callable[..., str], group_id: str
) -> None:
    topic = topic_factory("txn", partitions=1)
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"})
    p.init_transactions(30)

    p.begin_transaction()
    p.produce(topic, key=b"k", value=b"aborted")
    p.flush(30)
    p.abort_transaction(30)

    p.begin_transaction()
    p.produce(topic, key=b"k", value=b"committed")
    p.commit_transaction(30)

    committed = consumer(bootstrap, group_id, **{"isolation.level": "read_committed"})
    committed.subscribe([topic])
    seen_committed = [m.value() for m in drain(committed, partitions=1)]
    committed.close()

    uncommitted = consumer(bootstrap, group_id + "-u", **{"isolation.level": "read_uncommitted"})
    uncommitted.subscribe([topic])
    seen_uncommitted = [m.value() for m in drain(uncommitted, partitions=1)]
    uncommitted.close()

    assert seen_committed == [b"committed"]
    # the aborted record is in the log: only the isolation level hides it
    assert seen_uncommitted == [b"aborted", b"committed"]


def test_redis_round_trip_pipeline_and_script(redis_client: redis.Redis) -> None:
    key = f"test:{uuid.uuid4().hex}"
    payload = bytes(range(256)) * 4
    assert redis_client.set(key, payload, px=60_000)
    assert redis_client.get(key) == payload
    assert 0 < redis_client.pttl(key) <= 60_000

    pipe = redis_client.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"{key}:{i}", i.to_bytes(8, "little"))
    pipe.execute()
    values = redis_client.mget([f"{key}:{i}" for i in range(100)])
    assert [int.from_bytes(v, "little") for v in values] == list(range(100))

    # a server-side conditional write: only replace when the new version is larger
    script = redis_client.register_script(
        "local cur = redis.call('GET', KEYS[1]) "
        "if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end "
        "redis.call('SET', KEYS[1], ARGV[1]) return 1"
    )
    vkey = f"{key}:v"
    assert script(keys=[vkey], args=[5]) == 1
    assert script(keys=[vkey], args=[3]) == 0
    assert redis_client.get(vkey) == b"5"
    redis_client.delete(key, vkey, *[f"{key}:{i}" for i in range(100)])
