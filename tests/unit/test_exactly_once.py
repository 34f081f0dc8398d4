"""The exactly-once commit cycle in process: a transactional sink that commits outputs and
offsets together, the store written after the commit and marked, and the catch-up after a crash
between the commit and the store write (docs/architecture.md, Exactly-once)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from stream_lstm.config import WorkerSettings
from stream_lstm.errors import PublishError
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.runtime.engine import Engine, EngineConfig, layout_for
from stream_lstm.runtime.events import InMessage, decode_forecast
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.stores.record import decode_any
from stream_lstm.testing import MemorySink, Produced, frame_events, ticks, to_messages
from tests.unit.test_engine import frame

CFG = EngineConfig(output_topic="out", dlq_topic="dlq")


@dataclass
class TxnSink(MemorySink):
    """A transactional sink in memory: ``commit`` makes the open transaction's messages
    visible together with the offsets; ``reset`` aborts it."""

    transactional = True
    committed_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    fail_next: bool = False

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        if self.fail_next:
            self.fail_next = False
            self.reset()
            raise PublishError("the transaction could not commit and was aborted: test")
        self.log.append("commit")
        self.delivered += self.pending
        self.pending = []
        self.committed_offsets.update(offsets)

    def reset(self) -> None:
        self.pending = []


class LoggedStore(MemoryStore):
    def __init__(self, layout: object, log: list[str]) -> None:
        super().__init__(layout)  # type: ignore[arg-type]
        self.calls = log

    def save(self, snap):  # type: ignore[no-untyped-def]
        self.calls.append("save")
        return super().save(snap)

    def save_marks(self, topic_id: bytes, marks: dict[int, int]) -> None:
        self.calls.append("mark")
        super().save_marks(topic_id, marks)


def engine(model: Path, store: MemoryStore, sink: MemorySink) -> Engine:
    return Engine(Forecaster(load_artifact(model)), store, sink, WorkerMetrics(), CFG)


def messages(synth_csv: Path, bad_every: int = 0) -> list[InMessage]:
    msgs = to_messages(frame_events(frame(synth_csv), ["f0", "f1"]))
    if bad_every:  # some are not JSON: dead letters (offsets stay as Kafka gave them)
        msgs = [
            replace(m, value=b"{not json") if i % bad_every == bad_every // 2 else m
            for i, m in enumerate(msgs)
        ]
    return msgs


def outputs(sink: MemorySink) -> tuple[dict[tuple[int, int], list[float]], list[Produced]]:
    fcs: dict[tuple[int, int], list[float]] = {}
    for p in sink.delivered:
        if p.topic == "out":
            f = decode_forecast(p.value or b"")
            assert (f.partition, f.offset) not in fcs, "a forecast published twice"
            fcs[(f.partition, f.offset)] = f.forecast["f0"]
    return fcs, [p for p in sink.delivered if p.topic == "dlq"]


def test_commit_before_the_state_write_then_the_mark(tiny_model: Path, synth_csv: Path) -> None:
    calls: list[str] = []
    sink = TxnSink(log=calls)
    fc = Forecaster(load_artifact(tiny_model))
    store = LoggedStore(layout_for(fc), calls)
    eng = engine(tiny_model, store, sink)
    msgs = messages(synth_csv)[:500]
    eng.process(msgs)
    assert not sink.delivered, "nothing is visible before the transaction commits"
    eng.commit_cycle(sink.commit)
    assert calls == ["commit", "save", "mark"]
    want = {m.partition: m.offset + 1 for m in msgs}
    assert {p: o for (_, p), o in sink.committed_offsets.items()} == {
        p: max(o for q, o in want.items() if q == p) for p in want
    }
    assert store.load_marks(eng.topic_id, list(want)) == {
        p: o for (_, p), o in sink.committed_offsets.items()
    }


def test_an_aborted_transaction_writes_no_state_and_no_mark(
    tiny_model: Path, synth_csv: Path
) -> None:
    calls: list[str] = []
    sink = TxnSink(log=calls, fail_next=True)
    fc = Forecaster(load_artifact(tiny_model))
    store = LoggedStore(layout_for(fc), calls)
    eng = engine(tiny_model, store, sink)
    eng.process(messages(synth_csv)[:300])
    with pytest.raises(PublishError):
        eng.commit_cycle(sink.commit)
    assert calls == [] and not store.data and not store.marks and not sink.delivered
    assert eng.metrics.transactions.labels(outcome="aborted")._value.get() == 1


@pytest.mark.parametrize("crash_after", ["commit", "save"])
def test_crash_after_the_commit_is_caught_up_without_output(
    crash_after: str, tiny_model: Path, synth_csv: Path
) -> None:
    """Cycle 1 commits and is stored; cycle 2 commits, then the worker dies before its state
    write (or before its mark). A new worker starts from the applied offset, applies the
    committed events to state only, and then goes on: one forecast and one dead letter per
    event over both lives, and the final states equal an uninterrupted run's."""
    msgs = messages(synth_csv, bad_every=97)
    fc = Forecaster(load_artifact(tiny_model))
    store = MemoryStore(layout_for(fc))
    sink = TxnSink()  # the output topics, as read_committed consumers see them
    first = engine(tiny_model, store, sink)
    a, b = 400, 900
    first.process(msgs[:a])
    first.commit_cycle(sink.commit)
    first.process(msgs[a:b])
    committed = dict(sink.committed_offsets)
    if crash_after == "commit":  # E2 done, E3 never: the transaction's offsets only
        sink.commit(first.pending)
    else:  # E3 done, E4 never
        snap = first.cache.snapshot(first.cache.dirty_slots(None), everything=True)
        sink.commit(first.pending)
        store.save(snap)
    committed = dict(sink.committed_offsets)

    second = engine(tiny_model, store, sink)
    parts = sorted({m.partition for m in msgs})
    applied = store.load_marks(second.topic_id, parts)
    start = second.begin_catch_up("in", applied, {p: committed[("in", p)] for p in parts})
    assert start, "the stored states trail the committed offsets"
    rest = [m for m in msgs if m.offset >= start.get(m.partition, committed[("in", m.partition)])]
    for tick in ticks(rest, [64, 7]):
        second.process(tick)
    second.commit_cycle(sink.commit)
    assert second.metrics.catch_up_events._value.get() > 0

    ref_sink = MemorySink()
    ref_store = MemoryStore(layout_for(fc))
    ref = engine(tiny_model, ref_store, ref_sink)
    for tick in ticks(msgs, [128]):
        ref.process(tick)
    ref.commit_cycle(lambda o: None)
    ref_sink.flush()
    got, dead = outputs(sink)
    want, ref_dead = outputs(ref_sink)
    assert set(got) == set(want)
    worst = max(float(np.abs(np.subtract(got[e], want[e])).max()) for e in want)
    assert worst <= 1e-4
    assert sorted(dict(p.headers or [])["source"] for p in dead) == sorted(
        dict(p.headers or [])["source"] for p in ref_dead
    ), "one dead letter per bad event"
    for k in ref.cache.index:
        g, w = decode_any(store.record(k) or b""), decode_any(ref_store.record(k) or b"")
        assert g is not None and w is not None
        assert (g.count, g.last_offset) == (w.count, w.last_offset), k
        np.testing.assert_allclose(g.h, w.h, atol=1e-6)
        np.testing.assert_array_equal(g.win, w.win)
    assert store.load_marks(second.topic_id, parts) == {
        p: o for (_, p), o in sink.committed_offsets.items()
    }


