"""Avro and Protobuf events and forecasts through a real Schema Registry (Apicurio Registry,
Confluent-compatible API, started here by PID from Maven Central) and the real Kafka broker:
the forecasts equal `predict`'s (the JSON path's parity reference), bad payloads and unknown
schema ids are dead-lettered with their original bytes while the worker goes on, and Avro
forecasts decode with the registry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pandas as pd
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from stream_lstm.config import default_cache_dir
from stream_lstm.data.synthetic import synthetic_frame
from stream_lstm.drivers import formats as fm
from stream_lstm.runtime.events import encode_event
from stream_lstm.stack.procs import free_port
from stream_lstm.stack.registry import RegistrySpec, SchemaRegistry
from tests.integration.conftest import Services
from tests.integration.helpers import (
    forecasts_frame,
    make_topics,
    produce,
    read_all,
    running_worker,
    settings,
    wait_for,
)
from tests.integration.test_worker import SYNTH, assert_parity, events_of


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchemaRegistry]:
    reg = SchemaRegistry(
        RegistrySpec(tmp_path_factory.mktemp("registry"), default_cache_dir(), port=free_port())
    )
    reg.start()
    try:
        yield reg
    finally:
        reg.stop(grace_s=10)


def as_avro(client: SchemaRegistryClient, topic: str, events: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:  # fmt: skip
    ser = AvroSerializer(client, json.dumps(fm.EVENT_AVRO))
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [(k, ser(msgspec.json.decode(v), ctx) or b"") for k, v in events]


def as_proto(client: SchemaRegistryClient, topic: str, events: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:  # fmt: skip
    ser = ProtobufSerializer(fm.ProtoEvent, client, {"use.deprecated.format": False})
    ctx = SerializationContext(topic, MessageField.VALUE)
    out = []
    for k, v in events:
        e = msgspec.json.decode(v)
        out.append((k, ser(fm.ProtoEvent(key=e["key"], ts_ms=e["ts"], values=e["values"]), ctx) or b""))  # fmt: skip
    return out


def avro_forecasts_frame(client: SchemaRegistryClient, msgs: list, target: str) -> pd.DataFrame:
    """Decode Avro forecasts with the registry, then as the JSON ones are."""
    de = AvroDeserializer(client)

    class Json:
        def __init__(self, m: object) -> None:
            topic = m.topic()  # type: ignore[attr-defined]
            doc = de(m.value(), SerializationContext(topic, MessageField.VALUE))  # type: ignore[attr-defined]
            if doc.get("quantiles") is None:
                doc.pop("quantiles", None)
            self._v = msgspec.json.encode(doc)

        def value(self) -> bytes:
            return self._v

    return forecasts_frame([Json(m) for m in msgs], target)


@pytest.mark.parametrize("fmt", ["avro", "protobuf"])
def test_registry_events_give_the_json_path_s_forecasts(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    registry: SchemaRegistry,
    fmt: str,
) -> None:
    frame = synthetic_frame(keys=12, rows=15, features=2, seed=5)
    topics = make_topics(topic_factory, partitions=2)
    client = SchemaRegistryClient({"url": registry.url})
    events = events_of(frame, SYNTH)
    convert = as_avro if fmt == "avro" else as_proto
    produce(services.bootstrap, topics.input, convert(client, topics.input, events))
    # protobuf in, Avro out: the output side is exercised too
    out_fmt = "avro" if fmt == "protobuf" else "json"
    s = settings(
        synth_model, services.bootstrap, services.redis_url, topics, group_id,
        input_format=fmt, output_format=out_fmt, schema_registry_url=registry.url,
    )  # fmt: skip
    n = len(events)
    with running_worker(s) as w:
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= n, 120, "all forecasts")
        assert w.metric("stream_lstm_dead_letters_total", reason="not_registry_format") == 0
    msgs = read_all(services.bootstrap, topics.output, n)
    if out_fmt == "avro":
        assert all((m.value() or b"")[:1] == b"\x00" for m in msgs), "registry wire format"
        assert f"{topics.output}-value" in client.get_subjects()
        got = avro_forecasts_frame(client, msgs, "f0")
    else:
        got = forecasts_frame(msgs, "f0")
    assert len(got[got["h"] == 1]) == n, "one forecast per event"
    assert_parity(synth_model, frame, got)


def test_bad_payloads_and_unknown_schemas_are_dead_lettered_and_the_worker_goes_on(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    registry: SchemaRegistry,
) -> None:
    topics = make_topics(topic_factory, partitions=1)
    client = SchemaRegistryClient({"url": registry.url})
    t0 = 1_704_067_200_000
    good = as_avro(client, topics.input, [
        (b"a", encode_event("a", t0 + i * 3_600_000, {"f0": 10.0 + i, "f1": 1.0}))
        for i in range(6)
    ])  # fmt: skip
    body = good[0][1][5:]
    bad = [
        ("not_registry_format", b"a", encode_event("a", t0 + 99, {"f0": 1.0, "f1": 1.0})),
        ("unknown_schema", b"a", b"\x00" + (987_654).to_bytes(4, "big") + body),
        ("bad_payload", b"a", good[1][1][:7]),
    ]
    msgs = good[:3] + [(k, v) for _, k, v in bad] + good[3:]
    produce(services.bootstrap, topics.input, msgs)
    s = settings(
        synth_model, services.bootstrap, services.redis_url, topics, group_id,
        input_format="avro", schema_registry_url=registry.url,
    )  # fmt: skip
    with running_worker(s) as w:
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= 6, 60, "good forecasts")
        wait_for(
            lambda: (
                sum(w.metric("stream_lstm_dead_letters_total", reason=r) for r, *_ in bad)
                >= len(bad)
            ),
            30,
            "dead letters",
        )
    dlq = read_all(services.bootstrap, topics.dlq, len(bad))
    assert [dict(m.headers() or [])["reason"].decode() for m in dlq] == [r for r, *_ in bad]
    for m, (_, _, value) in zip(dlq, bad, strict=True):
        assert m.value() == value, "the original bytes are kept"
        assert dict(m.headers() or [])["detail"]
    out = forecasts_frame(read_all(services.bootstrap, topics.output, 6), "f0")
    assert sorted(out[out["h"] == 1]["ts_ms"].tolist()) == [t0 + i * 3_600_000 for i in range(6)]


def test_replay_sends_json_schema_events_the_worker_reads(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    registry: SchemaRegistry,
    tmp_path: Path,
) -> None:
    from stream_lstm.cli import main

    frame = synthetic_frame(keys=4, rows=10, features=2, seed=8)
    csv = tmp_path / "events.csv"
    frame.to_csv(csv, index=False)
    topics = make_topics(topic_factory, partitions=1)
    rc = main([
        "replay", "--data", str(csv), "--time-col", "ts", "--key-col", "key",
        "--features", "f0,f1", "--targets", "f0", "--topic", topics.input, "--no-progress",
        "--bootstrap", services.bootstrap, "--format", "json-schema",
        "--schema-registry-url", registry.url,
    ])  # fmt: skip
    assert rc == 0
    client = SchemaRegistryClient({"url": registry.url})
    assert f"{topics.input}-value" in client.get_subjects()
    s = settings(
        synth_model, services.bootstrap, services.redis_url, topics, group_id,
        input_format="json-schema", schema_registry_url=registry.url,
    )  # fmt: skip
    n = len(frame)
    with running_worker(s) as w:
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= n, 60, "all forecasts")
    got = forecasts_frame(read_all(services.bootstrap, topics.output, n), "f0")
    assert_parity(synth_model, frame, got)


def test_a_paused_registry_dead_letters_nothing_and_the_worker_waits(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    registry: SchemaRegistry,
) -> None:
    """The registry stops answering (SIGSTOP) before the worker has read a schema: the worker
    goes unready and retries — no event is dead-lettered or forecast, nothing is committed —
    and when the registry answers again every event is forecast, equal to predict."""
    import os
    import signal
    import urllib.error
    import urllib.request

    from confluent_kafka import Consumer, TopicPartition

    frame = synthetic_frame(keys=6, rows=10, features=2, seed=9)
    topics = make_topics(topic_factory, partitions=2)
    client = SchemaRegistryClient({"url": registry.url})
    avro = as_avro(client, topics.input, events_of(frame, SYNTH))  # serialized while it answers
    s = settings(
        synth_model, services.bootstrap, services.redis_url, topics, group_id,
        input_format="avro", schema_registry_url=registry.url, registry_outage_limit_s=300,
    )  # fmt: skip
    pid = registry.pid()
    assert pid is not None
    with running_worker(s) as w:
        port = w.worker.metrics_port

        def ready() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)

        wait_for(lambda: ready() == 200, 60, "the worker ready")
        os.kill(pid, signal.SIGSTOP)
        try:
            produce(services.bootstrap, topics.input, avro)
            wait_for(lambda: w.metric("stream_lstm_schema_registry_retries_total") >= 1, 150,
                     "registry retries")  # fmt: skip
            assert ready() == 503
            assert w.metric("stream_lstm_forecasts_out_total") == 0
            assert w.metric("stream_lstm_dead_letters_total", reason="unknown_schema") == 0
            c = Consumer({"bootstrap.servers": services.bootstrap, "group.id": group_id})
            committed = c.committed([TopicPartition(topics.input, p) for p in range(2)], 10)
            c.close()
            assert all(tp.offset < 0 for tp in committed), "nothing committed while waiting"
        finally:
            os.kill(pid, signal.SIGCONT)
        n = len(avro)
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= n, 120, "all forecasts")
        wait_for(lambda: ready() == 200, 30, "ready again")
        dead = sum(
            x.value
            for m in w.worker.metrics.dead_letters.collect()
            for x in m.samples
            if x.name.endswith("_total")
        )
        assert dead == 0, "no dead letter"
    msgs = read_all(services.bootstrap, topics.output, n)
    got = forecasts_frame(msgs, "f0")
    assert len(got[got["h"] == 1]) == n
    assert_parity(synth_model, frame, got)
