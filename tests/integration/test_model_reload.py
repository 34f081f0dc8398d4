"""Hot model reload on the real broker and Redis, in both runtimes: the worker watches its
``--model`` path (a symlink here, switched atomically as a deployment would), switches to the new
version between ticks without a restart, loses and duplicates nothing, rebuilds each key's state
from its stored window, and records the switch in a metric and a log line. An artifact that does
not fit is refused and the running model stays."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_lstm.data.loading import load_frame
from stream_lstm.model.artifact import load_artifact
from tests.integration.conftest import Services
from tests.integration.helpers import forecasts_frame, make_topics, produce, read_all, wait_for
from tests.integration.test_faust import wait_forecasts, worker
from tests.integration.test_worker import SYNTH, assert_each_event_forecast_once, events_of

SWITCHES = "stream_lstm_model_switches_total"


def point_link(link: Path, target: Path) -> None:
    """Repoint ``link`` at ``target`` atomically (rename over it), as a deployment would."""
    tmp = link.with_name(link.name + ".next")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


@pytest.mark.parametrize(
    ("runtime", "redis_mode"), [("confluent", "node"), ("faust", "node"), ("confluent", "cluster")]
)
def test_hot_switch_loses_nothing_and_rebuilds_state(
    runtime: str,
    redis_mode: str,
    request: pytest.FixtureRequest,
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    synth_model_b: Path,
    synth_data: Path,
    tmp_path: Path,
) -> None:
    va, vb = load_artifact(synth_model).version, load_artifact(synth_model_b).version
    assert va != vb
    frame, _ = load_frame(synth_data, SYNTH)
    events = events_of(frame, SYNTH)
    half = len(events) // 2
    topics = make_topics(topic_factory, partitions=2)
    link = tmp_path / "current"
    point_link(link, synth_model)
    produce(services.bootstrap, topics.input, events[:half])
    on = []  # the state on the session's local Redis Cluster, or on the one node
    if redis_mode == "cluster":
        on = ["--redis", request.getfixturevalue("redis_cluster").spec.url]
    with worker(
        runtime, link, services, topics, group_id, tmp_path, "--model-poll-s", "0.3", *on
    ) as w:
        wait_forecasts(w, half, 120, "forecasts by the first model")
        # a directory that is not (yet) an artifact: refused, counted, the model stays
        broken = tmp_path / "half-copied"
        broken.mkdir()
        (broken / "VERSION").write_text("0123456789ab\n")
        point_link(link, broken)
        wait_for(lambda: w.metric("stream_lstm_model_reload_failures_total") >= 1, 30, "refusal")
        assert w.metric(SWITCHES) == 0
        point_link(link, synth_model_b)
        wait_for(lambda: w.metric(SWITCHES) == 1, 60, "the switch")
        produce(services.bootstrap, topics.input, events[half:])
        wait_forecasts(w, len(events), 120, "forecasts by the second model")
        m = w.metrics() or {}
        assert any(k.startswith("stream_lstm_model_info") and f"version={vb}" in k for k in m)
        # every key's state was rebuilt from its window under the new version
        assert w.metric("stream_lstm_state_loads_total{outcome=rebuilt}") == 3
    log = w.log_text()
    assert f"model switched {va} → {vb}" in log
    assert "not switched to" in log
    got = forecasts_frame(read_all(services.bootstrap, topics.output, len(events)), "f0")
    assert_each_event_forecast_once(got, len(events))
    one = got[got["h"] == 1].sort_values("ts_ms")
    # events before the switch were forecast by A, every later one by B
    first = one.groupby("key").head(half // 3)
    assert set(first["model"]) == {va}
    assert set(one.drop(first.index)["model"]) == {vb}


def test_a_model_with_other_features_is_refused(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    ped_model: Path,
    synth_data: Path,
    tmp_path: Path,
) -> None:
    topics = make_topics(topic_factory, partitions=1)
    link = tmp_path / "current"
    model = tmp_path / "a"
    shutil.copytree(synth_model, model)
    point_link(link, model)
    frame, _ = load_frame(synth_data, SYNTH)
    events = events_of(frame, SYNTH)[:60]
    produce(services.bootstrap, topics.input, events)
    with worker(
        "confluent", link, services, topics, group_id, tmp_path, "--model-poll-s", "0.3"
    ) as w:
        wait_forecasts(w, 60, 90, "first forecasts")
        point_link(link, ped_model)
        wait_for(lambda: w.metric("stream_lstm_model_reload_failures_total") == 1, 30, "refusal")
        assert w.metric(SWITCHES) == 0
        assert w.alive()
    assert "a hot switch would dead-letter every event" in w.log_text()
