"""Live scoring on the real broker and Redis: a worker scores every forecast whose time came,
exports the errors per horizon step (equal to those computed from the forecast topic), and sends
one open and one close alert for an injected excursion to the alerts topic."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import pytest

from stream_lstm.data.loading import load_frame
from stream_lstm.runtime.events import decode_forecast, parse_ts
from stream_lstm.runtime.scoring import decode_alert
from tests.integration.conftest import Services
from tests.integration.helpers import (
    make_topics,
    produce,
    read_all,
    running_worker,
    settings,
    wait_for,
)
from tests.integration.test_worker import SYNTH, events_of


@pytest.mark.parametrize("redis_mode", ["node", "cluster"])
def test_live_scores_and_alerts_on_the_real_stack(
    redis_mode: str,
    request: pytest.FixtureRequest,
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    synth_data: Path,
) -> None:
    frame, _ = load_frame(synth_data, SYNTH)
    events = events_of(frame, SYNTH)
    key = events[0][0]
    mine = [i for i, (k, _) in enumerate(events) if k == key]
    spike = mine[200]  # one wild actual for one key
    raw = msgspec.json.decode(events[spike][1])
    raw["values"]["f0"] += 1e4
    events[spike] = (key, msgspec.json.encode(raw))
    topics = make_topics(topic_factory, partitions=2)
    alerts_topic = topic_factory("alerts", partitions=1)
    produce(services.bootstrap, topics.input, events)
    redis_url = services.redis_url  # or the session's local Redis Cluster
    if redis_mode == "cluster":
        redis_url = request.getfixturevalue("redis_cluster").spec.url
    s = settings(
        synth_model, services.bootstrap, redis_url, topics, group_id,
        alerts_topic=alerts_topic, score_steps="1,3,6", alert_sigma=6.0,
    )  # fmt: skip
    with running_worker(s) as w:
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= len(events), 120, "all")
        m = {h: (w.metric("stream_lstm_forecast_scored_total", step=str(h), target="f0"),
                 w.metric("stream_lstm_forecast_abs_error_total", step=str(h), target="f0"))
             for h in (1, 3, 6)}  # fmt: skip
        opened = w.metric("stream_lstm_alerts_total", state="open")
    # the same errors from the forecast topic and the input
    fcs = {}
    for msg in read_all(services.bootstrap, topics.output, len(events)):
        f = decode_forecast(msg.value() or b"")
        fcs[(f.key, f.ts)] = f
    iv = next(iter(fcs.values())).interval_ms
    actual = {(e["key"], parse_ts(e["ts"])): e["values"]["f0"]
              for e in (msgspec.json.decode(v) for _, v in events)}  # fmt: skip
    for h in (1, 3, 6):
        errs = [
            abs(a - fcs[(k, t - h * iv)].forecast["f0"][h - 1])
            for (k, t), a in actual.items()
            if (k, t - h * iv) in fcs
        ]
        n, total = m[h]
        assert n == len(errs) > 0, f"step {h}"
        assert np.isclose(total, sum(errs), rtol=1e-4), f"step {h}"
    alerts = [
        decode_alert(msg.value() or b"") for msg in read_all(services.bootstrap, alerts_topic, 2)
    ]
    spike_ts = parse_ts(msgspec.json.decode(events[spike][1])["ts"])
    mine_alerts = [a for a in alerts if a.key == key.decode() and a.since == spike_ts]
    assert [a.state for a in mine_alerts] == ["open", "close"]
    assert mine_alerts[0].actual is not None and mine_alerts[0].actual > 1e3
    assert mine_alerts[0].model == fcs[(key.decode(), spike_ts)].model
    assert opened == sum(a.state == "open" for a in alerts)
