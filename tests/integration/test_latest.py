"""Interactive queries on the real stack: a worker runs on the real broker and Redis, then the
latest forecast of each key is read back from Redis by `stream-lstm latest` and by the worker's
`/latest` endpoint, and compared with the last forecast the worker published for that key."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stream_lstm.cli import main
from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import SeriesSpec
from stream_lstm.replay import iter_events
from stream_lstm.training.evaluate import stream_rows
from tests.integration.conftest import Services
from tests.integration.helpers import (
    make_topics,
    produce,
    read_all,
    running_worker,
    settings,
    wait_for,
)

SYNTH = SeriesSpec("ts", ("f0", "f1"), ("f0",), "key")


def last_published(msgs: list) -> dict[str, dict]:  # type: ignore[type-arg]
    """Per key, the published forecast of its latest event."""
    out: dict[str, dict] = {}  # type: ignore[type-arg]
    for m in msgs:
        f = json.loads(m.value())
        if f["key"] not in out or f["ts"] > out[f["key"]]["ts"]:
            out[f["key"]] = f
    return out


def get(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_latest_from_redis_equals_the_last_published_forecast(
    services: Services,
    topic_factory: Callable[..., str],
    group_id: str,
    synth_model: Path,
    synth_data: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frame, _ = load_frame(synth_data, SYNTH)
    frame = frame.groupby("key").head(150)  # 3 keys, 150 events each
    topics = make_topics(topic_factory, partitions=2)
    events = [(e.key.encode(), e.value) for e in iter_events(frame, SYNTH.value_cols)]
    produce(services.bootstrap, topics.input, events)
    n = len(stream_rows(frame, list(SYNTH.features)))
    s = settings(synth_model, services.bootstrap, services.redis_url, topics, group_id)
    keys = sorted(frame["key"].unique())
    with running_worker(s) as w:
        wait_for(lambda: w.metric("stream_lstm_forecasts_out_total") >= n, 120, "all forecasts")
        last = last_published(read_all(services.bootstrap, topics.output, n))
        port = w.worker.metrics_port
        base = f"http://127.0.0.1:{port}/latest"

        def written() -> bool:  # the last commit cycle has stored every key's last event
            code, body = get(base + "?" + "&".join(f"key={k}" for k in keys))
            got = {f["key"]: f["ts"] for f in body.get("forecasts", [])}
            return code == 200 and all(got.get(k) == last[k]["ts"] for k in keys)

        wait_for(written, 30, "the states of every key's last event in Redis")
        code, body = get(base + "?" + "&".join(f"key={k}" for k in [*keys, "nobody"]))
        assert code == 200 and body["missing"] == ["nobody"]
        for f in body["forecasts"]:
            want = last[f["key"]]
            assert (f["ts"], f["offset"], f["model"]) == (want["ts"], want["offset"], want["model"])
            assert f["rebuilt"] is False and f["events"] == 150
            np.testing.assert_allclose(f["forecast"]["f0"], want["forecast"]["f0"], rtol=1e-5)
        assert get(base + "?key=nobody")[0] == 404
        assert get(base)[0] == 400
    # the CLI reads the same from Redis, with the worker stopped
    argv = [*keys, "--model", str(synth_model), "--redis", services.redis_url, "--group", group_id]
    assert main(["latest", *argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f["key"] for f in doc["forecasts"]] == keys and doc["missing"] == []
    for f in doc["forecasts"]:
        np.testing.assert_allclose(f["forecast"]["f0"], last[f["key"]]["forecast"]["f0"], rtol=1e-5)
    assert main(["latest", "nobody", *argv[len(keys) :]]) == 1
    assert "no state" in capsys.readouterr().out
    assert main(["latest", keys[0], *argv[len(keys) :]]) == 0
    table = capsys.readouterr().out
    assert keys[0] in table and pd.Timestamp(last[keys[0]]["ts"], unit="ms").year == 2024


def test_online_forecaster_on_redis_survives_a_restart(
    services: Services, synth_model: Path, synth_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Python API's online forecaster with its state in the real Redis: a second forecaster
    (a restarted process) continues each key from the stored state, and equals predict; the
    state it wrote is the worker's format (stream-lstm latest reads it)."""
    import stream_lstm as sl

    model = sl.load(synth_model)
    frame = pd.read_csv(synth_data).groupby("key").head(80)
    ns = f"api-{uuid.uuid4().hex[:8]}"
    half = frame[frame["ts"] < frame["ts"].quantile(0.5)]
    rest = frame[frame["ts"] >= frame["ts"].quantile(0.5)]
    with model.online(store=services.redis_url, namespace=ns) as first:
        a = first.update_frame(half)
    with model.online(store=services.redis_url, namespace=ns) as second:
        b = second.update_frame(rest)
        latest = second.latest("k0")
    got = {(f.key, f.ts): f.forecast["f0"] for f in [*a, *b] if isinstance(f, sl.Forecast)}
    assert len(got) == len(frame)
    ref = model.predict(frame)
    ref["ms"] = (ref["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms")
    for (key, ts), want in ref.groupby(["key", "ms"])["value"]:
        np.testing.assert_allclose(got[key, ts], want.to_numpy(), rtol=1e-5, atol=1e-5)
    last_k0 = max(ts for k, ts in got if k == "k0")
    assert latest is not None and latest.ts == last_k0
    argv = ["k0", "--model", str(synth_model), "--redis", services.redis_url, "--namespace", ns]
    assert main(["latest", *argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(doc["forecasts"][0]["forecast"]["f0"], got["k0", last_k0], rtol=1e-5)
