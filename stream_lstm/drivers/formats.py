"""Avro, Protobuf and JSON Schema events and forecasts, through confluent-kafka's Schema Registry
serializers (``--input-format``, ``--output-format``; docs/formats.md).

Input: :class:`EventTranslator` is the runtime decoder's ``translate`` hook
(``DecoderConfig.translate``): per tick it turns each registry-framed value (magic byte, schema
id, payload) into the canonical JSON event, which the decoder then validates exactly as it
validates JSON events. A payload that is at fault is refused with a reason, and the engine
dead-letters its ORIGINAL bytes:

- ``not_registry_format``: not the registry's wire format (no magic byte 0 and schema id);
- ``unknown_schema``: the registry does not know the schema id;
- ``schema_mismatch``: the writer's schema is not an event (a Protobuf message without the
  event's fields, an Avro schema that is not a record, a schema that does not parse);
- ``bad_payload``: the bytes do not decode with the writer's schema (or fail its JSON Schema).

A registry that cannot be reached (connection refused, timeouts, HTTP 5xx, 401/403/429) is not
the payload's fault: the whole tick is translated again with back-off (nothing has been
dead-lettered, produced or committed for it), for at most ``--registry-outage-limit`` seconds,
then :class:`RegistryUnavailableError` is raised (a crash path: the worker exits 1 without
committing, and a restart consumes those events again).

Output: :class:`SerializingSink` wraps the Kafka sink and serializes each forecast of the output
topic (one serializer call per message: slower than the JSON path), registering the forecast
schema under ``<output topic>-value`` at start-up. Dead letters and alerts stay as they are.

The JSON path (the default) does not use this module at all.
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from stream_lstm.errors import ConfigError, StreamLSTMError
from stream_lstm.redact import redact_url, scrub

log = logging.getLogger(__name__)

Format = Literal["json", "avro", "protobuf", "json-schema"]
FORMATS: tuple[str, ...] = ("json", "avro", "protobuf", "json-schema")
# dead-letter reasons of registry formats (besides the decoder's own, events.REASONS)
FORMAT_REASONS = ("not_registry_format", "unknown_schema", "schema_mismatch", "bad_payload")
Refusal = tuple[str, str]  # (reason, detail)


class RegistryUnavailableError(StreamLSTMError):
    """The Schema Registry could not be reached (or refused us) for longer than the limit."""


# -- the schemas ------------------------------------------------------------------------------
EVENT_AVRO: dict[str, Any] = {
    "type": "record",
    "name": "Event",
    "namespace": "stream_lstm.v1",
    "doc": "One input event of stream-lstm (docs/formats.md).",
    "fields": [
        {"name": "key", "type": "string", "doc": "the entity key (= the Kafka message key)"},
        {
            "name": "ts",
            "type": ["long", "string"],
            "doc": "epoch milliseconds, or ISO 8601 text (naive = UTC)",
        },
        {
            "name": "values",
            "type": {"type": "map", "values": "double"},
            "doc": "feature (and actual) name -> value",
        },
    ],
}

_AVRO_SERIES = {"type": "array", "items": "double"}
FORECAST_AVRO: dict[str, Any] = {
    "type": "record",
    "name": "Forecast",
    "namespace": "stream_lstm.v1",
    "doc": "One forecast of stream-lstm (docs/formats.md).",
    "fields": [
        {"name": "key", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "model", "type": "string"},
        {"name": "interval", "type": "string"},
        {"name": "interval_ms", "type": "long"},
        {"name": "forecast", "type": {"type": "map", "values": _AVRO_SERIES}},
        {"name": "partition", "type": "int"},
        {"name": "offset", "type": "long"},
        {
            "name": "quantiles",
            "type": [
                "null",
                {"type": "map", "values": {"type": "map", "values": _AVRO_SERIES}},
            ],
            "default": None,
        },
    ],
}  # fmt: skip

EVENT_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Event",
    "description": "One input event of stream-lstm (docs/formats.md).",
    "type": "object",
    "properties": {
        "key": {"type": "string"},
        "ts": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
        "values": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
    },
    "required": ["key", "ts", "values"],
}

_SERIES = {"type": "array", "items": {"type": "number"}}
FORECAST_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Forecast",
    "description": "One forecast of stream-lstm (docs/formats.md).",
    "type": "object",
    "properties": {
        "key": {"type": "string"},
        "ts": {"type": "integer"},
        "model": {"type": "string"},
        "interval": {"type": "string"},
        "interval_ms": {"type": "integer"},
        "forecast": {"type": "object", "additionalProperties": _SERIES},
        "partition": {"type": "integer"},
        "offset": {"type": "integer"},
        "quantiles": {
            "type": "object",
            "additionalProperties": {"type": "object", "additionalProperties": _SERIES},
        },
    },
    "required": [
        "key",
        "ts",
        "model",
        "interval",
        "interval_ms",
        "forecast",
        "partition",
        "offset",
    ],
}

# The .proto the descriptors below are built from (docs/schemas/stream_lstm.proto holds it too;
# a unit test checks that they agree).
PROTO_FILE = "stream_lstm/v1/stream_lstm.proto"
PROTO_TEXT = """\
// stream-lstm events and forecasts (docs/formats.md)
syntax = "proto3";