def test_a_mark_is_never_lowered(tiny_model: Path) -> None:
    store = MemoryStore(layout_for(Forecaster(load_artifact(tiny_model))))
    store.save_marks(b"t", {0: 10, 1: 5})
    store.save_marks(b"t", {0: 7, 1: 9})
    assert store.load_marks(b"t", [0, 1, 2]) == {0: 10, 1: 9}


def base(**kw: object) -> dict[str, object]:
    return {"model": "/m", **kw}


def test_settings_exactly_once() -> None:
    s = WorkerSettings(**base(processing_guarantee="exactly-once", group="g"))  # type: ignore[arg-type]
    assert s.exactly_once and s.transactional_id_or_default().startswith("stream-lstm-g-")
    assert WorkerSettings(**base()).processing_guarantee == "at-least-once"  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not supported with --runtime faust"):
        WorkerSettings(**base(processing_guarantee="exactly-once", runtime="faust"))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"transactional\.id .* is refused"):
        WorkerSettings(**base(producer_options={"transactional.id": "x"}))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="only used with --processing-guarantee"):
        WorkerSettings(**base(transactional_id="x"))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"isolation\.level=read_uncommitted is refused"):
        WorkerSettings(
            **base(  # type: ignore[arg-type]
                processing_guarantee="exactly-once",
                consumer_options={"isolation.level": "read_uncommitted"},
            )
        )


