"""The engine's answers to what an outside trial broke (issue 13), in process: outputs that are
not acknowledged, keys that move partition, a re-created input topic, a wiped store, missing
feature values, oversized dead letters. The same on the real stack: tests/integration/
test_reliability.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_lstm.errors import PublishError
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.runtime.cache import StateCache
from stream_lstm.runtime.engine import Engine, EngineConfig, layout_for
from stream_lstm.runtime.events import (
    Decoder,
    DecoderConfig,
    InMessage,
    MessageBatch,
    decode_forecast,
    encode_event,
)
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.stores.record import (
    HEADER,
    HEADER_V3,
    MAGIC_V3,
    NO_TOPIC,
    Layout,
    apply_delta,
    decode_any,
    upgrade,
    write_refused,
)
from stream_lstm.testing import MemorySink, frame_events, ticks, to_messages
from stream_lstm.training.evaluate import stream_rows
from stream_lstm.training.predict import predict_frame
from tests.unit.test_engine import (
    CFG,
    assert_parity,
    forecasts,
    frame,
    make_engine,
    reference,
)

TOPIC_A, TOPIC_B = b"A" * 16, b"B" * 16


def state_of(store: MemoryStore, key: str) -> tuple[int, np.ndarray, np.ndarray]:
    d = decode_any(store.record(key) or b"")
    assert d is not None
    return d.count, d.h, d.win


def uninterrupted(model: Path, msgs: list[InMessage]) -> MemoryStore:
    ref, store, _ = make_engine(model)
    for tick in ticks(msgs, [64]):
        ref.process(tick)
    ref.commit_cycle(lambda o: None)
    return store


# -- outputs not acknowledged ---------------------------------------------------------------------
class FailingSink(MemorySink):
    """A sink whose next flush fails (as librdkafka reports undelivered messages)."""

    fail_next: bool = False

    def flush(self) -> None:
        if self.fail_next:
            self.fail_next = False
            self.pending = []  # never delivered
            raise PublishError("1 message(s) were not delivered, e.g. out[0]: Broker: timeout")
        super().flush()


def test_undelivered_outputs_commit_nothing_and_a_rewind_redoes_them(
    tiny_model: Path, synth_csv: Path
) -> None:
    msgs = to_messages(frame_events(frame(synth_csv), ["f0", "f1"]), partitions=2)
    sink = FailingSink()
    eng, store, _ = make_engine(tiny_model, sink=sink)
    committed: dict[tuple[str, int], int] = {}
    for tick in ticks(msgs[:300], [50]):
        eng.process(tick)
    eng.commit_cycle(committed.update)
    at_first_commit = dict(committed)
    for tick in ticks(msgs[300:500], [50]):
        eng.process(tick)
    sink.fail_next = True
    with pytest.raises(PublishError):
        eng.commit_cycle(committed.update)
    assert committed == at_first_commit, "no offset moved past undelivered outputs"
    for tick in ticks(msgs[500:520], [50]):
        eng.process(tick)  # the loop may run one more tick before it rewinds
    # what the worker does next: rewind and consume again from where each partition resumes
    eng.rewind()
    assert len(eng.cache) == 0 and not eng.pending
    assert eng.resume_at == at_first_commit
    again = [m for m in msgs if m.offset >= eng.resume_at[(m.topic, m.partition)]]
    for tick in ticks(again, [50]):
        eng.process(tick)
    eng.commit_cycle(committed.update)
    delivered = {
        (f.partition, f.offset) for f in (decode_forecast(p.value or b"") for p in sink.delivered)
    }
    assert delivered == {(m.partition, m.offset) for m in msgs}, "every event has its forecast"
    ref = uninterrupted(tiny_model, msgs)
    for key in ("k0", "k1", "k2"):
        got, want = state_of(store, key), state_of(ref, key)
        assert got[0] == want[0]
        np.testing.assert_allclose(got[1], want[1], atol=1e-6)


def test_a_halted_engine_never_commits(tiny_model: Path, synth_csv: Path) -> None:
    msgs = to_messages(frame_events(frame(synth_csv), ["f0", "f1"]))
    eng, store, _ = make_engine(tiny_model)
    eng.process(msgs[:40])
    eng.halt("RecursionError: a crash")
    committed: list[object] = []
    assert eng.commit_cycle(committed.append) is False
    assert not committed and not store.data, "a crash path writes and commits nothing"


def test_an_oversized_dead_letter_is_truncated_with_its_headers(tiny_model: Path) -> None:
    eng, _, sink = make_engine(tiny_model)
    eng.cfg = EngineConfig("out", "dlq", max_output_bytes=20_000)
    big = encode_event("a", 1000, {"f0": 1.0, "f1": 2.0, "pad": "x" * 70_000})  # type: ignore[dict-item]
    eng.process([InMessage(b"a", big, "in", 0, 0, 0)])
    (dl,) = sink.on("dlq")
    h = dict(dl.headers or [])
    assert h["reason"] == b"oversized_message"
    assert h["truncated"] == str(len(big)).encode()
    assert dl.value == big[: len(dl.value or b"")] and 10_000 < len(dl.value or b"") < 20_000
    assert eng.metrics.dead_letters_truncated._value.get() == 1


def test_the_largest_forecast_is_measured(tiny_model: Path) -> None:
    eng, _, _ = make_engine(tiny_model)
    n = eng.largest_forecast_bytes(256)
    H = eng.mcfg.horizon
    assert 256 * 7 + H * 14 < n < 256 * 7 + H * 16 + 512


# -- decoding is a function of the message alone -----------------------------------------------
def decode(pairs: list[tuple[bytes | None, bytes]], **cfg: object) -> list[tuple[int, str]]:
    dec = Decoder(DecoderConfig(features=("f0",), allowed_extra=("y",), **cfg))  # type: ignore[arg-type]
    batch = MessageBatch.of([InMessage(k, v, "t", 0, i, 0) for i, (k, v) in enumerate(pairs)])
    out = dec.decode_batch(batch, now_ms=2 * 10**12)
    good = [(int(i), str(t)) for i, t in zip(out.index, out.ts, strict=True)]
    return sorted(good + [(b.index, b.reason) for b in out.bad])


TS_CASES = ["1704412800000", "20240105", "2024-01-05T01:00:00Z", 1704412800000, "2024"]


@pytest.mark.parametrize("ts", TS_CASES)
def test_a_timestamp_decodes_the_same_whatever_its_neighbours(ts: int | str) -> None:
    me = (b"a", encode_event("a", ts, {"f0": 1.0}))
    alone = decode([me])[0][1]
    for neighbour in TS_CASES:
        other = (b"a", encode_event("a", neighbour, {"f0": 2.0}))
        assert decode([other, me])[1][1] == alone
        assert decode([me, other])[0][1] == alone
    if ts == "20240105":
        assert alone == "1704412800000"  # ISO 8601 basic format: 2024-01-05, never epoch ms
    if ts == "1704412800000":
        assert alone == "bad_timestamp"  # epoch ms travel as JSON numbers


def test_an_unforeseen_decoding_error_dead_letters_that_message_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dec = Decoder(DecoderConfig(features=("f0",)))
    real = dec._decode

    def fragile(batch: MessageBatch, now: int) -> object:
        if any(v and b"boom" in v for v in batch.values):
            raise MemoryError("boom")
        return real(batch, now)

    monkeypatch.setattr(dec, "_decode", fragile)
    vals = [encode_event("a", 1000 + i, {"f0": float(i)}) for i in range(4)]
    vals[2] = b'{"key": "a", "ts": 5, "values": {"f0": 1}, "x": "boom"}'
    batch = MessageBatch.of([InMessage(b"a", v, "t", 0, i, 0) for i, v in enumerate(vals)])
    out = dec.decode_batch(batch, now_ms=10**12)
    assert [(b.index, b.reason) for b in out.bad] == [(2, "undecodable")]
    assert "MemoryError: boom" in out.bad[0].detail
    assert out.index.tolist() == [0, 1, 3]
    assert out.values[:, 0].tolist() == [0.0, 1.0, 3.0]


# -- keys that move: partitions added, a re-created topic ----------------------------------------
def test_a_key_that_moves_partition_is_not_skipped(tiny_model: Path, synth_csv: Path) -> None:
    """Partitions added: a key's events come from a new partition with smaller offsets. Its
    state carries on; nothing is skipped as 'already applied'; time orders its events."""
    events = frame_events(frame(synth_csv), ["f0", "f1"])
    before = to_messages(events[:600], partitions=1)  # all keys in partition 0
    after = [
        InMessage(m.key, m.value, m.topic, 1 + m.partition, m.offset, m.timestamp_ms)
        for m in to_messages(events[600:], partitions=2)  # now in partitions 1 and 2
    ]
    for restart in (False, True):
        eng, store, sink = make_engine(tiny_model)
        for tick in ticks(before, [64]):
            eng.process(tick)
        eng.commit_cycle(lambda o: None)
        if restart:  # the new partitions' owner loads the states from the store
            eng, _, sink = make_engine(tiny_model, store=store, sink=sink)
        for tick in ticks(after, [64]):
            eng.process(tick)
        assert eng.metrics.replayed._value.get() == 0
        assert eng.metrics.keys_moved._value.get() == 3
        assert_parity(forecasts(sink), reference(tiny_model, frame(synth_csv)))
        eng.commit_cycle(lambda o: None)
        rec = decode_any(store.record("k0") or b"")
        assert rec is not None and rec.partition in (1, 2)


def test_a_recreated_input_topic_is_not_skipped(tiny_model: Path, synth_csv: Path) -> None:
    """The input topic is deleted and re-created: offsets start at 0 again. Found when the
    consumer's offsets go back (the driver reads the new topic id), after a restart from the
    topic id in each record, or — a worker restarted before the re-creation, that read nothing
    of the old topic — from the topic id read again before a partition's first read."""
    events = frame_events(frame(synth_csv), ["f0", "f1"])
    old, new = to_messages(events[:1000], partitions=1), to_messages(events[1000:], partitions=1)
    for restart in ("none", "after the re-creation", "before the re-creation"):
        eng, store, sink = make_engine(tiny_model)
        eng.set_topic_id(TOPIC_A)
        for tick in ticks(old, [64]):
            eng.process(tick)
        committed: dict[tuple[str, int], int] = {}
        eng.commit_cycle(committed.update)
        if restart != "none":
            eng, _, sink = make_engine(tiny_model, store=store, sink=sink)
            eng.set_topic_id(TOPIC_B if restart == "after the re-creation" else TOPIC_A)
        eng.topic_id_now = lambda topic: TOPIC_B
        for tick in ticks(new, [64]):
            eng.process(tick)
        assert eng.metrics.replayed._value.get() == 0, restart
        assert len(forecasts(sink)) == len(reference(tiny_model, frame(synth_csv)))
        assert_parity(forecasts(sink), reference(tiny_model, frame(synth_csv)))
        resets = eng.metrics.input_resets.labels("recreated")._value.get()
        assert resets == (0 if restart == "after the re-creation" else 1), restart
        if restart != "none":
            assert eng.metrics.keys_moved._value.get() == 3, restart
        eng.commit_cycle(committed.update)
        assert committed[("in", 0)] == len(new), "offsets of the new topic, not the old one"
        rec = decode_any(store.record("k0") or b"")
        assert rec is not None and rec.topic_id == TOPIC_B


