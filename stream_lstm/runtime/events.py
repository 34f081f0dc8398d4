"""Input events and output forecasts: decoding, validation, encoding.

Input event (JSON, Kafka message key = entity key)::

    {"key": "sensor-7", "ts": "2024-01-01T00:00:00Z" | 1704067200000,
     "values": {"feature": 1.0, ...}}

``ts`` is ISO 8601 (naive means UTC) or epoch milliseconds. ``values`` must hold every feature
of the model; it may also hold target columns (actuals). A bad event is not an exception: it
becomes a :class:`BadEvent` with a reason, and goes to the dead-letter topic with its original
bytes.

A tick's messages arrive as a :class:`MessageBatch` (columns, not one object per message). Each
message decodes with ``msgspec`` straight into a struct typed for the model's features (a
missing or unknown feature is a validation error that names it); the remaining checks run on
arrays for the whole tick.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import repeat
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import orjson

# Dead-letter reasons (the `reason` header and the metric label). Late and duplicate events are
# found by the engine, which knows each key's last applied time.
REASONS = (
    "tombstone",
    "empty",
    "oversized_message",
    "not_utf8",
    "not_json",
    "too_deep",
    "undecodable",
    "wrong_type",
    "missing_field",
    "bad_key",
    "oversized_key",
    "null_key",
    "key_mismatch",
    "bad_timestamp",
    "future_timestamp",
    "missing_feature",
    "unknown_feature",
    "non_finite_value",
    "late",
    "duplicate",
)
_NON_FINITE = re.compile(rb"(?<![\w\"])-?(NaN|Infinity|inf)(?![\w\"])")
MAX_TS = 2**53


class EventIn(msgspec.Struct):
    """The schema, with free-form values (the worker's decoder types ``values`` per model)."""

    key: str
    ts: int | str
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class InMessage:
    """One consumed message, independent of the Kafka client that delivered it."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # the message's own timestamp (CreateTime or LogAppendTime)


@dataclass
class MessageBatch:
    """A tick's messages as columns (one topic)."""

    topic: str
    keys: list[bytes | None]
    values: list[bytes | None]
    partitions: np.ndarray  # [n] int32
    offsets: np.ndarray  # [n] int64
    timestamps: np.ndarray  # [n] int64, message timestamps (ms)

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def columns(
        cls,
        topic: str,
        n: int,
        keys: Iterable[bytes | None],
        values: Iterable[bytes | None],
        partitions: Iterable[int],
        offsets: Iterable[int],
        timestamps_ms: Iterable[int],
    ) -> MessageBatch:
        """The one builder of a batch: a driver hands its client's ``n`` messages as columns
        (``batch_of`` in ``drivers/kafka_client.py`` and ``drivers/faust.py``)."""
        return cls(
            topic=topic,
            keys=list(keys),
            values=list(values),
            partitions=np.fromiter(partitions, np.int32, n),
            offsets=np.fromiter(offsets, np.int64, n),
            timestamps=np.fromiter(timestamps_ms, np.int64, n),
        )

    @classmethod
    def of(cls, msgs: Sequence[InMessage]) -> MessageBatch:
        return cls.columns(
            msgs[0].topic if msgs else "",
            len(msgs),
            (m.key for m in msgs),
            (m.value for m in msgs),
            (m.partition for m in msgs),
            (m.offset for m in msgs),
            (m.timestamp_ms for m in msgs),
        )

    def take(self, idx: np.ndarray) -> MessageBatch:
        """The messages at positions ``idx``, as a batch of their own."""
        return MessageBatch(
            topic=self.topic,
            keys=[self.keys[i] for i in idx.tolist()],
            values=[self.values[i] for i in idx.tolist()],
            partitions=self.partitions[idx],
            offsets=self.offsets[idx],
            timestamps=self.timestamps[idx],
        )

    def message(self, i: int) -> InMessage:
        return InMessage(
            self.keys[i],
            self.values[i],
            self.topic,
            int(self.partitions[i]),
            int(self.offsets[i]),
            int(self.timestamps[i]),
        )


@dataclass(frozen=True, slots=True)
class BadEvent:
    index: int  # position in the batch
    reason: str
    detail: str


@dataclass
class DecodedBatch:
    """Good events as arrays (in batch order) and bad ones as reasons."""

    index: np.ndarray  # [n] position of each good event in the batch
    keys: list[str]
    ts: np.ndarray  # [n] int64 epoch ms
    values: np.ndarray  # [n, F] float32, the model's features in order
    bad: list[BadEvent] = field(default_factory=list)
    # [n, X] float32: the allowed extra columns that are not features (e.g. targets sent as
    # actuals), NaN where an event did not send one; None when there are none
    extra: np.ndarray | None = None
    # [n, F] bool: features the event did not send (missing="ffill" only; None when none)
    missing: np.ndarray | None = None


Translate = Callable[[Sequence[bytes]], list[bytes | tuple[str, str]]]


@dataclass(frozen=True)
class DecoderConfig:
    features: tuple[str, ...]
    allowed_extra: tuple[str, ...] = ()  # e.g. target columns sent as actuals
    allow_unknown: bool = False
    max_message_bytes: int = 64 * 1024
    max_key_bytes: int = 256
    max_future_ms: int = 86_400_000  # a timestamp further ahead of the wall clock is refused
    check_message_key: bool = True  # the Kafka key must equal the payload's key
    # a feature missing from `values` (or null): "dlq" dead-letters the event; "ffill" decodes
    # it as NaN and the engine carries the key's last value forward (Engine._fill_missing)
    missing: str = "dlq"
    # an input format other than JSON (drivers/formats.py): turns a tick's values (each
    # non-empty, within max_message_bytes) into JSON event bytes, or a (reason, detail) refusal
    # that is dead-lettered with the original bytes; it may raise (an infrastructure error:
    # nothing of the tick is dead-lettered). None: JSON, no per-message work added.
    translate: Translate | None = field(default=None, compare=False)


F32_MAX = float(np.finfo(np.float32).max)


class Decoder:
    """Turns a :class:`MessageBatch` into a :class:`DecodedBatch` without raising.

    Decoding is a function of each message alone: a message decodes the same way whatever
    else is in its tick (after a crash, ticks regroup).
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        self.cfg = cfg
        extra = [x for x in dict.fromkeys(cfg.allowed_extra) if x not in cfg.features]
        # the struct's fields are f_0.. (features) and x_0.. (extra), renamed to the column
        # names in the JSON: a column name need not be a Python identifier ("load kW")
        fields = [f"f_{i}" for i in range(len(cfg.features))]
        extra_fields = [f"x_{i}" for i in range(len(extra))]
        feature_fields: list[Any] = (
            [(f, float | None, None) for f in fields]
            if cfg.missing == "ffill"
            else [(f, float) for f in fields]
        )
        values_type = msgspec.defstruct(
            "Values",
            feature_fields + [(x, float | None, None) for x in extra_fields],
            forbid_unknown_fields=not cfg.allow_unknown,
            rename=dict(zip(fields + extra_fields, [*cfg.features, *extra], strict=True)),
            gc=False,  # thousands per tick, never in a cycle: keep them out of the cyclic GC
        )
        event_type = msgspec.defstruct(
            "Event", [("key", str), ("ts", int | str), ("values", values_type)], gc=False
        )
        self._one = msgspec.json.Decoder(event_type)
        self._features = attrgetter(*fields) if len(fields) > 1 else None
        self._n_features = len(cfg.features)
        self.extra_names = tuple(extra)
        self._extra = attrgetter(*extra_fields) if len(extra_fields) > 1 else None

    def decode_batch(self, batch: MessageBatch, now_ms: int | None = None) -> DecodedBatch:
        """Never raises: a message whose decoding fails in an unforeseen way is dead-lettered
        alone (the tick is decoded again one message at a time to find it)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if self.cfg.translate is not None:
            return self._translated(batch, now, self.cfg.translate)
        return self._decode_safely(batch, now)

    def _translated(self, batch: MessageBatch, now: int, translate: Translate) -> DecodedBatch:
        """Another input format: translate the values that could be events (may raise: before
        anything is decided for the tick), decode the JSON, refuse the rest with the reason
        the translation gave; indices stay those of ``batch`` (its original bytes)."""
        limit = self.cfg.max_message_bytes
        values = list(batch.values)
        todo = [i for i, v in enumerate(values) if v and len(v) <= limit]
        refused: list[BadEvent] = []
        for i, out in zip(todo, translate([values[i] for i in todo]), strict=True):  # type: ignore[misc]
            if isinstance(out, tuple):
                refused.append(BadEvent(i, out[0], out[1]))
            else:
                values[i] = out
        if not refused:
            return self._decode_safely(replace(batch, values=values), now)
        keep = np.setdiff1d(np.arange(len(batch)), [b.index for b in refused])
        sub = replace(batch, values=values).take(keep)
        dec = self._decode_safely(sub, now)
        dec.index = keep[dec.index]
        dec.bad = sorted(
            [replace(b, index=int(keep[b.index])) for b in dec.bad] + refused,
            key=lambda b: b.index,
        )
        return dec

    def _decode_safely(self, batch: MessageBatch, now: int) -> DecodedBatch:
        try:
            return self._decode(batch, now)
        except Exception:
            parts = []
            for i in range(len(batch)):
                one = batch.take(np.asarray([i]))
                try:
                    dec = self._decode(one, now)
                except Exception as e:
                    detail = f"{type(e).__name__}: {e}"
                    dec = DecodedBatch(
                        np.zeros(0, np.int64), [], np.zeros(0, np.int64),
                        np.zeros((0, self._n_features), np.float32),
                        [BadEvent(0, "undecodable", detail)],
                        None if not self.extra_names
                        else np.zeros((0, len(self.extra_names)), np.float32),
                    )  # fmt: skip
                parts.append((i, dec))
            return _concat(parts, self._n_features, len(self.extra_names))

    def _decode(self, batch: MessageBatch, now: int) -> DecodedBatch:
        cfg = self.cfg
        bad: list[BadEvent] = []
        events: list[Any] = []
        idx: list[int] = []
        decode = self._one.decode  # one message at a time: a message can never spill into another
        limit = cfg.max_message_bytes
        for i, raw in enumerate(batch.values):
            if raw and len(raw) <= limit:
                try:
                    events.append(decode(raw))
                    idx.append(i)
                except Exception as e:  # msgspec's errors, and e.g. RecursionError (deep nesting)
                    bad.append(_classify(i, raw, e))
            elif raw is None:
                bad.append(BadEvent(i, "tombstone", "message has no value (a tombstone)"))
            elif not raw:
                bad.append(BadEvent(i, "empty", "message value is empty"))
            else:
                bad.append(BadEvent(i, "oversized_message", f"{len(raw)} bytes > {limit}"))
        n = len(events)
        keys = [e.key for e in events]
        values_of = [e.values for e in events]
        get = self._features
        rows = list(map(get, values_of)) if get else [(v.f_0,) for v in values_of]
        # (with missing="ffill" a feature not sent is None: numpy makes it NaN)
        values = np.asarray(rows, dtype=np.float64).reshape(n, self._n_features)
        raw_ts = [e.ts for e in events]
        if str not in set(map(type, raw_ts)):  # all epoch-ms ints: one conversion
            try:
                ts = np.asarray(raw_ts, dtype=np.int64)
                ts[(ts < 0) | (ts >= MAX_TS)] = -1
            except OverflowError:  # beyond int64: absurd, refused below
                ts = np.fromiter((_parse_or_neg(t) for t in raw_ts), np.int64, n)
        else:  # a string is ISO 8601, always (never digits read as epoch ms)
            ts = np.fromiter((_parse_or_neg(t) for t in raw_ts), np.int64, n)
        ok = np.ones(n, bool)

        def refuse(mask: np.ndarray, reason: str, detail: Any) -> None:
            for j in np.flatnonzero(mask & ok):
                bad.append(BadEvent(idx[j], reason, detail(j) if callable(detail) else detail))
            ok[mask] = False

        if n:
            lengths = np.fromiter(map(len, keys), np.int64, n)
            refuse(lengths == 0, "bad_key", "key is empty")
            if lengths.max() * 4 > cfg.max_key_bytes:  # utf-8 needs at most 4 bytes a character
                blen = np.fromiter((len(k.encode()) for k in keys), np.int64, n)
                refuse(
                    blen > cfg.max_key_bytes,
                    "oversized_key",
                    f"key longer than {cfg.max_key_bytes} bytes",
                )
            if cfg.check_message_key:
                given = [batch.keys[i] for i in idx]
                glen = np.fromiter((-1 if g is None else len(g) for g in given), np.int64, n)
                refuse(
                    glen > cfg.max_key_bytes,
                    "oversized_key",
                    f"the Kafka message key is longer than {cfg.max_key_bytes} bytes",
                )
                refuse(
                    glen < 0,
                    "null_key",
                    "the Kafka message key is null: key each event by its entity key, so that "
                    "one key's events stay in one partition, in order",
                )
                # (a trailing None keeps numpy from building a 2-D array of bytes)
                g = np.asarray([*given, None], dtype=object)[:-1]
                ours = np.asarray([*map(str.encode, keys), None], dtype=object)[:-1]
                refuse(
                    np.asarray(g != ours),
                    "key_mismatch",
                    "the Kafka message key differs from the event's key",
                )
        refuse(ts < 0, "bad_timestamp", lambda j: _ts_problem(raw_ts[j]))
        if cfg.max_future_ms >= 0:
            refuse(
                ts > now + cfg.max_future_ms,
                "future_timestamp",
                f"ts more than {cfg.max_future_ms} ms ahead",
            )
        # finite as float32, the type the model and the state hold (1e39 is finite in float64)
        outside = np.abs(values) > F32_MAX
        missing = np.isnan(values)  # only with missing="ffill" (a JSON number is never NaN)
        refuse(
            np.asarray(outside.any(axis=1)),
            "non_finite_value",
            lambda j: (
                "a feature is outside the float32 range (±3.4e38): "
                + ", ".join(f for f, o in zip(cfg.features, outside[j], strict=True) if o)
            ),
        )
        extra = None
        if self.extra_names:
            get_x = self._extra
            x_rows = list(map(get_x, values_of)) if get_x else [(v.x_0,) for v in values_of]
            extra = np.asarray(x_rows, dtype=np.float64).reshape(n, len(self.extra_names))
            refuse(
                np.asarray((np.abs(extra) > F32_MAX).any(axis=1)),
                "non_finite_value",
                "an actual (a target sent in values) is outside the float32 range (±3.4e38)",
            )
        keep = np.flatnonzero(ok)
        bad.sort(key=lambda b: b.index)
        return DecodedBatch(
            index=np.asarray(idx, dtype=np.int64)[keep],
            keys=[keys[j] for j in keep] if len(keep) < n else keys,
            ts=ts[keep],
            values=values[keep].astype(np.float32),
            bad=bad,
            extra=None if extra is None else extra[keep].astype(np.float32),
            missing=missing[keep] if cfg.missing == "ffill" and missing.any() else None,
        )


def _concat(parts: list[tuple[int, DecodedBatch]], n_features: int, n_extra: int) -> DecodedBatch:
    """One-message batches (``(position in the tick, decoded)``) joined back into one."""
    keep = [(i, d) for i, d in parts if len(d.index)]
    n = len(keep)
    missing = [
        d.missing if d.missing is not None else np.zeros((1, n_features), bool) for _, d in keep
    ]
    return DecodedBatch(
        index=np.asarray([i for i, _ in keep], np.int64),
        keys=[d.keys[0] for _, d in keep],
        ts=np.asarray([d.ts[0] for _, d in keep], np.int64),
        values=np.concatenate([d.values for _, d in keep]).reshape(n, n_features)
        if n
        else np.zeros((0, n_features), np.float32),
        bad=[replace(b, index=i) for i, d in parts for b in d.bad],
        extra=None
        if not n_extra
        else (
            np.concatenate([d.extra for _, d in keep if d.extra is not None]).reshape(n, n_extra)
            if n
            else np.zeros((0, n_extra), np.float32)
        ),
        missing=np.concatenate(missing) if any(d.missing is not None for _, d in keep) else None,
    )


def _ts_problem(ts: int | str) -> str:
    if isinstance(ts, str) and ts.strip().lstrip("-").isdigit():
        return (
            f"cannot parse ts {ts!r}: a string ts must be ISO 8601; send epoch milliseconds as "
            "a JSON number"
        )
    return f"cannot parse ts {ts!r}"


def _parse_or_neg(ts: int | str) -> int:
    t = parse_ts(ts)
    return -1 if t is None else t


def _classify(i: int, v: bytes, e: Exception) -> BadEvent:
    """Why a message did not decode (only runs for bad messages)."""
    try:
        v.decode("utf-8")
    except UnicodeDecodeError as ue:
        return BadEvent(i, "not_utf8", str(ue))
    msg = str(e)
    if isinstance(e, RecursionError):
        return BadEvent(i, "too_deep", f"JSON nested too deeply to decode ({msg})")
    if not isinstance(e, msgspec.DecodeError | msgspec.ValidationError | UnicodeDecodeError):
        return BadEvent(i, "undecodable", f"{type(e).__name__}: {msg}")
    if isinstance(e, msgspec.ValidationError):
        if "missing required field" in msg:
            return BadEvent(i, "missing_feature" if "`$.values`" in msg else "missing_field", msg)
        if "unknown field" in msg:
            return BadEvent(i, "unknown_feature", msg)
        if "got `null`" in msg and "`$.values." in msg:  # null: a feature not sent
            return BadEvent(i, "missing_feature", msg)
        if "out of range" in msg:
            return BadEvent(i, "non_finite_value", msg)
        return BadEvent(i, "wrong_type", msg)
    if _NON_FINITE.search(v):
        return BadEvent(i, "non_finite_value", "NaN or Infinity is not valid JSON")
    return BadEvent(i, "not_json", msg)


def parse_ts(ts: int | str) -> int | None:
    """Epoch ms from an int (ms) or an ISO 8601 string (naive = UTC); None if unusable."""
    if isinstance(ts, int):
        return ts if 0 <= ts < MAX_TS else None
    try:
        d = datetime.fromisoformat(ts)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp() * 1000)