def test_the_transaction_timeout_covers_the_commit_interval() -> None:
    eos = {"processing_guarantee": "exactly-once"}
    assert WorkerSettings(**base(**eos)).transaction_timeout_ms() == 10_000  # type: ignore[arg-type]
    slow = WorkerSettings(**base(**eos, commit_interval_ms=8000))  # type: ignore[arg-type]
    assert slow.transaction_timeout_ms() == 21_000
    with pytest.raises(
        ValidationError, match=r"give at least 10000 \(the commit interval \+ 5 s\)"
    ):
        WorkerSettings(
            **base(  # type: ignore[arg-type]
                **eos, commit_interval_ms=5000,
                producer_options={"transaction.timeout.ms": "1000"},
            )
        )  # fmt: skip
    ok = WorkerSettings(
        **base(**eos, producer_options={"transaction.timeout.ms": "60000"})  # type: ignore[arg-type]
    )
    assert ok.transaction_timeout_ms() == 60_000


def test_a_transactional_call_that_hangs_abandons_the_producer() -> None:
    """librdkafka can block in send_offsets_to_transaction past its timeout after a broker
    restart (confluentinc/librdkafka #5511): the sink gives up on that producer, starts a new
    one (whose init_transactions, with the same id, fences the old), and the worker rewinds."""
    import threading

    from stream_lstm.drivers.kafka_client import TransactionalSink

    release = threading.Event()

    class Stuck:
        def begin_transaction(self) -> None:
            pass

        def send_offsets_to_transaction(self, *a: object) -> None:
            release.wait(60)

    sink = TransactionalSink("127.0.0.1:1", {}, 30.0, "t-1")
    sink.call_timeout_s = 0.1
    sink._initialised = True
    stuck = Stuck()
    sink.producer = stuck  # type: ignore[assignment]
    sink.group_metadata = lambda: None
    try:
        with pytest.raises(PublishError, match="did not return within"):
            sink.commit({("in", 0): 5})
        assert sink.producer is not stuck and sink._abandoned == [stuck]
        assert not sink.in_txn and not sink._initialised  # init_transactions before the next
    finally:
        release.set()


def test_cycles_commit_while_the_writer_is_busy_and_a_rewind_replays_for_state_only(
    tiny_model: Path, synth_csv: Path
) -> None:
    """With two state writes in flight a cycle still commits its transaction (outputs visible
    every interval) and leaves its states dirty; a rewind then starts where the states are
    stored and replays up to the committed offset without output."""
    import threading

    gate = threading.Event()

    class SlowStore(MemoryStore):
        def save(self, snap):  # type: ignore[no-untyped-def]
            gate.wait(30)
            return super().save(snap)

    fc = Forecaster(load_artifact(tiny_model))
    store, sink = SlowStore(layout_for(fc)), TxnSink()
    eng = engine(tiny_model, store, sink)
    eng.start_writer()
    msgs = messages(synth_csv, bad_every=53)
    cuts = [0, 200, 400, 600, 800]
    try:
        for a, b in itertools.pairwise(cuts):
            eng.process(msgs[a:b])
            assert eng.commit_cycle(sink.commit, wait=False)
        assert len(sink.log) == 4 and not store.data, "four commits, no state written yet"
        eng.process(msgs[800:900])  # the open transaction ...
        sink.reset()  # ... aborted
        gate.set()
        eng.poll_commits(sink.commit, block=True)
        eng.rewind()
        assert eng.catch_up, "committed past the stored states: replayed for state only"
        rest = [m for m in msgs if m.offset >= eng.resume_at.get(("in", m.partition), 0)]
        for tick in ticks(rest, [50]):
            eng.process(tick)
        eng.commit_cycle(sink.commit)
    finally:
        gate.set()
        eng.stop_writer()
    ref_sink, ref_store = MemorySink(), MemoryStore(layout_for(fc))
    ref = engine(tiny_model, ref_store, ref_sink)
    ref.process(msgs)
    ref.commit_cycle(lambda o: None)
    ref_sink.flush()
    got, dead = outputs(sink)
    want, ref_dead = outputs(ref_sink)
    assert set(got) == set(want) and len(dead) == len(ref_dead)
    for k in ref.cache.index:
        g, w = decode_any(store.record(k) or b""), decode_any(ref_store.record(k) or b"")
        assert g is not None and w is not None and g.count == w.count, k