def test_offsets_that_go_back_in_the_same_topic_are_skipped_and_counted(
    tiny_model: Path, synth_csv: Path
) -> None:
    msgs = to_messages(frame_events(frame(synth_csv), ["f0", "f1"]), partitions=1)
    eng, _, sink = make_engine(tiny_model)
    eng.set_topic_id(TOPIC_A)
    eng.topic_id_now = lambda topic: TOPIC_A
    eng.process(msgs[:100])
    eng.process(msgs[50:60])  # the same events again, no seek: e.g. a truncated log re-read
    assert eng.metrics.input_resets.labels("same_topic")._value.get() == 1
    assert eng.metrics.replayed._value.get() == 10
    assert len(sink.on("out")) == 100


@pytest.mark.parametrize(
    ("stored", "new", "refused"),
    [
        ((0, TOPIC_A, 10, 5000), (0, TOPIC_A, 9, 9000), True),  # same place: a zombie
        ((0, TOPIC_A, 10, 5000), (0, TOPIC_A, 11, 4000), False),
        ((0, TOPIC_A, 10, 5000), (1, TOPIC_A, 3, 6000), False),  # moved, newer in time
        ((0, TOPIC_A, 10, 5000), (1, TOPIC_A, 30, 4000), True),  # moved, older in time
        ((0, TOPIC_A, 10, 5000), (0, TOPIC_B, 2, 6000), False),  # re-created topic
        ((0, TOPIC_A, 10, 5000), (0, TOPIC_B, 20, 4000), True),
        ((0, NO_TOPIC, 10, 5000), (0, TOPIC_B, 9, 9000), True),  # unknown id: same topic
    ],
)
def test_the_write_rule(
    stored: tuple[int, bytes, int, int], new: tuple[int, bytes, int, int], refused: bool
) -> None:
    def header(p: int, tid: bytes, off: int, ts: int) -> bytes:
        h = np.zeros(1, HEADER)
        h["magic"], h["partition"], h["topic_id"] = b"SLS4", p, tid
        h["last_offset"], h["last_ts"] = off, ts
        return h.tobytes()

    assert write_refused(header(*stored), header(*new)) is refused


