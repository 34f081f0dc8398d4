"""Avro, Protobuf and JSON Schema input/output (drivers/formats.py) on confluent-kafka's
in-memory ``mock://`` registry: the decoder's translate hook, refusals with reasons, a registry
that cannot be reached, forecast serialization, the settings, the shipped schema files."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import msgspec
import numpy as np
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass

from stream_lstm.config import WorkerSettings, build_settings
from stream_lstm.drivers import formats as fm
from stream_lstm.errors import ConfigError
from stream_lstm.runtime.events import Decoder, DecoderConfig, InMessage, MessageBatch

T0 = 1_704_067_200_000
TOPIC = "events"
CTX = SerializationContext(TOPIC, MessageField.VALUE)
DOCS = Path(__file__).parents[2] / "docs" / "schemas"


@pytest.fixture
def client() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})


def avro(client: SchemaRegistryClient, ev: dict) -> bytes:
    return AvroSerializer(client, json.dumps(fm.EVENT_AVRO))(ev, CTX)  # type: ignore[return-value]


def proto(client: SchemaRegistryClient, key: str, ts: int | str, values: dict) -> bytes:
    ts_field = {"ts_ms": ts} if isinstance(ts, int) else {"ts_iso": ts}
    msg = fm.ProtoEvent(key=key, values=values, **ts_field)
    return ProtobufSerializer(fm.ProtoEvent, client, {"use.deprecated.format": False})(msg, CTX)  # type: ignore[return-value]


def batch(values: list[bytes | None], keys: list[bytes | None] | None = None) -> MessageBatch:
    keys = keys or [b"a"] * len(values)
    return MessageBatch.of([InMessage(k, v, TOPIC, 0, i, 0) for i, (k, v) in enumerate(zip(keys, values, strict=True))])  # fmt: skip


def decoder(translate: fm.EventTranslator | None) -> Decoder:
    return Decoder(DecoderConfig(features=("f0", "f1"), translate=translate))


def test_avro_events_decode_like_their_json(client: SchemaRegistryClient) -> None:
    tr = fm.EventTranslator("avro", client, TOPIC)
    raw = [
        avro(client, {"key": "a", "ts": T0, "values": {"f0": 1.5, "f1": 2.0}}),
        avro(client, {"key": "a", "ts": "2024-01-01T01:00:00Z", "values": {"f0": 3.0, "f1": 4.0}}),
    ]
    dec = decoder(tr).decode_batch(batch(raw), now_ms=T0)
    assert not dec.bad
    assert dec.keys == ["a", "a"]
    assert dec.ts.tolist() == [T0, T0 + 3_600_000]
    np.testing.assert_array_equal(dec.values, np.float32([[1.5, 2.0], [3.0, 4.0]]))


def test_protobuf_events_decode_like_their_json(client: SchemaRegistryClient) -> None:
    tr = fm.EventTranslator("protobuf", client, TOPIC)
    raw = [proto(client, "a", T0, {"f0": 1.0, "f1": 2.0}), proto(client, "a", "2024-01-01T01:00:00", {"f0": 3.0, "f1": 4.0})]  # fmt: skip
    dec = decoder(tr).decode_batch(batch(raw), now_ms=T0)
    assert not dec.bad
    assert dec.ts.tolist() == [T0, T0 + 3_600_000]
    np.testing.assert_array_equal(dec.values, np.float32([[1.0, 2.0], [3.0, 4.0]]))


def test_json_schema_events(client: SchemaRegistryClient) -> None:
    ser = JSONSerializer(json.dumps(fm.EVENT_JSON_SCHEMA), client)
    raw = [
        ser({"key": "a", "ts": T0, "values": {"f0": 1.0, "f1": 2.0}}, CTX),
        ser({"key": "a", "ts": T0 + 1, "values": {"f0": 1.0, "f1": 2.0}}, CTX),
    ]
    # a payload that breaks the writer's schema (ts must be an integer or a string)
    bad = raw[0][:5] + b'{"key": "a", "ts": 1.5, "values": {}}'
    dec = decoder(fm.EventTranslator("json-schema", client, TOPIC)).decode_batch(
        batch([*raw, bad]), now_ms=T0
    )
    assert dec.index.tolist() == [0, 1]
    assert [(b.index, b.reason) for b in dec.bad] == [(2, "bad_payload")]


def test_bad_payloads_are_refused_with_a_reason_in_place(client: SchemaRegistryClient) -> None:
    good = avro(client, {"key": "a", "ts": T0, "values": {"f0": 1.0, "f1": 2.0}})
    unknown = b"\x00" + (999).to_bytes(4, "big") + good[5:]
    truncated = good[:8]
    missing = avro(client, {"key": "a", "ts": T0 + 1, "values": {"f0": 1.0}})
    values = [good, b'{"key": "a"}', unknown, None, truncated, missing, b""]
    dec = decoder(fm.EventTranslator("avro", client, TOPIC)).decode_batch(batch(values), now_ms=T0)
    assert dec.index.tolist() == [0]
    got = [(b.index, b.reason) for b in dec.bad]
    assert got == [
        (1, "not_registry_format"),
        (2, "unknown_schema"),
        (3, "tombstone"),
        (4, "bad_payload"),
        (5, "missing_feature"),  # decoded, then validated as JSON events are
        (6, "empty"),
    ]
    assert "999" in dec.bad[1].detail


def test_a_protobuf_message_that_is_not_an_event_is_a_schema_mismatch(
    client: SchemaRegistryClient,
) -> None:
    fd = descriptor_pb2.FileDescriptorProto(name="other.proto", package="x", syntax="proto3")
    m = fd.message_type.add(name="Other")
    m.field.add(name="name", number=1, type=9, label=1)  # string
    m.field.add(name="count", number=2, type=5, label=1)  # int32, not int64 ts_ms
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    other = GetMessageClass(pool.FindMessageTypeByName("x.Other"))
    raw = ProtobufSerializer(other, client, {"use.deprecated.format": False})(
        other(name="a", count=3), CTX
    )
    good = proto(client, "a", T0, {"f0": 1.0, "f1": 2.0})
    dec = decoder(fm.EventTranslator("protobuf", client, TOPIC)).decode_batch(
        batch([raw, good]), now_ms=T0
    )
    assert dec.index.tolist() == [1]
    assert dec.bad[0].reason == "schema_mismatch"
    assert "not a stream_lstm.v1.Event" in dec.bad[0].detail


def test_non_finite_values_are_refused(client: SchemaRegistryClient) -> None:
    raw = avro(client, {"key": "a", "ts": T0, "values": {"f0": float("nan"), "f1": 2.0}})
    dec = decoder(fm.EventTranslator("avro", client, TOPIC)).decode_batch(batch([raw]), now_ms=T0)
    assert [b.reason for b in dec.bad] == ["non_finite_value"]


def test_an_unreachable_registry_raises_and_refuses_nothing(client: SchemaRegistryClient) -> None:
    raw = avro(client, {"key": "a", "ts": T0, "values": {"f0": 1.0, "f1": 2.0}})
    down = SchemaRegistryClient({"url": "http://127.0.0.1:1", "max.retries": 0, "timeout": 1})
    retry = fm.RegistryRetry(limit_s=0.3)
    tr = fm.EventTranslator("avro", down, TOPIC, retry)
    with pytest.raises(fm.RegistryUnavailableError, match="still unavailable"):
        decoder(tr).decode_batch(batch([raw]), now_ms=T0)
    assert retry.failing is not None


def test_a_registry_back_within_the_limit_is_retried(client: SchemaRegistryClient) -> None:
    raw = avro(client, {"key": "a", "ts": T0, "values": {"f0": 1.0, "f1": 2.0}})
    tr = fm.EventTranslator("avro", client, TOPIC, fm.RegistryRetry(limit_s=30))
    calls = {"n": 0}
    real = tr.one

    def flaky(v: bytes) -> bytes | tuple[str, str]:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionRefusedError("registry down")
        return real(v)

    tr.one = flaky  # type: ignore[method-assign]
    dec = decoder(tr).decode_batch(batch([raw]), now_ms=T0)
    assert not dec.bad and dec.index.tolist() == [0] and calls["n"] == 3


def test_the_json_path_has_no_hook() -> None:
    assert DecoderConfig(features=("f0",)).translate is None


@pytest.mark.parametrize("fmt", ["avro", "protobuf", "json-schema"])
def test_forecasts_serialize_and_decode_with_the_registry(
    client: SchemaRegistryClient, fmt: fm.Format
) -> None:
    f = {"key": "a", "ts": T0, "model": "v1", "interval": "1h", "interval_ms": 3_600_000,
         "forecast": {"y": [1.5, 2.5]}, "partition": 3, "offset": 7,
         "quantiles": {"y": {"0.1": [1.0, 2.0], "0.9": [2.0, 3.0]}}}  # fmt: skip
    plain = {k: v for k, v in f.items() if k != "quantiles"}
    ser = fm.ForecastSerializer(fmt, client, "forecasts")
    ser.register()
    out = ser.serialize([msgspec.json.encode(f), msgspec.json.encode(plain)])
    assert all(o[0] == 0 for o in out)
    assert client.get_subjects() == ["forecasts-value"]
    ctx = SerializationContext("forecasts", MessageField.VALUE)
    if fmt == "avro":
        got = [AvroDeserializer(client)(o, ctx) for o in out]
        assert got[0] == f and got[1] == {**plain, "quantiles": None}
    elif fmt == "protobuf":
        de = ProtobufDeserializer(fm.ProtoForecast, {"use.deprecated.format": False}, client)
        m = de(out[0], ctx)
        assert list(m.forecast["y"].values) == [1.5, 2.5] and m.offset == 7
        assert list(m.quantiles["y"].levels["0.9"].values) == [2.0, 3.0]
    else:
        assert json.loads(out[0][5:]) == f


def test_a_registry_format_needs_the_registry_url() -> None:
    with pytest.raises(ConfigError, match="--schema-registry-url"):
        build_settings(WorkerSettings, None, model="m", input_format="avro")
    with pytest.raises(ConfigError, match="--output-format protobuf"):
        build_settings(WorkerSettings, None, model="m", output_format="protobuf")
    with pytest.raises(ConfigError, match="--schema-registry-auth"):
        build_settings(
            WorkerSettings, None, model="m", schema_registry_options=["basic.auth.user.info=a:b"]
        )


def test_registry_secrets_are_kept_out_of_repr_and_logs() -> None:
    s = build_settings(
        WorkerSettings, None, model="m", input_format="avro",
        schema_registry_url="https://u:hunter2@reg:8081", schema_registry_auth="me:s3cret",
        schema_registry_options=["bearer.auth.token=t0ken", "timeout=5"],
    )  # fmt: skip
    text = repr(s) + str(s.registry_shown())
    for secret in ("hunter2", "s3cret", "t0ken"):
        assert secret not in text
    conf = s.registry_conf()
    assert conf["basic.auth.user.info"] == "me:s3cret" and conf["url"].startswith("https://u:")
    assert s.registry_shown()["basic.auth.user.info"] == "me:***"


def test_the_shipped_schema_files_are_the_code_s() -> None:
    for name, text in fm.schema_files().items():
        assert (DOCS / name).read_text() == text, f"docs/schemas/{name} differs from the code"


def test_the_proto_text_matches_the_descriptor() -> None:
    fd = fm.proto_file()
    blocks = dict(re.findall(r"message (\w+) \{(.*?)\n\}", fm.PROTO_TEXT, re.S))
    for msg in fd.message_type:
        declared = {int(n): name for name, n in re.findall(r"(\w+) = (\d+);", blocks[msg.name])}
        assert declared == {f.number: f.name for f in msg.field}, msg.name