# -- output ---------------------------------------------------------------------------------------
class ForecastOut(msgspec.Struct, omit_defaults=True):
    """One forecast message (the output topic's value); keyed by the entity key."""

    key: str
    ts: int  # the event's time, epoch ms
    model: str  # model version
    interval: str  # e.g. "1h"
    interval_ms: int
    forecast: dict[str, list[float]]  # target → H values (the median when there are quantiles)
    partition: int
    offset: int
    quantiles: dict[str, dict[str, list[float]]] | None = None  # target → "0.1" → H values


_ENCODER = msgspec.json.Encoder()


def encode_forecast(f: ForecastOut) -> bytes:
    return _ENCODER.encode(f)


def decode_forecast(b: bytes) -> ForecastOut:
    return msgspec.json.decode(b, type=ForecastOut)


def encode_event(key: str, ts: int | str, values: dict[str, Any]) -> bytes:
    """An input event as the worker expects it (used by replay and tests)."""
    return _ENCODER.encode({"key": key, "ts": ts, "values": values})


def json_strings(items: Sequence[str]) -> list[bytes]:
    """Each string as a JSON string, from one encoder call: inside an encoded string every ``"``
    is escaped, so ``","`` only ever separates two elements."""
    if not items:
        return []
    parts = _ENCODER.encode(list(items))[2:-2].split(b'","')
    if len(parts) != len(items):
        raise ValueError("unexpected separator in encoded strings")
    return [b'"' + p + b'"' for p in parts]