package stream_lstm.v1;

// One input event. Exactly one of ts_ms / ts_iso must be set.
message Event {
  string key = 1;                  // the entity key (= the Kafka message key)
  oneof ts {
    int64 ts_ms = 2;               // epoch milliseconds
    string ts_iso = 3;             // ISO 8601 (naive = UTC)
  }
  map<string, double> values = 4; // feature (and actual) name -> value
}

// A forecast: forecast[target].values[h-1] is the value for ts + h * interval.
message Forecast {
  string key = 1;
  int64 ts = 2;                    // the event's time, epoch ms
  string model = 3;                // the model version
  string interval = 4;
  int64 interval_ms = 5;
  map<string, Series> forecast = 6;
  int32 partition = 7;             // the source event's partition and offset
  int64 offset = 8;
  map<string, Quantiles> quantiles = 9;  // models with quantiles: target -> level -> series
}

message Series {
  repeated double values = 1;
}

message Quantiles {
  map<string, Series> levels = 1;  // "0.1" -> series
}
"""

_F = descriptor_pb2.FieldDescriptorProto


def _map_entry(
    msg: descriptor_pb2.DescriptorProto, name: str, value_type: int, type_name: str = ""
) -> None:
    entry = msg.nested_type.add(name=name)
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    value = entry.field.add(name="value", number=2, type=value_type, label=_F.LABEL_OPTIONAL)
    if type_name:
        value.type_name = type_name


def _field(
    msg: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int, **kw: Any
) -> None:
    msg.field.add(
        name=name, number=number, type=kind, label=kw.pop("label", _F.LABEL_OPTIONAL), **kw
    )


def proto_file() -> descriptor_pb2.FileDescriptorProto:
    """PROTO_TEXT as a descriptor (built here: no protoc needed)."""
    fd = descriptor_pb2.FileDescriptorProto(
        name=PROTO_FILE, package="stream_lstm.v1", syntax="proto3"
    )
    ev = fd.message_type.add(name="Event")
    _field(ev, "key", 1, _F.TYPE_STRING)
    ev.oneof_decl.add(name="ts")
    _field(ev, "ts_ms", 2, _F.TYPE_INT64, oneof_index=0)
    _field(ev, "ts_iso", 3, _F.TYPE_STRING, oneof_index=0)
    _map_entry(ev, "ValuesEntry", _F.TYPE_DOUBLE)
    _field(
        ev,
        "values",
        4,
        _F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".stream_lstm.v1.Event.ValuesEntry",
    )
    fc = fd.message_type.add(name="Forecast")
    for name, number, kind in (
        ("key", 1, _F.TYPE_STRING),
        ("ts", 2, _F.TYPE_INT64),
        ("model", 3, _F.TYPE_STRING),
        ("interval", 4, _F.TYPE_STRING),
        ("interval_ms", 5, _F.TYPE_INT64),
    ):
        _field(fc, name, number, kind)
    _map_entry(fc, "ForecastEntry", _F.TYPE_MESSAGE, ".stream_lstm.v1.Series")
    _field(
        fc,
        "forecast",
        6,
        _F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".stream_lstm.v1.Forecast.ForecastEntry",
    )
    _field(fc, "partition", 7, _F.TYPE_INT32)
    _field(fc, "offset", 8, _F.TYPE_INT64)
    _map_entry(fc, "QuantilesEntry", _F.TYPE_MESSAGE, ".stream_lstm.v1.Quantiles")
    _field(
        fc,
        "quantiles",
        9,
        _F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".stream_lstm.v1.Forecast.QuantilesEntry",
    )
    series = fd.message_type.add(name="Series")
    _field(series, "values", 1, _F.TYPE_DOUBLE, label=_F.LABEL_REPEATED)
    q = fd.message_type.add(name="Quantiles")
    _map_entry(q, "LevelsEntry", _F.TYPE_MESSAGE, ".stream_lstm.v1.Series")
    _field(
        q,
        "levels",
        1,
        _F.TYPE_MESSAGE,
        label=_F.LABEL_REPEATED,
        type_name=".stream_lstm.v1.Quantiles.LevelsEntry",
    )
    return fd  # fmt: skip


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(proto_file())
ProtoEvent: Any = GetMessageClass(_POOL.FindMessageTypeByName("stream_lstm.v1.Event"))
ProtoForecast: Any = GetMessageClass(_POOL.FindMessageTypeByName("stream_lstm.v1.Forecast"))

# what a writer's Protobuf message must hold to be read as an event: number -> (name, type)
_EVENT_FIELDS = {
    1: ("key", _F.TYPE_STRING),
    2: ("ts_ms", _F.TYPE_INT64),
    3: ("ts_iso", _F.TYPE_STRING),
    4: ("values", _F.TYPE_MESSAGE),
}


def schema_files() -> dict[str, str]:
    """The schemas as the files shipped in docs/schemas/ (name -> text)."""

    def dump(o: Any) -> str:
        return json.dumps(o, indent=2) + "\n"

    return {
        "event.avsc": dump(EVENT_AVRO),
        "forecast.avsc": dump(FORECAST_AVRO),
        "event.schema.json": dump(EVENT_JSON_SCHEMA),
        "forecast.schema.json": dump(FORECAST_JSON_SCHEMA),
        "stream_lstm.proto": PROTO_TEXT,
    }


# -- the registry client ----------------------------------------------------------------------
def registry_conf(url: str, auth: str | None, options: Mapping[str, str] | None) -> dict[str, Any]:
    """confluent-kafka's SchemaRegistryClient configuration."""
    conf: dict[str, Any] = {"url": url, "timeout": 10, **(options or {})}  # (see config.py)
    if auth:
        conf["basic.auth.user.info"] = auth
        conf.setdefault("basic.auth.credentials.source", "USER_INFO")
    return conf