def test_an_sls3_record_is_upgraded_losslessly() -> None:
    lay = Layout("v" * 12, 1, 2, 3, 2)
    c = StateCache(lay, np.zeros((1, 2)), np.zeros((1, 2)), keep_windows=True)
    s = c.allocate(["a"], [0])
    c.append(s, np.zeros(1, int), np.ones(1, int), np.asarray([[1.0, 2.0]], np.float32),
             np.asarray([7]))  # fmt: skip
    c.h[s], c.last_offset[s], c.last_ts[s], c.dirty[s] = 0.5, 4, 7, True
    snap = c.snapshot(s)
    (_, fixed, rows) = next(snap.items())
    rec = apply_delta(None, fixed, rows, lay)
    at = HEADER_V3.itemsize
    v3 = MAGIC_V3 + rec[4:at] + rec[at + 16 :]  # as the previous release wrote it
    assert upgrade(v3) == rec[:at] + NO_TOPIC + rec[at + 16 :]
    d = decode_any(v3)
    assert d is not None and d.last_offset == 4 and d.h[0, 0] == 0.5 and d.topic_id == NO_TOPIC
    c2 = StateCache(lay, np.zeros((1, 2)), np.zeros((1, 2)), keep_windows=True)
    assert c2.load(c2.allocate(["a"], [0]), [v3])["restored"] == 1


