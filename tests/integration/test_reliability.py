"""What an outside trial broke (issue 13), on the real broker and Redis: every event gets its
forecast, nothing is skipped silently.

- outputs that are not delivered never let an offset move past them (an oversized dead letter,
  forecasts the broker refuses for a while, the output topic deleted and re-created);
- a poison pill, null keys, odd timestamps and float32 overflows are dead-lettered, alone,
  and decode the same whatever their tick;
- a re-created input topic and added partitions do not make events look already applied;
- a wiped Redis is noticed and the worker holding the keys writes them again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis
from confluent_kafka import KafkaError, Message
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import KEY, TS
from stream_lstm.data.synthetic import synthetic_frame
from stream_lstm.runtime.events import decode_forecast, encode_event
from tests.integration.conftest import Services
from tests.integration.faults import committed, read_topic
from tests.integration.helpers import (
    Topics,
    forecasts_frame,
    make_topics,
    produce,
    running_worker,
    settings,
    wait_for,
)
from tests.integration.test_worker import SYNTH, assert_parity, events_of

T0 = 1_704_067_200_000
H = 3_600_000
OK = {"f0": 1.0, "f1": 2.0}


def forecast_sources(topic_msgs: list[Message]) -> set[tuple[int, int]]:
    return {(f.partition, f.offset) for f in (decode_forecast(m.value()) for m in topic_msgs)}


def sources(msgs: list[Message]) -> set[tuple[int, int]]:
    return {(m.partition(), m.offset()) for m in msgs}


def dead_letters(bootstrap: str, topic: str) -> dict[str, str]:
    """source → reason of every dead letter on ``topic``."""
    out = {}
    for m in read_topic(bootstrap, topic):
        h = {k: v.decode() for k, v in m.headers() or []}
        out[h["source"]] = h["reason"]
    return out


def set_topic_config(admin: AdminClient, topic: str, name: str, value: str) -> None:
    res = ConfigResource(
        "topic",
        topic,
        incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)],
    )
    for f in admin.incremental_alter_configs([res]).values():
        f.result(timeout=30)


def recreate(admin: AdminClient, topic: str, partitions: int, *, delete: bool = True) -> None:
    if delete:
        admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)
    deadline = time.monotonic() + 60
    while True:  # the deletion completes in the background
        try:
            fut = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30)
            fut[topic].result(timeout=30)
            return
        except Exception as e:
            code = e.args[0].code() if e.args and hasattr(e.args[0], "code") else None
            if code != KafkaError.TOPIC_ALREADY_EXISTS or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def committed_total(bootstrap: str, group: str, topics: Topics, partitions: int) -> int:
    return sum(max(o, 0) for o in committed(bootstrap, group, topics.input, partitions).values())


# -- undelivered outputs --------------------------------------------------------------------------
def test_an_event_too_large_to_dead_letter_is_truncated_and_its_tick_is_forecast(
    services: Services, topic_factory: Callable[..., str], group_id: str, synth_model: Path
) -> None:
    """1,040,000 bytes: the broker takes it, the producer's 1,000,000-byte limit did not (the
    dead-letter produce raised, the worker crashed and its shutdown committed the tick)."""
    topics = make_topics(topic_factory, partitions=1)
    good = [(b"a", encode_event("a", T0 + i * H, OK)) for i in range(20)]
    big = encode_event("a", T0, {**OK, "pad": "x" * 1_040_000})  # type: ignore[dict-item]
    produce(services.bootstrap, topics.input, [*good[:10], (b"a", big), *good[10:]],
            message_max_bytes="2000000")  # fmt: skip
    s = settings(synth_model, services.bootstrap, services.redis_url, topics, group_id)
    with running_worker(s) as w:
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= 20, 60, "20 forecasts")
        wait_for(lambda: committed_total(services.bootstrap, group_id, topics, 1) == 21, 30,
                 "the commit")  # fmt: skip
        assert w.thread.is_alive() and w.error is None
    (dl,) = read_topic(services.bootstrap, topics.dlq)
    h = dict(dl.headers() or [])
    assert h["reason"] == b"oversized_message" and h["truncated"] == str(len(big)).encode()
    assert 900_000 < len(dl.value()) < 1_000_000 and big.startswith(dl.value())
    assert forecast_sources(read_topic(services.bootstrap, topics.output)) == {
        (0, o) for o in [*range(10), *range(11, 21)]
    }


def test_forecasts_the_broker_refuses_for_a_while_are_redone_not_committed_past(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    admin: AdminClient,
) -> None:
    """The output topic refuses every forecast for a while (as a broker outage longer than
    message.timeout.ms does): the delivery reports fail, and an offset committed after that
    would skip them for good. The worker rewinds instead, and once the broker takes them again
    every event has its forecast."""
    topics = make_topics(topic_factory, partitions=2)
    frame = synthetic_frame(keys=20, rows=40, features=2, seed=4)
    events = events_of(frame, SYNTH)
    s = settings(synth_model, services.bootstrap, services.redis_url, topics, group_id)
    with running_worker(s) as w:
        produce(services.bootstrap, topics.input, events[:300])
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= 300, 60, "first part")
        wait_for(lambda: committed_total(services.bootstrap, group_id, topics, 2) == 300, 30,
                 "the first commit")  # fmt: skip
        set_topic_config(admin, topics.output, "max.message.bytes", "64")
        produce(services.bootstrap, topics.input, events[300:])
        wait_for(lambda: w.metric("stream_lstm_events_in_total") >= len(events), 60, "consumed")
        time.sleep(3)  # many commit intervals
        assert committed_total(services.bootstrap, group_id, topics, 2) == 300, (
            "no offset moved past the refused forecasts"
        )
        assert w.metric("stream_lstm_publish_failures_total") >= 1
        set_topic_config(admin, topics.output, "max.message.bytes", "1048588")
        wait_for(lambda: committed_total(services.bootstrap, group_id, topics, 2) == len(events),
                 90, "everything committed")  # fmt: skip
        assert w.thread.is_alive() and w.error is None
    inputs = read_topic(services.bootstrap, topics.input)
    out = read_topic(services.bootstrap, topics.output)
    assert sources(inputs) <= forecast_sources(out), "every event has its forecast"
    assert_parity(
        synth_model, frame, forecasts_frame(out, "f0").drop_duplicates(["key", "ts_ms", "h"])
    )


def test_an_output_topic_deleted_mid_stream_commits_nothing_until_it_is_back(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    admin: AdminClient,
) -> None:
    topics = make_topics(topic_factory, partitions=2)
    frame = synthetic_frame(keys=10, rows=40, features=2, seed=6)
    events = events_of(frame, SYNTH)
    s = settings(synth_model, services.bootstrap, services.redis_url, topics, group_id,
                 producer_options={"message.timeout.ms": "3000"})  # fmt: skip
    with running_worker(s) as w:
        produce(services.bootstrap, topics.input, events[:200])
        wait_for(lambda: committed_total(services.bootstrap, group_id, topics, 2) == 200, 60,
                 "the first commit")  # fmt: skip
        first_commit = committed(services.bootstrap, group_id, topics.input, 2)
        admin.delete_topics([topics.output], operation_timeout=30)[topics.output].result(30)
        produce(services.bootstrap, topics.input, events[200:])
        wait_for(lambda: w.metric("stream_lstm_events_in_total") >= len(events), 60, "consumed")
        time.sleep(8)  # past the 3 s delivery timeout, many commit intervals
        assert committed_total(services.bootstrap, group_id, topics, 2) == 200
        assert w.metric("stream_lstm_publish_failures_total") >= 1
        assert not w.worker.parts.readyz()[0], "unready while outputs fail"
        recreate(admin, topics.output, 2, delete=False)
        wait_for(lambda: committed_total(services.bootstrap, group_id, topics, 2) == len(events),
                 90, "everything committed")  # fmt: skip
        wait_for(lambda: w.worker.parts.readyz()[0], 30, "ready again")
    after_deletion = {
        (m.partition(), m.offset())
        for m in read_topic(services.bootstrap, topics.input)
        if m.offset() >= first_commit[m.partition()]
    }
    assert len(after_deletion) == len(events) - 200
    assert after_deletion <= forecast_sources(read_topic(services.bootstrap, topics.output)), (
        "every event after the deletion has its forecast on the re-created topic"
    )


# -- bad input: dead-lettered alone, decoded the same in any tick ---------------------------------
def test_poison_pills_null_keys_and_odd_values_are_dead_lettered_alone_in_any_tick(
    services: Services, topic_factory: Callable[..., str], synth_model: Path, admin: AdminClient
) -> None:
    """Two workers (other groups) read the same input, one event per tick and all in one tick:
    the same events are dead-lettered with the same reasons, the same are forecast."""
    topics = make_topics(topic_factory, partitions=1)
    deep = (b'{"key": "a", "ts": 1704067200000, "values": {"f0": 1, "f1": 2}, "x": '
            + b"[" * 1000 + b"]" * 1000 + b"}")  # fmt: skip
    msgs: list[tuple[bytes | None, bytes]] = [
        (b"a", encode_event("a", T0, OK)),
        (b"a", deep),  # 2 KB, once an uncaught RecursionError and a crash loop
        (None, encode_event("b", T0, OK)),  # null keys: once skipped silently
        (b"b", encode_event("b", T0 + H, OK)),
        (None, encode_event("b", T0 + 2 * H, OK)),
        (b"a", encode_event("a", "2024-01-01T01:00:00Z", OK)),
        (b"a", encode_event("a", "20240101T020000Z", OK)),  # ISO basic, next to an ISO one
        (b"a", encode_event("a", "1704078000000", OK)),  # digits in a string: not epoch ms
        (b"a", encode_event("a", T0 + 3 * H, {"f0": 1e39, "f1": 2.0})),  # inf as float32
        (b"a", encode_event("a", T0 + 4 * H, {"f0": 3.0, "f1": 2.0})),
    ]
    produce(services.bootstrap, topics.input, msgs)
    results = []
    for max_batch in (1, 4096):
        out = Topics(topics.input, topic_factory("out"), topic_factory("dlq"))
        wait_for(lambda o=out: {o.output, o.dlq} <= set(admin.list_topics(timeout=10).topics),
                 30, "the new topics in the metadata")  # fmt: skip
        group = f"{topics.input}-{max_batch}"
        s = settings(synth_model, services.bootstrap, services.redis_url, out, group,
                     max_batch=max_batch, max_wait_ms=300)  # fmt: skip
        with running_worker(s) as w:
            wait_for(lambda w=w: w.metric("stream_lstm_events_in_total") >= len(msgs), 60, "all")
            wait_for(lambda g=group, o=out: committed_total(services.bootstrap, g, o, 1) == len(msgs), 30,
                     "the commit")  # fmt: skip
            assert w.thread.is_alive() and w.error is None
        dl = dead_letters(services.bootstrap, out.dlq)
        fc = {
            (f.offset, f.ts)
            for f in (
                decode_forecast(m.value()) for m in read_topic(services.bootstrap, out.output)
            )
        }
        results.append((dl, fc))
    (dl1, fc1), (dl2, fc2) = results
    assert dl1 == dl2 and fc1 == fc2, "decoding does not depend on the tick"
    src = f"{topics.input}/0/"
    assert dl1 == {
        src + "1": "too_deep", src + "2": "null_key", src + "4": "null_key",
        src + "7": "bad_timestamp", src + "8": "non_finite_value",
    }  # fmt: skip
    assert fc1 == {(0, T0), (3, T0 + H), (5, T0 + H), (6, T0 + 2 * H), (9, T0 + 4 * H)}


# -- keys that move -------------------------------------------------------------------------------
def test_a_recreated_input_topic_is_consumed_not_skipped(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    synth_data: Path,
    admin: AdminClient,
) -> None:
    """Once: events_in 9584, applied 0, replayed_skipped 9575, nothing logged."""
    frame, _ = load_frame(synth_data, SYNTH)
    events = events_of(frame, SYNTH)
    topics = make_topics(topic_factory, partitions=2)
    s = settings(synth_model, services.bootstrap, services.redis_url, topics, group_id)
    with running_worker(s) as w:
        produce(services.bootstrap, topics.input, events[:900])
        wait_for(lambda: committed_total(services.bootstrap, group_id, topics, 2) == 900, 60,
                 "the first part")  # fmt: skip
        recreate(admin, topics.input, 2)
        produce(services.bootstrap, topics.input, events[900:])
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= len(events), 90,
                 "the events of the new topic")  # fmt: skip
        assert w.metric("stream_lstm_replayed_skipped_total") == 0
        assert (
            w.metric("stream_lstm_input_offset_resets_total", outcome="recreated")
            + w.metric("stream_lstm_keys_moved_total")
            > 0
        ), "counted"
    got = forecasts_frame(read_topic(services.bootstrap, topics.output), "f0")
    assert_parity(synth_model, frame, got)  # each key's state carried on across the topics


def test_a_topic_recreated_under_a_restarted_idle_worker_is_consumed_not_skipped(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    synth_data: Path,
    admin: AdminClient,
) -> None:
    """An outside trial (2026-11-29): a worker restarted at the end of the topic, its cache
    empty, then the topic re-created: 200 of 200 new events skipped as 'already applied' (no
    offset had gone back in that process) and their offsets committed."""
    frame, _ = load_frame(synth_data, SYNTH)
    events = events_of(frame, SYNTH)
    topics = make_topics(topic_factory, partitions=2)
    s = settings(synth_model, services.bootstrap, services.redis_url, topics, group_id)
    with running_worker(s):
        produce(services.bootstrap, topics.input, events[:900])
        wait_for(lambda: committed_total(services.bootstrap, group_id, topics, 2) == 900, 60,
                 "the first part")  # fmt: skip
    with running_worker(s) as w:  # the same group: nothing left to read, nothing cached
        wait_for(lambda: w.metric("stream_lstm_assigned_partitions") == 2, 60, "the assignment")
        recreate(admin, topics.input, 2)
        produce(services.bootstrap, topics.input, events[900:])
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= len(events) - 900, 90,
                 "the events of the new topic")  # fmt: skip
        assert w.metric("stream_lstm_replayed_skipped_total") == 0
        assert w.metric("stream_lstm_input_offset_resets_total", outcome="recreated") == 1
    got = forecasts_frame(read_topic(services.bootstrap, topics.output), "f0")
    assert_parity(synth_model, frame, got)  # each key's state carried on across the topics


def test_added_partitions_move_keys_without_skipping_their_events(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    admin: AdminClient,
) -> None:
    """Partitions 4 → 8: once 2,094 of 8,000 events skipped as 'already applied'."""
    frame = synthetic_frame(keys=40, rows=50, features=2, seed=8)
    frame = frame.sort_values([TS, KEY], kind="stable")
    first = frame[frame[TS] < frame[TS].quantile(0.5)]
    second = frame[frame[TS] >= frame[TS].quantile(0.5)]
    topics = make_topics(topic_factory, partitions=4)
    s = settings(synth_model, services.bootstrap, services.redis_url, topics, group_id,
                 consumer_options={"session.timeout.ms": "6000", "heartbeat.interval.ms": "500",
                                   "topic.metadata.refresh.interval.ms": "1000"})  # fmt: skip
    with running_worker(s) as w:
        produce(services.bootstrap, topics.input, events_of(first, SYNTH))
        wait_for(lambda: committed_total(services.bootstrap, group_id, topics, 4) == len(first),
                 60, "the first half")  # fmt: skip
        admin.create_partitions([NewPartitions(topics.input, 8)])[topics.input].result(30)
        wait_for(lambda: w.metric("stream_lstm_assigned_partitions") == 8, 60, "8 partitions")
        produce(services.bootstrap, topics.input, events_of(second, SYNTH))
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= len(frame), 90,
                 "every forecast")  # fmt: skip
        assert w.metric("stream_lstm_replayed_skipped_total") == 0
        assert w.metric("stream_lstm_keys_moved_total") > 0
    got = forecasts_frame(read_topic(services.bootstrap, topics.output), "f0")
    assert got[got["partition"] >= 4]["key"].nunique() > 0, "some keys moved"
    assert_parity(synth_model, frame.reset_index(drop=True), got)


# -- a wiped store --------------------------------------------------------------------------------
def test_a_wiped_redis_is_rewritten_by_the_worker_holding_the_keys(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
) -> None:
    """FLUSHDB (or a restart without persistence) under a running worker whose keys are idle:
    once, 893 of 1,000 next forecasts came from zero state after a restart."""
    redis_url = services.redis_url.rsplit("/", 1)[0] + "/3"  # a database of its own
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    frame = synthetic_frame(keys=200, rows=12, features=2, seed=12)
    last_ts = frame[TS].max()
    before, after = frame[frame[TS] < last_ts], frame[frame[TS] == last_ts]
    topics = make_topics(topic_factory, partitions=2)
    s = settings(synth_model, services.bootstrap, redis_url, topics, group_id)
    with running_worker(s) as w:
        produce(services.bootstrap, topics.input, events_of(before, SYNTH))
        wait_for(lambda: committed_total(services.bootstrap, group_id, topics, 2) == len(before),
                 60, "the first part")  # fmt: skip
        r.flushdb()
        wait_for(lambda: len(r.keys("*:{s*}:*")) == 200, 30, "every key written again")
        assert w.metric("stream_lstm_state_wipes_total") == 1
    produce(services.bootstrap, topics.input, events_of(after, SYNTH))
    with running_worker(s) as w2:  # a restart: the states come from Redis
        wait_for(lambda: w2.metric("stream_lstm_forecasts_out_total") >= 200, 60, "last events")
        assert w2.metric("stream_lstm_state_loads_total", outcome="restored") == 200
    got = forecasts_frame(read_topic(services.bootstrap, topics.output), "f0")
    assert_parity(synth_model, frame.reset_index(drop=True), got)
    r.flushdb()
    r.close()