def registry_client(conf: Mapping[str, Any]) -> SchemaRegistryClient:
    """A client; ``mock://…`` gives confluent-kafka's in-memory mock (tests)."""
    try:
        return SchemaRegistryClient.new_client(dict(conf))
    except (ValueError, TypeError) as e:
        text = scrub(str(e), _secrets(conf))
        url = str(conf.get("url", ""))
        if url:
            text = text.replace(url, redact_url(url))
        raise ConfigError(f"schema registry settings: {text}") from None


def _secrets(conf: Mapping[str, Any]) -> dict[str, Any]:
    return {k if k != "basic.auth.user.info" else "password": v for k, v in conf.items()}


_TRANSPORT_MODULES = ("httpx", "httpx2", "httpcore", "h11", "h2", "requests", "urllib3", "ssl")


def is_unavailable(e: BaseException) -> bool:
    """Whether an error means the registry could not serve us (not the payload's fault)."""
    if isinstance(e, SchemaRegistryError):
        status = e.http_status_code
        return status in (-1, 401, 403, 408, 429) or status >= 500
    if isinstance(e, OSError | TimeoutError | ConnectionError):
        return True
    return any(c.__module__.split(".")[0] in _TRANSPORT_MODULES for c in type(e).__mro__)


class RegistryRetry:
    """Run a registry call again, with back-off, while the registry is unavailable; give up
    after ``limit_s`` (0: never) or 10 s once a stop is requested."""

    def __init__(
        self,
        limit_s: float = 240.0,
        stopping: Callable[[], bool] = lambda: False,
        beat: Callable[[], None] = lambda: None,
        on_retry: Callable[[], None] = lambda: None,
        url: str = "",
        client: SchemaRegistryClient | None = None,
    ) -> None:
        self.limit_s, self.stopping, self.beat, self.on_retry = limit_s, stopping, beat, on_retry
        self.client = client  # (the start-up check reads the registry through it)
        self.url = redact_url(url)
        self.failing: str | None = None  # why the registry call being retried failed (/readyz)

    def __call__(self, fn: Callable[[], Any]) -> Any:
        delay, start = 0.1, time.monotonic()
        while True:
            try:
                out = fn()
                self.failing = None
                return out
            except Exception as e:
                if not is_unavailable(e):
                    raise
                self.failing = why = f"{type(e).__name__}: {e}"
                waited = time.monotonic() - start
                if (self.limit_s and waited > self.limit_s) or (self.stopping() and waited > 10):
                    raise RegistryUnavailableError(
                        f"Schema Registry {self.url} still unavailable after {waited:.0f} s: {why}"
                    ) from None
                self.on_retry()
                log.warning("Schema Registry %s: %s; retrying in %.1f s", self.url, why, delay)
                self.beat()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