# -- a wiped store --------------------------------------------------------------------------------
@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_cnn_model"])
def test_a_wiped_store_is_noticed_and_rewritten_by_the_worker_holding_the_keys(
    model_fixture: str, synth_csv: Path, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(model_fixture)
    msgs = to_messages(frame_events(frame(synth_csv), ["f0", "f1"]))
    eng, store, _ = make_engine(model)
    for tick in ticks(msgs[:900], [64]):
        eng.process(tick)
    eng.commit_cycle(lambda o: None)
    store.wipe()  # FLUSHDB under a running worker; its keys are idle
    eng.commit_cycle(lambda o: None)  # nothing dirty: the idle check…
    eng.commits._last_store_check = 0.0
    eng.commit_cycle(lambda o: None)  # …runs every few seconds
    assert eng.metrics.state_wipes._value.get() == 1
    eng.commit_cycle(lambda o: None)  # the rewrite
    assert set(store.data) == {store._k(k) for k in ("k0", "k1", "k2")}
    # a restart (or the next owner) continues from the rewritten states, as if nothing happened
    eng2, _, sink2 = make_engine(model, store=store)
    for tick in ticks(msgs[900:], [64]):
        eng2.process(tick)
    ref, _, ref_sink = make_engine(model)
    for tick in ticks(msgs, [64]):
        ref.process(tick)
    m = forecasts(sink2).merge(forecasts(ref_sink), on=["key", "ts_ms", "h"])
    assert len(m) == len(forecasts(sink2)) > 0
    np.testing.assert_allclose(m["value_x"], m["value_y"], atol=1e-4)
    assert eng2.metrics.state_loaded.labels(outcome="restored")._value.get() == 3


# -- missing feature values -----------------------------------------------------------------------
def test_missing_ffill_equals_predict_on_the_same_holes(tiny_model: Path, synth_csv: Path) -> None:
    df = frame(synth_csv)
    rng = np.random.default_rng(3)
    holes = df.copy()
    holes.loc[rng.random(len(df)) < 0.1, "f0"] = np.nan
    holes.loc[rng.random(len(df)) < 0.1, "f1"] = np.nan
    first = holes.groupby("key").head(1).index
    holes.loc[first, "f1"] = np.nan  # a key's first event: nothing to carry forward
    fc = Forecaster(load_artifact(tiny_model))
    eng = Engine(fc, MemoryStore(layout_for(fc)), MemorySink(), WorkerMetrics(), CFG,
                 DecoderConfig(features=(), missing="ffill"))  # fmt: skip
    events = [
        (k, t, {f: v for f, v in vals.items() if not np.isnan(v)})
        for k, t, vals in frame_events(holes, ["f0", "f1"])
    ]
    for tick in ticks(to_messages(events), [1, 50, 7]):
        eng.process(tick)
    sink = eng.sink
    assert isinstance(sink, MemorySink)
    kept = stream_rows(holes, ["f0", "f1"], missing="ffill")
    dlq = [dict(p.headers or [])["reason"] for p in sink.on("dlq")]
    assert len(kept) < len(holes) - 2 and dlq == [b"missing_feature"] * (len(holes) - len(kept))
    ref = predict_frame(fc, kept)
    ref["ts_ms"] = ref["ts"].astype("datetime64[ms, UTC]").astype("int64")
    assert_parity(forecasts(sink), ref[["key", "ts_ms", "h", "value"]])
    # every hole of an event that was forecast was filled (and counted)
    applied = holes.merge(kept[["key", "ts"]], on=["key", "ts"])
    assert eng.metrics.missing_filled._value.get() == int(applied[["f0", "f1"]].isna().sum().sum())
    # the default policy dead-letters every event with a hole
    assert len(stream_rows(holes, ["f0", "f1"])) == int(
        holes[["f0", "f1"]].notna().all(axis=1).sum()
    )


def test_after_a_wipe_the_stateful_kind_keeps_the_last_row_that_ffill_carries_forward(
    tiny_model: Path, synth_csv: Path
) -> None:
    """Once: after a wipe and a restart, the first event with a hole was dead-lettered (the
    rewritten record had no row left to carry forward from) and streaming left `predict`."""
    msgs = to_messages(frame_events(frame(synth_csv), ["f0", "f1"]))
    fc = Forecaster(load_artifact(tiny_model))
    ffill = DecoderConfig(features=(), missing="ffill")

    def engine(store: MemoryStore) -> Engine:
        return Engine(fc, store, MemorySink(), WorkerMetrics(), CFG, ffill)

    t_next = {k: t for k, t, _ in frame_events(frame(synth_csv), ["f0", "f1"])[:900]}
    for wipe in (False, True):
        store = MemoryStore(layout_for(fc))
        eng = engine(store)
        for tick in ticks(msgs[:900], [64]):
            eng.process(tick)
        eng.commit_cycle(lambda o: None)
        if wipe:
            store.wipe()
            eng.commits._last_store_check = 0.0
            eng.commit_cycle(lambda o: None)  # noticed
            eng.commit_cycle(lambda o: None)  # rewritten
        eng2 = engine(store)  # a restart (another partition: the offsets need not follow)
        holed = [
            InMessage(k.encode(), encode_event(k, t + 3_600_000, {"f1": 1.0}), "in", 9, i, 0)
            for i, (k, t) in enumerate(sorted(t_next.items()))
        ]
        eng2.process(holed)
        sink = eng2.sink
        assert isinstance(sink, MemorySink)
        assert not sink.on("dlq") and len(sink.on("out")) == 3, f"wipe={wipe}"
        got = [decode_forecast(p.value or b"").forecast["f0"] for p in sink.on("out")]
        if not wipe:
            want = got
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_an_actual_near_the_float32_limit_keeps_the_error_sums_finite(tiny_model: Path) -> None:
    """Once: one accepted value of 3.4e38 made the squared-error counter +Inf for good."""
    from stream_lstm.runtime.scoring import ScoringConfig

    fc = Forecaster(load_artifact(tiny_model))
    eng = Engine(fc, MemoryStore(layout_for(fc, ScoringConfig())), MemorySink(), WorkerMetrics(),
                 EngineConfig("out", "dlq", scoring=ScoringConfig()))  # fmt: skip
    ev = [("a", i * 3_600_000, {"f0": 1.0 + i % 3, "f1": 2.0}) for i in range(30)]
    ev.append(("a", 30 * 3_600_000, {"f0": 3.4e38, "f1": 2.0}))
    for tick in ticks(to_messages(ev, partitions=1), [1]):
        eng.process(tick)
    total = eng.metrics.registry.get_sample_value(
        "stream_lstm_forecast_squared_error_total", {"target": "f0", "step": "1"}
    )
    assert total is not None and np.isfinite(total) and total > 1e76
