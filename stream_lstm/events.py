"""Input events and output forecasts: decoding, validation, encoding.

Input event (JSON, Kafka message key = entity key)::

    {"key": "sensor-7", "ts": "2024-01-01T00:00:00Z" | 1704067200000,
     "values": {"feature": 1.0, ...}}

``ts`` is ISO 8601 (naive means UTC) or epoch milliseconds. ``values`` must hold every feature
of the model; it may also hold target columns (actuals). A bad event is not an exception: it
becomes a :class:`BadEvent` with a reason, and goes to the dead-letter topic with its original
bytes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

# Dead-letter reasons (the `reason` header and the metric label). Late and duplicate events are
# found by the engine, which knows each key's last applied time.
REASONS = (
    "tombstone",
    "empty",
    "oversized_message",
    "not_utf8",
    "not_json",
    "wrong_type",
    "missing_field",
    "bad_key",
    "oversized_key",
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


class EventIn(msgspec.Struct):
    key: str
    ts: int | str
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class InMessage:
    """A consumed message, independent of the Kafka client that delivered it."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # the message's own timestamp (CreateTime or LogAppendTime)


@dataclass(frozen=True, slots=True)
class BadEvent:
    index: int  # position in the consumed batch
    reason: str
    detail: str


@dataclass
class DecodedBatch:
    """Good events as arrays (in batch order) and bad ones as reasons."""

    index: np.ndarray  # [n] position of each good event in the consumed batch
    keys: list[str]
    ts: np.ndarray  # [n] int64 epoch ms
    values: np.ndarray  # [n, F] float32, the model's features in order
    bad: list[BadEvent] = field(default_factory=list)


@dataclass(frozen=True)
class DecoderConfig:
    features: tuple[str, ...]
    allowed_extra: tuple[str, ...] = ()  # e.g. target columns sent as actuals
    allow_unknown: bool = False
    max_message_bytes: int = 64 * 1024
    max_key_bytes: int = 256
    max_future_ms: int = 86_400_000  # a timestamp further ahead of the wall clock is refused
    check_message_key: bool = True  # the Kafka key must equal the payload's key


class Decoder:
    """Turns a batch of messages into a :class:`DecodedBatch` without raising."""

    def __init__(self, cfg: DecoderConfig) -> None:
        self.cfg = cfg
        self._dec = msgspec.json.Decoder(EventIn)
        self._features = list(cfg.features)
        self._known = set(cfg.features) | set(cfg.allowed_extra)

    def decode_batch(self, msgs: Sequence[InMessage], now_ms: int | None = None) -> DecodedBatch:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        horizon = now + self.cfg.max_future_ms if self.cfg.max_future_ms >= 0 else None
        idx: list[int] = []
        keys: list[str] = []
        ts: list[int] = []
        rows: list[list[float]] = []
        bad: list[BadEvent] = []
        feats = self._features
        for i, m in enumerate(msgs):
            ok = self._decode_one(m, horizon)
            if isinstance(ok, BadEvent):
                bad.append(BadEvent(i, ok.reason, ok.detail))
                continue
            ev, t = ok
            idx.append(i)
            keys.append(ev.key)
            ts.append(t)
            rows.append([ev.values[f] for f in feats])
        n = len(idx)
        return DecodedBatch(
            index=np.asarray(idx, dtype=np.int64),
            keys=keys,
            ts=np.asarray(ts, dtype=np.int64),
            values=np.asarray(rows, dtype=np.float32).reshape(n, len(feats)),
            bad=bad,
        )

    def _decode_one(self, m: InMessage, horizon: int | None) -> tuple[EventIn, int] | BadEvent:
        v = m.value
        cfg = self.cfg
        if v is None:
            return BadEvent(-1, "tombstone", "message has no value (a tombstone)")
        if not v:
            return BadEvent(-1, "empty", "message value is empty")
        if len(v) > cfg.max_message_bytes:
            return BadEvent(-1, "oversized_message", f"{len(v)} bytes > {cfg.max_message_bytes}")
        try:
            ev = self._dec.decode(v)
        except (UnicodeDecodeError, msgspec.ValidationError, msgspec.DecodeError) as e:
            return _classify(v, e)
        key = ev.key
        if not key:
            return BadEvent(-1, "bad_key", "key is empty")
        if len(key.encode()) > cfg.max_key_bytes:
            return BadEvent(-1, "oversized_key", f"key longer than {cfg.max_key_bytes} bytes")
        if cfg.check_message_key and m.key is not None and m.key != key.encode():
            return BadEvent(
                -1, "key_mismatch", "the Kafka message key differs from the event's key"
            )
        t = parse_ts(ev.ts)
        if t is None:
            return BadEvent(-1, "bad_timestamp", f"cannot parse ts {ev.ts!r}")
        if horizon is not None and t > horizon:
            return BadEvent(
                -1, "future_timestamp", f"ts {t} is more than {cfg.max_future_ms} ms ahead"
            )
        vals = ev.values
        for f in self._features:
            x = vals.get(f)
            if x is None:
                return BadEvent(-1, "missing_feature", f"missing feature {f!r}")
            if not np.isfinite(x):
                return BadEvent(-1, "non_finite_value", f"feature {f!r} is {x}")
        if not cfg.allow_unknown and len(vals) > len(self._features):
            unknown = sorted(set(vals) - self._known)
            if unknown:
                return BadEvent(-1, "unknown_feature", f"unknown value names {unknown[:5]}")
        return ev, t


def _classify(v: bytes, e: Exception) -> BadEvent:
    """Why a message did not decode (only runs for bad messages)."""
    try:
        v.decode("utf-8")
    except UnicodeDecodeError as ue:
        return BadEvent(-1, "not_utf8", str(ue))
    msg = str(e)
    if isinstance(e, msgspec.ValidationError):
        if "missing required field" in msg:
            return BadEvent(-1, "missing_field", msg)
        if "out of range" in msg:
            return BadEvent(-1, "non_finite_value", msg)
        return BadEvent(-1, "wrong_type", msg)
    if _NON_FINITE.search(v):
        return BadEvent(-1, "non_finite_value", "NaN or Infinity is not valid JSON")
    return BadEvent(-1, "not_json", msg)


def parse_ts(ts: int | str) -> int | None:
    """Epoch ms from an int (ms) or an ISO 8601 string (naive = UTC); None if unusable."""
    if isinstance(ts, int):
        return ts if 0 <= ts < 2**53 else None
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