# -- input ------------------------------------------------------------------------------------
_ENC = msgspec.json.Encoder()


def _schema_id(raw: bytes) -> int | None:
    if len(raw) < 5 or raw[0] != 0:
        return None
    return int(struct.unpack(">I", raw[1:5])[0])


class EventTranslator:
    """The decoder's ``translate`` hook for one registry format: raw values → the JSON event
    bytes (or a refusal). Raises :class:`RegistryUnavailableError` after the retry limit."""

    def __init__(
        self,
        fmt: Format,
        client: SchemaRegistryClient,
        topic: str,
        retry: RegistryRetry | None = None,
    ) -> None:
        if fmt == "json":
            raise ValueError("the JSON format needs no translation")
        self.fmt, self.client = fmt, client
        self.retry = retry or RegistryRetry()
        self._ctx = SerializationContext(topic, MessageField.VALUE)
        self._proto_ok: dict[tuple[int, tuple[int, ...]], str | None] = {}
        self._de: Callable[[bytes, SerializationContext], Any]
        if fmt == "avro":
            self._de = AvroDeserializer(client)
        elif fmt == "protobuf":
            self._de = ProtobufDeserializer(ProtoEvent, {"use.deprecated.format": False}, client)
        else:
            self._de = JSONDeserializer(None, schema_registry_client=client)

    def __call__(self, values: Sequence[bytes]) -> list[bytes | Refusal]:
        return self.retry(lambda: [self.one(v) for v in values])

    def one(self, raw: bytes) -> bytes | Refusal:
        """One value; raises when the registry is unavailable (the caller retries the tick)."""
        schema_id = _schema_id(raw)
        if schema_id is None:
            return (
                "not_registry_format",
                f"not the Schema Registry wire format ({self.fmt} input: magic byte 0 and a "
                "4-byte schema id first)",
            )
        if self.fmt == "protobuf":
            bad = self._check_proto_writer(raw, schema_id)
            if bad is not None:
                return bad
        try:
            obj = self._de(raw, self._ctx)
        except Exception as e:
            return self._refusal(e, schema_id)
        if self.fmt == "protobuf":
            ts = obj.WhichOneof("ts")
            event: Any = {"key": obj.key, "values": dict(obj.values)}
            if ts is not None:
                event["ts"] = getattr(obj, ts)
        elif not isinstance(obj, dict):
            return (
                "schema_mismatch",
                f"schema {schema_id} is not a record/object: got {type(obj).__name__}",
            )
        else:
            event = obj
            ts = event.get("ts")
            if isinstance(ts, datetime):  # Avro timestamp-millis
                event["ts"] = int(ts.timestamp() * 1000)
        values = event.get("values")
        if isinstance(values, dict):
            for name, v in values.items():
                if isinstance(v, float) and not math.isfinite(v):
                    return ("non_finite_value", f"{name} is {v}")
        try:
            return _ENC.encode(event)
        except Exception as e:  # a type JSON cannot hold
            return ("schema_mismatch", f"{type(e).__name__}: {e}")

    def _refusal(self, e: Exception, schema_id: int) -> Refusal:
        if is_unavailable(e):
            raise e
        if isinstance(e, SchemaRegistryError):
            if e.http_status_code == 404:
                return ("unknown_schema", f"schema id {schema_id} is not in the registry ({e})")
            return ("schema_mismatch", f"schema id {schema_id}: {e}")
        return ("bad_payload", f"{self.fmt} with schema {schema_id}: {type(e).__name__}: {e}")

    def _check_proto_writer(self, raw: bytes, schema_id: int) -> Refusal | None:
        """A Protobuf payload parses with any message type: the writer's message must be an
        event (its fields numbered and typed as ours), checked once per schema id."""
        try:
            indexes = _message_indexes(raw)
        except Exception as e:
            return ("bad_payload", f"protobuf message indexes: {type(e).__name__}: {e}")
        key = (schema_id, indexes)
        if key not in self._proto_ok:
            try:
                schema = self.client.get_schema(schema_id, fmt="serialized")
            except Exception as e:
                return self._refusal(e, schema_id)
            self._proto_ok[key] = _proto_mismatch(schema, indexes)
        why = self._proto_ok[key]
        return None if why is None else ("schema_mismatch", f"schema {schema_id}: {why}")


