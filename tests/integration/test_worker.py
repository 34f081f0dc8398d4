"""The stream worker on the real broker and Redis: parity with `predict`, ticks with several
events per key, graceful restart, two workers in one group, dead letters, metrics."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from stream_lstm.data.datasets import preset
from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import KEY, SeriesSpec
from stream_lstm.data.synthetic import synthetic_frame
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.replay import iter_events
from stream_lstm.runtime.events import encode_event
from stream_lstm.training.evaluate import stream_rows
from stream_lstm.training.predict import predict_frame
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

SYNTH = SeriesSpec("ts", ("f0", "f1"), ("f0",), "key")


def events_of(frame: pd.DataFrame, spec: SeriesSpec) -> list[tuple[bytes, bytes]]:
    return [(e.key.encode(), e.value) for e in iter_events(frame, spec.value_cols)]


def assert_parity(model: Path, frame: pd.DataFrame, got: pd.DataFrame, atol: float = 1e-4) -> None:
    """Every event has a forecast, equal to `predict` within ``atol`` on the standardised scale."""
    fc = Forecaster(load_artifact(model))
    target = fc.config.targets[0]
    ref = predict_frame(fc, frame)
    ref["ts_ms"] = ref["ts"].astype("datetime64[ms, UTC]").astype("int64")
    m = ref.merge(got, on=["key", "ts_ms", "h"], how="left", suffixes=("_ref", "_got"))
    assert m["value_got"].notna().all(), (
        f"{int(m['value_got'].isna().sum())} forecast values missing"
    )
    keys = m[KEY].to_numpy()
    z_ref = fc.to_standard(m["value_ref"].to_numpy()[:, None], keys)[:, 0]
    z_got = fc.to_standard(m["value_got"].to_numpy()[:, None], keys)[:, 0]
    worst = float(np.abs(z_ref - z_got).max())
    assert worst <= atol, f"max abs difference {worst} on the standardised scale ({target})"


def assert_each_event_forecast_once(got: pd.DataFrame, n_events: int) -> None:
    """Exactly one forecast per input event (by partition and offset)."""
    per_event = got[got["h"] == 1].groupby(["partition", "offset"]).size()
    assert len(per_event) == n_events and (per_event == 1).all(), (
        f"{len(per_event)} events forecast ({int((per_event > 1).sum())} more than once), "
        f"expected each of {n_events} once"
    )


def test_parity_with_predict_on_real_data(
    services: Services, topic_factory: Callable[..., str], group_id: str, ped_model: Path
) -> None:
    p = preset("pedestrian")
    spec = SeriesSpec(p.time_col, p.features, p.targets, p.key_col)
    frame, _ = load_frame(p.path, spec)
    topics = make_topics(topic_factory, partitions=4)
    produce(services.bootstrap, topics.input, events_of(frame, spec))
    n = len(stream_rows(frame, list(p.features)))
    s = settings(ped_model, services.bootstrap, services.redis_url, topics, group_id)
    with running_worker(s) as w:
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= n, 180, "all forecasts")
    got = forecasts_frame(read_all(services.bootstrap, topics.output, n), "Count")
    assert len(got) == n * 24, "exactly one forecast per event"
    assert_parity(ped_model, frame, got)


def test_several_events_per_key_in_a_tick_and_many_keys_across_partitions(
    services: Services, topic_factory: Callable[..., str], group_id: str, synth_model: Path
) -> None:
    frame = synthetic_frame(keys=300, rows=20, features=2, seed=11)
    topics = make_topics(topic_factory, partitions=8)
    produce(services.bootstrap, topics.input, events_of(frame, SYNTH))
    s = settings(
        synth_model,
        services.bootstrap,
        services.redis_url,
        topics,
        group_id,
        max_batch=4096,
        max_wait_ms=500,
    )
    with running_worker(s) as w:
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= 6000, 120, "all forecasts")
        ticks = w.metric("stream_lstm_tick_size_events_count")
    assert ticks <= 12, f"{ticks} ticks for 6000 events: ticks should hold many events per key"
    got = forecasts_frame(read_all(services.bootstrap, topics.output, 6000), "f0")
    assert got["partition"].nunique() == 8, "keys spread over all partitions"
    assert_parity(synth_model, frame, got)


def test_graceful_restart_continues_each_key_exactly(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    synth_data: Path,
) -> None:
    frame, _ = load_frame(synth_data, SYNTH)
    events = events_of(frame, SYNTH)
    topics = make_topics(topic_factory, partitions=4)
    s = settings(
        synth_model, services.bootstrap, services.redis_url, topics, group_id, max_batch=64
    )
    produce(services.bootstrap, topics.input, events[:500])
    with running_worker(s) as w1:
        wait_for(lambda: w1.metric("stream_lstm_forecasts_out_total") >= 500, 60, "first half")
    produce(services.bootstrap, topics.input, events[500:])
    with running_worker(s) as w2:
        wait_for(
            lambda: w2.metric("stream_lstm_forecasts_out_total") >= len(events) - 500,
            60,
            "second half",
        )
        assert w2.metric("stream_lstm_replayed_skipped_total") == 0
        assert w2.metric("stream_lstm_state_loads_total", outcome="restored") == 3
    got = forecasts_frame(read_all(services.bootstrap, topics.output, len(events)), "f0")
    assert_each_event_forecast_once(got, len(events))
    assert_parity(synth_model, frame, got)


def test_two_workers_split_the_partitions(
    services: Services, topic_factory: Callable[..., str], group_id: str, synth_model: Path
) -> None:
    frame = synthetic_frame(keys=40, rows=60, features=2, seed=5)
    events = events_of(frame, SYNTH)
    topics = make_topics(topic_factory, partitions=8)
    s = settings(
        synth_model,
        services.bootstrap,
        services.redis_url,
        topics,
        group_id,
        max_batch=50,
        max_wait_ms=50,
    )
    with running_worker(s) as a, running_worker(s) as b:
        assigned = "stream_lstm_assigned_partitions"
        wait_for(
            lambda: (
                a.metric(assigned) > 0
                and b.metric(assigned) > 0
                and a.metric(assigned) + b.metric(assigned) == 8
            ),
            60,
            "the 8 partitions split between both workers",
        )
        produce(services.bootstrap, topics.input, events)

        def total() -> float:
            out = "stream_lstm_forecasts_out_total"
            return a.metric(out) + b.metric(out)

        wait_for(lambda: total() >= len(events), 120, "all forecasts")
        assert a.metric("stream_lstm_forecasts_out_total") > 0
        assert b.metric("stream_lstm_forecasts_out_total") > 0
    got = forecasts_frame(read_all(services.bootstrap, topics.output, len(events)), "f0")
    assert_each_event_forecast_once(got, len(events))
    assert_parity(synth_model, frame, got)


def bad_messages() -> list[tuple[str, bytes | None, bytes | None]]:
    """(reason, key, value) for each kind of bad event the worker must dead-letter."""
    ok = {"f0": 1.0, "f1": 2.0}
    return [
        ("not_json", b"a", b"{not json"),
        ("not_utf8", b"a", b'{"key": "a", "ts": 1, "values": {"f0": "\xff"}}'),
        ("wrong_type", b"a", encode_event("a", 1_704_067_200_000, {"f0": "x", "f1": 2.0})),  # type: ignore[dict-item]
        ("missing_field", b"a", b'{"key": "a", "values": {"f0": 1, "f1": 2}}'),
        ("missing_feature", b"a", encode_event("a", 1_704_067_200_000, {"f0": 1.0})),
        ("unknown_feature", b"a", encode_event("a", 1_704_067_200_000, {**ok, "zzz": 1.0})),
        (
            "non_finite_value",
            b"a",
            b'{"key": "a", "ts": 1704067200000, "values": {"f0": NaN, "f1": 1}}',
        ),
        ("bad_timestamp", b"a", encode_event("a", "yesterday", ok)),
        ("future_timestamp", b"a", encode_event("a", 4_102_444_800_000, ok)),
        (
            "oversized_message",
            b"a",
            encode_event("a", 1_704_067_200_000, {**ok, "pad": "x" * 70_000}),
        ),  # type: ignore[dict-item]
        ("oversized_key", b"k" * 300, encode_event("k" * 300, 1_704_067_200_000, ok)),
        ("key_mismatch", b"b", encode_event("a", 1_704_067_200_000, ok)),
        ("empty", b"a", b""),
        ("tombstone", b"a", None),
    ]


def test_bad_events_reach_the_dead_letter_topic_and_good_ones_flow(
    services: Services, topic_factory: Callable[..., str], group_id: str, synth_model: Path
) -> None:
    topics = make_topics(topic_factory, partitions=1)
    t0 = 1_704_067_200_000
    good = [
        (b"a", encode_event("a", t0 + i * 3_600_000, {"f0": 10.0 + i, "f1": 1.0})) for i in range(6)
    ]
    bad = bad_messages()
    late = (b"a", encode_event("a", t0 + 1 * 3_600_000 - 1, {"f0": 1.0, "f1": 1.0}))
    dup = (b"a", encode_event("a", t0 + 2 * 3_600_000, {"f0": 1.0, "f1": 1.0}))
    msgs = good[:3] + [(k, v) for _, k, v in bad] + [late, dup] + good[3:]
    produce(services.bootstrap, topics.input, msgs)
    s = settings(synth_model, services.bootstrap, services.redis_url, topics, group_id)
    with running_worker(s) as w:
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= 6, 60, "good forecasts")
        port = w.worker.metrics_port
        wait_for(
            lambda: (
                sum(w.metric("stream_lstm_dead_letters_total", reason=r) for r, *_ in bad)
                + w.metric("stream_lstm_dead_letters_total", reason="late")
                + w.metric("stream_lstm_dead_letters_total", reason="duplicate")
                >= len(bad) + 2
            ),
            30,
            "dead letters",
        )
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    dlq = read_all(services.bootstrap, topics.dlq, len(bad) + 2)
    reasons = [dict(m.headers() or [])["reason"].decode() for m in dlq]
    assert reasons == [r for r, *_ in bad] + ["late", "duplicate"]
    for m, (_, _, value) in zip(dlq, bad, strict=False):
        assert m.value() == (value or b""), "the original bytes are kept"
        assert dict(m.headers() or [])["source"].decode().startswith(topics.input)
    out = forecasts_frame(read_all(services.bootstrap, topics.output, 6), "f0")
    assert sorted(out[out["h"] == 1]["ts_ms"].tolist()) == [t0 + i * 3_600_000 for i in range(6)]

    # the metrics endpoint reports the same counts
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("stream_lstm_events_in_total", ())] == len(msgs)
    assert samples[("stream_lstm_forecasts_out_total", ())] == 6
    for r, *_ in bad:
        assert samples[("stream_lstm_dead_letters_total", (("reason", r),))] == 1, r
    assert samples[("stream_lstm_late_events_total", ())] == 1
    assert samples[("stream_lstm_end_to_end_latency_seconds_count", ())] == 6


def test_a_new_model_version_rebuilds_each_key_from_its_stored_window(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    synth_data: Path,
    tmp_path: Path,
) -> None:
    import torch

    from stream_lstm.model.artifact import save_artifact

    v2 = tmp_path / "v2"
    a = load_artifact(synth_model)
    with torch.no_grad():
        for p in a.module.parameters():
            p.mul_(0.98)
    save_artifact(v2, a.config, a.module, a.scaler)
    frame, _ = load_frame(synth_data, SYNTH)
    events = events_of(frame, SYNTH)
    topics = make_topics(topic_factory, partitions=2)
    produce(services.bootstrap, topics.input, events[:600])
    with running_worker(
        settings(synth_model, services.bootstrap, services.redis_url, topics, group_id)
    ) as w1:
        wait_for(lambda: w1.metric("stream_lstm_forecasts_out_total") >= 600, 60, "v1 forecasts")
    produce(services.bootstrap, topics.input, events[600:])
    with running_worker(
        settings(v2, services.bootstrap, services.redis_url, topics, group_id)
    ) as w2:
        wait_for(
            lambda: w2.metric("stream_lstm_forecasts_out_total") >= len(events) - 600,
            60,
            "v2 forecasts",
        )
        assert w2.metric("stream_lstm_state_loads_total", outcome="rebuilt") == 3
        assert w2.worker.store.previous_version == load_artifact(synth_model).version
    got = forecasts_frame(read_all(services.bootstrap, topics.output, len(events)), "f0")
    versions = (
        got[got["h"] == 1]
        .sort_values(["partition", "offset"])
        .groupby("partition")["model"]
        .agg(list)
    )
    v1_id, v2_id = load_artifact(synth_model).version, load_artifact(v2).version
    for seq in versions:
        switch = seq.index(v2_id)
        assert set(seq[:switch]) == {v1_id} and set(seq[switch:]) == {v2_id}, (
            "one switch per partition"
        )
