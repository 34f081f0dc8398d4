"""The bad-input catalogue (each case: dead-lettered with its reason, counted, good events
before and after it forecast normally) and a property-based fuzz test of the decoder."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.runtime.engine import Engine, EngineConfig, layout_for
from stream_lstm.runtime.events import (
    REASONS,
    Decoder,
    DecoderConfig,
    InMessage,
    MessageBatch,
    decode_forecast,
    encode_event,
    parse_ts,
)
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.testing import MemorySink

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
H = 3_600_000
OK = {"f0": 1.0, "f1": 2.0}

# 1,000 levels of nesting in an unknown field (2 KB): a RecursionError once crash-looped the worker
DEEP = (
    b'{"key": "a", "ts": 1, "values": {"f0": 1, "f1": 2}, "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
)
# (reason, Kafka key, value) — one bad message per row of the catalogue
CATALOGUE: list[tuple[str, bytes | None, bytes | None]] = [
    ("not_json", b"a", b"{not json"),
    ("not_json", b"a", b"\r\n"),  # whitespace only (found by the fuzz test)
    (
        "not_json",
        b"a",
        encode_event("a", T0 + 10 * H, OK) + b"," + encode_event("a", T0 + 11 * H, OK),
    ),
    ("too_deep", b"a", DEEP),
    ("not_utf8", b"a", b'{"key": "a", "ts": 1, "values": {"f0": "\xff\xfe"}}'),
    ("not_utf8", b"a", b"\xff\xfe\xfd"),
    ("wrong_type", b"a", b'{"key": "a", "ts": 1704067200000, "values": {"f0": "x", "f1": 2}}'),
    ("wrong_type", b"a", b'{"key": ["a"], "ts": 1704067200000, "values": {"f0": 1, "f1": 2}}'),
    ("wrong_type", b"a", b'{"key": "a", "ts": 1.5, "values": {"f0": 1, "f1": 2}}'),
    (
        "missing_feature",
        b"a",
        b'{"key": "a", "ts": 1704067200000, "values": {"f0": null, "f1": 2}}',
    ),
    ("wrong_type", b"a", b"[1, 2, 3]"),
    ("missing_field", b"a", b'{"ts": 1704067200000, "values": {"f0": 1, "f1": 2}}'),
    ("missing_field", b"a", b'{"key": "a", "values": {"f0": 1, "f1": 2}}'),
    ("missing_field", b"a", b'{"key": "a", "ts": 1704067200000}'),
    ("missing_feature", b"a", encode_event("a", T0, {"f0": 1.0})),
    ("unknown_feature", b"a", encode_event("a", T0, {**OK, "zzz": 3.0})),
    (
        "non_finite_value",
        b"a",
        b'{"key": "a", "ts": 1704067200000, "values": {"f0": NaN, "f1": 1}}',
    ),
    (
        "non_finite_value",
        b"a",
        b'{"key": "a", "ts": 1704067200000, "values": {"f0": Infinity, "f1": 1}}',
    ),
    (
        "non_finite_value",
        b"a",
        b'{"key": "a", "ts": 1704067200000, "values": {"f0": -1e999, "f1": 1}}',
    ),
    ("non_finite_value", b"a", encode_event("a", T0, {"f0": 1e39, "f1": 1.0})),  # inf in float32
    ("non_finite_value", b"a", encode_event("a", T0, {"f0": 1.0, "f1": -1e308})),
    ("bad_timestamp", b"a", encode_event("a", "last tuesday", OK)),
    ("bad_timestamp", b"a", encode_event("a", "1704067200000", OK)),  # epoch ms as a string
    ("bad_timestamp", b"a", encode_event("a", -5, OK)),
    ("future_timestamp", b"a", encode_event("a", 4_102_444_800_000, OK)),  # 2100
    ("oversized_message", b"a", encode_event("a", T0, {**OK, "pad": "x" * 70_000})),  # type: ignore[dict-item]
    ("oversized_key", b"k" * 300, encode_event("k" * 300, T0, OK)),
    ("bad_key", b"", encode_event("", T0, OK)),
    ("key_mismatch", b"b", encode_event("a", T0, OK)),
    ("null_key", None, encode_event("a", T0, OK)),  # would land in any partition
    ("empty", b"a", b""),
    ("tombstone", b"a", None),
]
IDS = [f"{r}-{i}" for i, (r, _, _) in enumerate(CATALOGUE)]
NOW = T0 + 1000 * H


@pytest.fixture(scope="module")
def forecaster(tiny_model: Path) -> Forecaster:
    return Forecaster(load_artifact(tiny_model))


def engine(fc: Forecaster) -> tuple[Engine, MemorySink]:
    sink = MemorySink()
    eng = Engine(fc, MemoryStore(layout_for(fc)), sink, WorkerMetrics(), EngineConfig("out", "dlq"))
    eng.decoder = Decoder(
        DecoderConfig(features=("f0", "f1"), allowed_extra=("f0",), max_future_ms=86_400_000)
    )
    return eng, sink


def good(i: int) -> tuple[bytes, bytes]:
    return b"a", encode_event("a", T0 + i * H, {"f0": 5.0 + i, "f1": 1.0})


def msgs(pairs: list[tuple[bytes | None, bytes | None]]) -> list[InMessage]:
    return [InMessage(k, v, "in", 0, i, NOW) for i, (k, v) in enumerate(pairs)]


@pytest.mark.parametrize(("reason", "key", "value"), CATALOGUE, ids=IDS)
def test_bad_event_is_dead_lettered_and_good_ones_flow(
    reason: str,
    key: bytes | None,
    value: bytes | None,
    forecaster: Forecaster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("stream_lstm.runtime.events.time.time", lambda: NOW / 1000)
    eng, sink = engine(forecaster)
    eng.process(msgs([good(0), good(1), (key, value), good(2), good(3)]))
    dlq = sink.on("dlq")
    assert len(dlq) == 1
    headers = dict(dlq[0].headers or [])
    assert headers["reason"].decode() == reason
    assert headers["source"] == b"in/0/2"
    assert dlq[0].value == (value or b""), "the original bytes are kept"
    assert (
        eng.metrics.registry.get_sample_value("stream_lstm_dead_letters_total", {"reason": reason})
        == 1
    )
    out = [decode_forecast(p.value or b"") for p in sink.on("out")]
    assert [f.ts for f in out] == [T0, T0 + H, T0 + 2 * H, T0 + 3 * H]

    # the same stream without the bad event gives the same forecasts
    clean, clean_sink = engine(forecaster)
    clean.process(msgs([good(0), good(1), good(2), good(3)]))
    assert [decode_forecast(p.value or b"").forecast for p in clean_sink.on("out")] == [
        f.forecast for f in out
    ]


@pytest.mark.parametrize("kind", ["late", "duplicate"])
def test_out_of_order_and_duplicate_events(kind: str, forecaster: Forecaster) -> None:
    eng, sink = engine(forecaster)
    ts = T0 + H + (-1 if kind == "late" else 0)
    eng.process(msgs([good(0), good(1), (b"a", encode_event("a", ts, OK)), good(2)]))
    assert [dict(p.headers or [])["reason"].decode() for p in sink.on("dlq")] == [kind]
    assert len(sink.on("out")) == 3


def test_late_policy_drop_counts_without_dead_letter(forecaster: Forecaster) -> None:
    eng, sink = engine(forecaster)
    eng.cfg = EngineConfig("out", "dlq", late_policy="drop")
    eng.process(msgs([good(0), good(1), (b"a", encode_event("a", T0, OK))]))
    assert not sink.on("dlq")
    assert eng.metrics.registry.get_sample_value("stream_lstm_late_events_total") == 1


def test_every_reason_in_the_catalogue_is_documented() -> None:
    # (undecodable: an unforeseen error, forced in tests/unit/test_reliability.py)
    assert {r for r, _, _ in CATALOGUE} | {"late", "duplicate", "undecodable"} == set(REASONS)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for r in REASONS:
        assert f"`{r}`" in readme, f"reason {r} is not documented in the README"


def test_parse_ts() -> None:
    assert parse_ts(T0) == T0
    assert parse_ts("2024-01-01T00:00:00Z") == T0
    assert parse_ts("2024-01-01T11:00:00+11:00") == T0
    assert parse_ts("2024-01-01 00:00:00") == T0  # naive = UTC
    assert parse_ts("soon") is None
    assert parse_ts(-1) is None


# -- property-based fuzzing of the decoder --------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "key": st.text(max_size=30) | st.integers() | st.none(),
        "ts": st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | st.text(max_size=30)
        | st.floats(),
        "values": st.dictionaries(
            st.sampled_from(["f0", "f1", "f2", "x"]) | st.text(max_size=5), json_values, max_size=5
        ),
        "extra": json_values,
    },
)


def _bytes_of(doc: object) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            event_like.map(_bytes_of),
            st.builds(lambda d, cut: _bytes_of(d)[:cut], event_like, st.integers(0, 80)),
            st.none(),
        ),
        min_size=1,
        max_size=8,
    ),
    st.one_of(st.none(), st.binary(max_size=40)),
)
def test_decoder_never_raises(values: list[bytes | None], key: bytes | None) -> None:
    dec = Decoder(DecoderConfig(features=("f0", "f1"), allowed_extra=("f2",)))
    batch = dec.decode_batch(
        MessageBatch.of([InMessage(key, v, "t", 0, i, 0) for i, v in enumerate(values)])
    )
    assert len(batch.index) + len(batch.bad) == len(values)
    assert all(b.reason in REASONS for b in batch.bad)
    assert batch.values.shape == (len(batch.index), 2)
    for i, k in zip(batch.index, batch.keys, strict=True):
        doc = msgspec.json.decode(values[i] or b"")
        assert doc["key"] == k and set(doc["values"]) >= {"f0", "f1"}