def _message_indexes(raw: bytes) -> tuple[int, ...]:
    """The Protobuf message indexes after the schema id (zig-zag varints; [] means [0])."""
    buf = io.BytesIO(raw[5:])

    def varint() -> int:
        shift = result = 0
        while True:
            b = buf.read(1)
            if not b:
                raise EOFError("truncated varint")
            result |= (b[0] & 0x7F) << shift
            if not b[0] & 0x80:
                return (result >> 1) ^ -(result & 1)
            shift += 7

    n = varint()
    return tuple(varint() for _ in range(n)) if n else (0,)


def _proto_mismatch(schema: Schema, indexes: tuple[int, ...]) -> str | None:
    import base64

    try:
        fd = descriptor_pb2.FileDescriptorProto.FromString(
            base64.b64decode(schema.schema_str or "")
        )
    except Exception as e:
        return f"the writer's schema does not parse as a Protobuf descriptor ({type(e).__name__})"
    try:
        msg = fd.message_type[indexes[0]]
        for i in indexes[1:]:
            msg = msg.nested_type[i]
    except IndexError:
        return f"no message at index {list(indexes)} in the writer's schema"
    have = {f.number: (f.name, f.type) for f in msg.field}

    def kind_of(k: int) -> str:
        return str(_F.Type.Name(k)).removeprefix("TYPE_").lower()

    for number, (name, kind) in _EVENT_FIELDS.items():
        if have.get(number) != (name, kind):
            got = have.get(number)
            seen = "no such field" if got is None else f"{got[0]} ({kind_of(got[1])})"
            return (
                f"message {msg.name} is not a stream_lstm.v1.Event: field {number} must be "
                f"{name} ({kind_of(kind)}), the writer's is {seen}"
            )
    return None


