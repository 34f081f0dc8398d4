"""The engine in process (memory sink and store): parity with `predict`, tick grouping,
restarts, replays after a crash, late and duplicate events, model version changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import KEY, TS, SeriesSpec
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.artifact import load_artifact, save_artifact
from stream_lstm.model.lstm import LSTMForecaster
from stream_lstm.model.runtime import Forecaster, previous_rows
from stream_lstm.runtime.engine import Engine, EngineConfig, layout_for
from stream_lstm.runtime.events import decode_forecast
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.stores.record import decode_any
from stream_lstm.testing import MemorySink, frame_events, ticks, to_messages
from stream_lstm.training.predict import predict_frame

CFG = EngineConfig(output_topic="out", dlq_topic="dlq")


def make_engine(
    model: Path, store: MemoryStore | None = None, sink: MemorySink | None = None
) -> tuple[Engine, MemoryStore, MemorySink]:
    fc = Forecaster(load_artifact(model))
    store = store or MemoryStore(layout_for(fc))
    sink = sink or MemorySink()
    return Engine(fc, store, sink, WorkerMetrics(), CFG), store, sink


def frame(synth_csv: Path) -> pd.DataFrame:
    return load_frame(synth_csv, SeriesSpec("ts", ("f0", "f1"), ("f0",), "key"))[0]


def forecasts(sink: MemorySink) -> pd.DataFrame:
    rows = []
    for p in sink.on("out"):
        f = decode_forecast(p.value or b"")
        for h, v in enumerate(f.forecast["f0"], 1):
            rows.append((f.key, f.ts, h, v, f.partition, f.offset))
    return pd.DataFrame(rows, columns=["key", "ts_ms", "h", "value", "partition", "offset"])


def reference(model: Path, df: pd.DataFrame) -> pd.DataFrame:
    ref = predict_frame(Forecaster(load_artifact(model)), df)
    ref["ts_ms"] = ref["ts"].astype("datetime64[ms, UTC]").astype("int64")
    return ref[["key", "ts_ms", "h", "value"]]


def assert_parity(got: pd.DataFrame, ref: pd.DataFrame, atol: float = 1e-4) -> None:
    m = ref.merge(got, on=["key", "ts_ms", "h"], how="left", suffixes=("_ref", "_got"))
    assert m["value_got"].notna().all(), f"{m['value_got'].isna().sum()} forecasts missing"
    assert len(got) == len(ref), "no extra forecasts"
    err = np.abs(m["value_got"] - m["value_ref"]).max()
    assert err <= atol, f"max abs difference {err}"


@pytest.mark.parametrize("model_fixture", ["tiny_model", "tiny_cnn_model"])
@pytest.mark.parametrize("sizes", [[1], [7, 1, 64], [5000]])
def test_stream_equals_predict(
    model_fixture: str, sizes: list[int], synth_csv: Path, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(model_fixture)
    df = frame(synth_csv)
    eng, _, sink = make_engine(model)
    msgs = to_messages(frame_events(df, ["f0", "f1"]))
    for tick in ticks(msgs, sizes):
        eng.process(tick)
    assert_parity(forecasts(sink), reference(model, df))


def test_one_model_call_and_one_load_per_tick(
    tiny_model: Path, synth_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = frame(synth_csv)
    eng, store, _ = make_engine(tiny_model)
    calls = []
    runner = eng.step.runner  # type: ignore[attr-defined]
    real = runner.run_stateful
    monkeypatch.setattr(runner, "run_stateful", lambda *a: calls.append(a[0].shape) or real(*a))
    msgs = to_messages(frame_events(df, ["f0", "f1"]))
    eng.process(msgs[:300])  # 3 keys, ~100 events each, in ONE tick
    assert len(calls) == 1
    K, Tmax, _ = calls[0]
    assert K == 3 and Tmax >= 99  # several events of one key form one sequence
    assert store.loads == 1
    eng.process(msgs[300:310])
    assert store.loads == 1, "cached keys need no round trip"


def test_restart_continues_each_key_and_skips_replayed_events(
    tiny_model: Path, synth_csv: Path
) -> None:
    df = frame(synth_csv)
    msgs = to_messages(frame_events(df, ["f0", "f1"]))
    committed: dict[tuple[str, int], int] = {}
    eng, store, sink = make_engine(tiny_model)
    for tick in ticks(msgs[:900], [50]):
        eng.process(tick)
    eng.commit_cycle(committed.update)
    for tick in ticks(msgs[900:1000], [50]):
        eng.process(tick)  # processed and published, state not written: a crash here
    eng2, _, _ = make_engine(tiny_model, store=store, sink=sink)
    # the restarted worker re-consumes from the committed offsets: 900.. again
    resume = [m for m in msgs if m.offset >= committed.get((m.topic, m.partition), 0)]
    for tick in ticks(resume, [37]):
        eng2.process(tick)
    got = forecasts(sink).drop_duplicates(["key", "ts_ms", "h"])
    assert_parity(got, reference(tiny_model, df))
    dups = forecasts(sink).duplicated(["key", "ts_ms", "h"], keep=False)
    assert dups.any()  # at-least-once output: events 900..999 were forecast twice
    assert eng2.metrics.replayed._value.get() == 0  # nothing replayed below a stored offset

    # crash between the Redis write and the offset commit: replayed events are skipped
    eng2.commit_cycle(lambda offsets: None)  # offsets not committed
    eng3, _, sink3 = make_engine(tiny_model, store=store)
    for tick in ticks(resume, [100]):
        eng3.process(tick)
    assert eng3.metrics.replayed._value.get() == len(resume)
    assert not sink3.on("out")


def test_late_and_duplicate_events_are_dead_lettered(tiny_model: Path) -> None:
    eng, _, sink = make_engine(tiny_model)
    ev = [("a", 1000, {"f0": 1.0, "f1": 2.0}), ("a", 2000, {"f0": 1.5, "f1": 2.0}),
          ("a", 1500, {"f0": 9.0, "f1": 9.0}), ("a", 2000, {"f0": 9.0, "f1": 9.0}),
          ("a", 3000, {"f0": 1.2, "f1": 2.1})]  # fmt: skip
    msgs = to_messages(ev, partitions=1)
    eng.process(msgs[:2])
    eng.process(msgs[2:])
    reasons = [dict(p.headers or [])["reason"] for p in sink.on("dlq")]
    assert reasons == [b"late", b"duplicate"]
    assert [decode_forecast(p.value or b"").ts for p in sink.on("out")] == [1000, 2000, 3000]
    # the same inside one tick
    eng2, _, sink2 = make_engine(tiny_model)
    eng2.process(msgs)
    assert [dict(p.headers or [])["reason"] for p in sink2.on("dlq")] == [b"late", b"duplicate"]
    np.testing.assert_allclose(
        [decode_forecast(p.value or b"").forecast["f0"] for p in sink2.on("out")],
        [decode_forecast(p.value or b"").forecast["f0"] for p in sink.on("out")],
        atol=1e-5,
    )


def retrained(model: Path, out: Path) -> Path:
    """A "retrain": the same architecture with other weights is another version."""
    shutil.copytree(model, out)
    a = load_artifact(out)
    with torch.no_grad():
        for p in a.module.parameters():
            p.mul_(1.01)
    save_artifact(out, a.config, a.module, a.scaler)
    return out


def test_a_new_model_version_rebuilds_state_from_the_window(
    tiny_model: Path, synth_csv: Path, tmp_path: Path
) -> None:
    df = frame(synth_csv)
    events = frame_events(df, ["f0", "f1"])
    msgs = to_messages(events)
    eng, store, _ = make_engine(tiny_model)
    for tick in ticks(msgs[:600], [64]):
        eng.process(tick)
    eng.commit_cycle(lambda o: None)
    fc2 = Forecaster(load_artifact(retrained(tiny_model, tmp_path / "v2")))
    assert fc2.version != eng.fc.version
    store2 = MemoryStore(layout_for(fc2), previous_version=eng.fc.version, data=store.data)
    eng2 = Engine(fc2, store2, MemorySink(), WorkerMetrics(), CFG)
    for tick in ticks(msgs[600:], [64]):
        eng2.process(tick)
    assert eng2.metrics.state_loaded.labels(outcome="rebuilt")._value.get() == 3
    # expected: v2 run from h_0 over each key's last T rows before the switch, then the rest
    T = fc2.config.time_step
    switch_ts = {k: t for k, t, _ in events[:600]}  # each key's last time before the switch
    m = fc2.module
    assert isinstance(m, LSTMForecaster)
    for key, t_switch in switch_ts.items():
        k = df[df[KEY] == key]
        before, after = k[k[TS] <= t_switch].tail(T), k[k[TS] > t_switch]
        # the replay reads the stored window alone: its first row has no previous row
        both = pd.concat([before, after])
        v = both[["f0", "f1"]].to_numpy()
        x = fc2.inputs(v, both[TS].to_numpy(), both[KEY].tolist(), previous_rows(v))
        x1, x2 = x[: len(before)], x[len(before) :]
        with torch.inference_mode():
            _, state = m(torch.from_numpy(x1)[None])
            _, (h, _) = m(torch.from_numpy(x2)[None], state)
        np.testing.assert_allclose(eng2.cache.h[eng2.cache.index[key]], h[:, 0].numpy(), atol=1e-5)


@pytest.mark.parametrize("second", ["tiny_model_v2", "tiny_cnn_model"])
def test_hot_switch_equals_a_restart_with_the_new_model(
    tiny_model: Path, second: str, synth_csv: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Engine.switch_model between ticks (commit cycle, new layout, keys reloaded and rebuilt)
    gives the same forecasts as stopping and starting a new engine on the new model; and a
    switch back to the first version rebuilds from the second's newer records, not from its own
    stale ones."""
    if second == "tiny_model_v2":
        model_b = retrained(tiny_model, tmp_path / "v2")
    else:
        model_b = request.getfixturevalue(second)
    msgs = to_messages(frame_events(frame(synth_csv), ["f0", "f1"]))
    committed: list[dict[tuple[str, int], int]] = []
    eng, store, sink = make_engine(tiny_model)
    for tick in ticks(msgs[:600], [64]):
        eng.process(tick)
    fc_b = Forecaster(load_artifact(model_b))
    dropped = eng.switch_model(fc_b, committed.append)
    assert dropped == 3 and len(eng.cache) == 0
    assert committed and store.version == fc_b.version
    before = len(sink.on("out"))
    for tick in ticks(msgs[600:900], [64]):
        eng.process(tick)
    got = forecasts(MemorySink(delivered=sink.on("out")[before:]))

    ref_eng, ref_store, _ = make_engine(tiny_model)
    for tick in ticks(msgs[:600], [64]):
        ref_eng.process(tick)
    ref_eng.commit_cycle(lambda o: None)
    store_b = MemoryStore(
        layout_for(fc_b), previous_version=ref_eng.fc.version, data=ref_store.data
    )
    eng_b = Engine(fc_b, store_b, MemorySink(), WorkerMetrics(), CFG)
    for tick in ticks(msgs[600:900], [64]):
        eng_b.process(tick)
    want = forecasts(eng_b.sink)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))

    # back to the first model: its own records are older than the second's → rebuilt
    eng.switch_model(Forecaster(load_artifact(tiny_model)), committed.append)
    eng.process(msgs[900:901])
    assert eng.metrics.state_loaded.labels(outcome="rebuilt")._value.get() == 3 + 1
    assert eng.metrics.state_loaded.labels(outcome="restored")._value.get() == 0