def split_rows(encoded: bytes, n: int) -> list[bytes]:
    """``[[1,2],[3,4]]`` → ``[b"1,2", b"3,4"]``: one msgspec call encodes every row of a tick."""
    if n == 0:
        return []
    parts = encoded[2:-2].split(b"],[")
    if len(parts) != n:
        raise ValueError("unexpected nesting in encoded rows")
    return parts


class ForecastEncoder:
    """Forecast messages for a whole tick. The numbers of every event are encoded by one
    ``msgspec`` call per column (each target, each quantile, the keys, the times, …) and split;
    each message is then one ``bytes.join`` of its pieces. The result decodes as
    :class:`ForecastOut`."""

    def __init__(
        self,
        version: str,
        interval: str,
        interval_ms: int,
        targets: list[str],
        quantiles: list[float],
    ) -> None:
        head = _ENCODER.encode({"model": version, "interval": interval, "interval_ms": interval_ms})
        self._mid = b"," + head[1:-1] + b',"forecast":{'
        self._targets = [_ENCODER.encode(t) + b":" for t in targets]
        self._qnames = [_ENCODER.encode(repr(q)) + b":" for q in quantiles]

    @staticmethod
    def _rows(values: np.ndarray) -> list[bytes]:
        """``[n, H]`` float32 → one ``[v1,…,vH]`` per row, each number in its shortest float32
        form (orjson formats a whole numpy array in C: 5x faster than lists of floats)."""
        arr = np.ascontiguousarray(values, dtype=np.float32)
        raw = orjson.dumps(arr, option=orjson.OPT_SERIALIZE_NUMPY)
        return [b"[" + r + b"]" for r in split_rows(raw, arr.shape[0])]

    def _object(self, names: list[bytes], columns: list[list[bytes]]) -> list[bytes]:
        """Per row: ``"name1":col1,"name2":col2``."""
        if len(names) == 1:
            return [names[0] + c for c in columns[0]]
        return [
            b",".join(nm + c for nm, c in zip(names, row, strict=True))
            for row in zip(*columns, strict=True)
        ]

    def encode(
        self,
        keys: Sequence[str],
        ts: Sequence[int],
        point: np.ndarray,
        quant: np.ndarray | None,
        parts: Sequence[int],
        offs: Sequence[int],
    ) -> list[bytes]:
        """point ``[n, n_t, H]``; quant ``[n, n_t, n_q, H]`` or None."""
        n = len(keys)
        if n == 0:
            return []
        targets = range(point.shape[1])
        forecast = self._object(self._targets, [self._rows(point[:, t]) for t in targets])
        cols: list[Any] = [
            repeat(b'{"key":'), json_strings(keys), repeat(b',"ts":'), json_ints(ts),
            repeat(self._mid), forecast, repeat(b'},"partition":'), json_ints(parts),
            repeat(b',"offset":'), json_ints(offs),
        ]  # fmt: skip
        if quant is not None:
            per_target = [
                [
                    b"{" + o + b"}"
                    for o in self._object(
                        self._qnames, [self._rows(quant[:, t, q]) for q in range(quant.shape[2])]
                    )
                ]
                for t in targets
            ]
            cols += [
                repeat(b',"quantiles":{'),
                self._object(self._targets, per_target),
                repeat(b"}"),
            ]
        cols.append(repeat(b"}"))
        join = b"".join
        return [join(pieces) for pieces in zip(*cols)]  # noqa: B905 (repeat() columns are endless)


def json_ints(items: Sequence[int]) -> list[bytes]:
    """Each int as JSON, from one encoder call."""
    return _ENCODER.encode(list(items))[1:-1].split(b",") if len(items) else []