# -- output -----------------------------------------------------------------------------------
class ForecastSerializer:
    """JSON forecasts (ForecastOut) → the output format, one serializer call per message."""

    def __init__(self, fmt: Format, client: SchemaRegistryClient, topic: str) -> None:
        self.fmt, self.client, self.topic = fmt, client, topic
        self._ctx = SerializationContext(topic, MessageField.VALUE)
        self._dec = msgspec.json.Decoder()
        self._ser: Callable[[Any, SerializationContext], bytes | None]
        if fmt == "avro":
            self._ser = AvroSerializer(client, json.dumps(FORECAST_AVRO))
            self._schema = Schema(json.dumps(FORECAST_AVRO), "AVRO")
        elif fmt == "protobuf":
            self._ser = ProtobufSerializer(ProtoForecast, client, {"use.deprecated.format": False})
        elif fmt == "json-schema":
            self._ser = JSONSerializer(
                json.dumps(FORECAST_JSON_SCHEMA), client, conf={"validate": False}
            )
        else:
            raise ValueError("the JSON format needs no serializer")

    @property
    def subject(self) -> str:
        return f"{self.topic}-value"

    def register(self) -> None:
        """Register the forecast schema (the serializer would on its first message): a
        refusal (an incompatible schema under the subject) is found at start-up."""
        self.serialize([_SAMPLE])

    def serialize(self, values: Sequence[bytes]) -> list[bytes]:
        out = []
        ser, ctx, dec = self._ser, self._ctx, self._dec
        for v in values:
            f = dec.decode(v)
            out.append(
                ser(self._message(f) if self.fmt == "protobuf" else _complete(f), ctx) or b""
            )
        return out

    @staticmethod
    def _message(f: dict[str, Any]) -> Message:
        m = ProtoForecast(
            key=f["key"], ts=f["ts"], model=f["model"], interval=f["interval"],
            interval_ms=f["interval_ms"], partition=f["partition"], offset=f["offset"],
        )  # fmt: skip
        for target, series in f["forecast"].items():
            m.forecast[target].values.extend(series)
        for target, levels in (f.get("quantiles") or {}).items():
            for level, series in levels.items():
                m.quantiles[target].levels[level].values.extend(series)
        return m


_SAMPLE = _ENC.encode(
    {"key": "k", "ts": 0, "model": "m", "interval": "1h", "interval_ms": 3_600_000,
     "forecast": {"y": [0.0]}, "partition": 0, "offset": 0}
)  # fmt: skip


def _complete(f: dict[str, Any]) -> dict[str, Any]:
    f.setdefault("quantiles", None)  # (left out of JSON when absent; Avro wants the null)
    return f


class SerializingSink:
    """The engine's sink, with the output topic's forecasts serialized in a registry format;
    everything else (dead letters, alerts, flush, transactions) is the wrapped sink's."""

    def __init__(self, inner: Any, serializer: ForecastSerializer, retry: RegistryRetry) -> None:
        self.inner, self.serializer, self.retry = inner, serializer, retry
        self.topic = serializer.topic

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.inner.produce(topic, key, value, headers)

    def produce_many(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> None:
        if topic == self.topic:
            values = self.retry(lambda: self.serializer.serialize(values))
        self.inner.produce_many(topic, keys, values)

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class EventSerializer:
    """JSON input events (``encode_event``) → a registry format: what ``replay --format``
    sends (registering the event schema under ``<topic>-value``)."""

    def __init__(self, fmt: Format, client: SchemaRegistryClient, topic: str) -> None:
        self.fmt = fmt
        self._ctx = SerializationContext(topic, MessageField.VALUE)
        self._dec = msgspec.json.Decoder()
        self._ser: Callable[[Any, SerializationContext], bytes | None]
        if fmt == "avro":
            self._ser = AvroSerializer(client, json.dumps(EVENT_AVRO))
        elif fmt == "protobuf":
            self._ser = ProtobufSerializer(ProtoEvent, client, {"use.deprecated.format": False})
        elif fmt == "json-schema":
            self._ser = JSONSerializer(json.dumps(EVENT_JSON_SCHEMA), client)
        else:
            raise ValueError("the JSON format needs no serializer")

    def __call__(self, event: bytes) -> bytes:
        e = self._dec.decode(event)
        if self.fmt == "protobuf":
            ts = e["ts"]
            e = ProtoEvent(
                key=e["key"],
                values=e["values"],
                **({"ts_ms": ts} if isinstance(ts, int) else {"ts_iso": ts}),
            )
        return self._ser(e, self._ctx) or b""