def test_zombie_write_is_refused_and_dropped(tiny_model: Path, synth_csv: Path) -> None:
    df = frame(synth_csv)
    msgs = to_messages(frame_events(df, ["f0", "f1"]), partitions=1)
    zombie, store, _ = make_engine(tiny_model)
    owner, _, _ = make_engine(tiny_model, store=store)
    zombie.process(msgs[:100])
    owner.process(msgs[:200])  # the new owner got further
    owner.commit_cycle(lambda o: None)
    zombie.commit_cycle(lambda o: None)  # stale: must not overwrite
    assert zombie.metrics.state_refused._value.get() == 3
    assert len(zombie.cache) == 0
    stored = {k: decode_any(v).last_offset for k, v in store.data.items()}  # type: ignore[union-attr]
    assert max(stored.values()) == 199


def test_a_fenced_commit_keeps_the_states_applied_since_the_last_write(
    tiny_model: Path, synth_csv: Path
) -> None:
    """A commit refused with ILLEGAL_GENERATION (a cooperative rebalance under way, partitions
    still ours) must not evict dirty states: the consumer does not rewind, so events applied
    since the last write would be lost from the state (seen once in the zombie chaos test)."""
    from confluent_kafka import KafkaError, KafkaException

    from stream_lstm.drivers.confluent import Worker
    from stream_lstm.errors import KafkaClientError

    msgs = to_messages(frame_events(frame(synth_csv), ["f0", "f1"]), partitions=1)
    eng, store, _ = make_engine(tiny_model)
    eng.process(msgs[:30])
    eng.commit_cycle(lambda o: None)  # states written, offsets committed
    eng.process(msgs[30:36])  # applied, not yet written

    class FencedConsumer:
        def commit(self, offsets: object, asynchronous: bool) -> None:
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))

    w = object.__new__(Worker)
    w.engine, w.metrics, w.consumer = eng, eng.metrics, FencedConsumer()  # type: ignore[assignment]
    w.txn = None
    with pytest.raises(KafkaClientError):
        eng.commit_cycle(w._commit)
    assert not eng.pending, "the refused offsets are forgotten (never committed stale later)"
    assert len(eng.cache) == 3, "the cached states stay"
    eng.process(msgs[36:40])
    eng.commit_cycle(lambda o: None)
    ref, ref_store, _ = make_engine(tiny_model)
    ref.process(msgs[:40])
    ref.commit_cycle(lambda o: None)
    for key in {m.key.decode() for m in msgs[:40] if m.key}:
        got, want = decode_any(store.record(key) or b""), decode_any(ref_store.record(key) or b"")
        assert got is not None and want is not None
        assert got.count == want.count
        np.testing.assert_allclose(got.h, want.h, atol=1e-6)
