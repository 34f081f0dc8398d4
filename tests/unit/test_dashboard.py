"""`stream-lstm dashboard` without a broker: the per-key store, message decoding, the HTTP API
and the packaged page."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from stream_lstm.cli import build_parser, main
from stream_lstm.commands.dashboard import parse_keys
from stream_lstm.dashboard.feed import apply_event, apply_forecast
from stream_lstm.dashboard.server import Dashboard, static_file
from stream_lstm.dashboard.store import SeriesStore, interval_of
from stream_lstm.errors import ConfigError
from stream_lstm.runtime.events import ForecastOut, encode_event, encode_forecast

HOUR = 3_600_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def forecast(
    key: str, ts: int, values: list[float], quantiles: dict[str, list[float]] | None = None
) -> ForecastOut:
    return ForecastOut(
        key=key,
        ts=ts,
        model="m1",
        interval="1h",
        interval_ms=HOUR,
        forecast={"y": values},
        partition=0,
        offset=0,
        quantiles={"y": quantiles} if quantiles is not None else None,
    )


def test_interval_comes_from_the_lowest_and_highest_quantile() -> None:
    f = forecast("a", T0, [5.0, 6.0], {"0.5": [5.0, 6.0], "0.9": [7.0, 9.0], "0.1": [3.0, 2.0]})
    b = interval_of(f, "y")
    assert b.values == (5.0, 6.0)
    assert b.lower == (3.0, 2.0)
    assert b.upper == (7.0, 9.0)
    assert b.levels == ("0.1", "0.9")
    assert interval_of(forecast("a", T0, [1.0]), "y").lower is None
    one = interval_of(forecast("a", T0, [1.0], {"0.5": [1.0]}), "y")
    assert one.lower is None and one.upper is None, "one quantile is not an interval"


def test_store_keeps_actuals_and_forecasts_per_key() -> None:
    s = SeriesStore(history=10)
    for i in range(3):
        assert s.add_actual("a", T0 + i * HOUR, {"y": float(i), "x": 9.0})
    s.add_forecast(forecast("a", T0 + HOUR, [1.5, 2.5, 3.5], {"0.1": [1, 2, 3], "0.9": [2, 3, 4]}))
    s.add_forecast(
        forecast("a", T0 + 2 * HOUR, [2.5, 3.5, 4.5], {"0.1": [2, 3, 4], "0.9": [3, 4, 5]})
    )
    got = s.series("a")
    assert got is not None
    assert got["target"] == "y"
    assert got["actual"] == {"ts": [T0, T0 + HOUR, T0 + 2 * HOUR], "value": [0.0, 1.0, 2.0]}
    # the first step of each forecast sits at the time it predicted
    assert got["one_step"] == {"ts": [T0 + 2 * HOUR, T0 + 3 * HOUR], "value": [1.5, 2.5]}
    assert got["one_step_mae"] == pytest.approx(0.5)  # only T0+2h has an actual: |1.5 - 2|
    assert got["one_step_matched"] == 1
    latest = got["latest"]
    assert latest["ts"] == T0 + 2 * HOUR
    assert latest["h_ts"] == [T0 + 3 * HOUR, T0 + 4 * HOUR, T0 + 5 * HOUR]
    assert latest["value"] == [2.5, 3.5, 4.5]
    assert latest["lower"] == [2, 3, 4] and latest["upper"] == [3, 4, 5]
    assert latest["levels"] == ["0.1", "0.9"]
    assert latest["interval"] == "1h" and latest["interval_ms"] == HOUR and latest["model"] == "m1"
    assert s.series("nope") is None


def test_store_is_bounded_and_sorted() -> None:
    s = SeriesStore(history=5)
    for i in reversed(range(20)):  # arrives newest first: the kept ones are still shown in order
        s.add_actual("a", T0 + i * HOUR, {"y": float(i)})
        s.add_forecast(forecast("a", T0 + i * HOUR, [float(i)]))
    got = s.series("a")
    assert got is not None
    assert got["actual"]["ts"] == [T0 + i * HOUR for i in range(5)]
    assert len(got["one_step"]["ts"]) == 5
    assert got["one_step"]["ts"] == sorted(got["one_step"]["ts"])
    assert s.overview()["counts"]["actuals"] == 20


def test_first_keys_seen_are_chosen_and_others_ignored() -> None:
    s = SeriesStore(max_keys=2)
    assert s.add_actual("k1", T0, {"y": 1.0})
    assert s.add_forecast(forecast("k2", T0, [1.0]))
    assert not s.add_actual("k3", T0, {"y": 1.0})
    assert not s.add_forecast(forecast("k3", T0, [1.0]))
    ov = s.overview()
    assert ov["keys"] == ["k1", "k2"]
    assert ov["counts"]["ignored"] == 2
    assert ov["target"] == "y", "the first target of the forecasts, even from an ignored key"


def test_fixed_keys_are_charted_before_any_data_and_nothing_else() -> None:
    s = SeriesStore(keys=["b", "a", "b"], max_keys=1)
    assert s.keys() == ["b", "a"]
    assert not s.add_actual("c", T0, {"y": 1.0})
    empty = s.series("a")
    assert empty is not None and empty["actual"]["ts"] == [] and empty["latest"] is None


def test_target_choice() -> None:
    s = SeriesStore(target="x")
    s.add_actual("a", T0, {"y": 1.0, "x": 2.0})
    s.add_actual("a", T0 + HOUR, {"y": 1.0})  # no x: not an actual of x
    got = s.series("a")
    assert got is not None and got["target"] == "x"
    assert got["actual"]["value"] == [2.0]
    # no forecasts and no --target: nothing to chart yet, but the actuals are kept for later
    t = SeriesStore()
    t.add_actual("a", T0, {"y": 1.0})
    before = t.series("a")
    assert before is not None and before["target"] is None and before["actual"]["ts"] == []
    t.add_forecast(forecast("a", T0, [2.0]))
    after = t.series("a")
    assert after is not None and after["actual"]["value"] == [1.0]


def test_messages_are_decoded_and_bad_ones_counted() -> None:
    s = SeriesStore()
    assert apply_event(s, encode_event("a", "2024-01-01T01:00:00Z", {"y": 3.0}))
    assert apply_event(s, encode_event("a", T0, {"y": 2.0}))
    assert apply_forecast(s, encode_forecast(forecast("a", T0, [4.0])))
    for bad in (b"", b"not json", b'{"key": "a", "ts": "yesterday", "values": {}}'):
        assert not apply_event(s, bad)
    assert not apply_forecast(s, b'{"key": "a"}')
    assert not apply_forecast(s, None)
    got = s.series("a")
    assert got is not None and got["actual"]["ts"] == [T0, T0 + HOUR]
    ov = s.overview()
    assert ov["counts"]["bad"] == 5
    assert ov["last_error"].startswith("forecast:")


def test_static_files_are_packaged_and_paths_are_confined() -> None:
    page = static_file("index.html")
    assert page is not None and page[1].startswith("text/html")
    assert b"/static/vendor/uPlot.iife.min.js" in page[0]
    for name in ("app.js", "app.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"):
        assert static_file(name) is not None, name
    lic = static_file("vendor/uPlot.LICENSE")
    assert lic is not None and b"MIT License" in lic[0]
    for bad in ("../store.py", "vendor/../../server.py", "", "nope.js", "../__init__.py"):
        assert static_file(bad) is None, bad


# -- the HTTP API --------------------------------------------------------------------------------
@pytest.fixture
def served() -> Iterator[tuple[Dashboard, SeriesStore]]:
    store = SeriesStore(max_keys=2)
    store.add_actual("sensor-1", T0, {"y": 1.0})
    store.add_actual("sensor-1", T0 + HOUR, {"y": 2.0})
    store.add_forecast(forecast("sensor-1", T0, [1.5, 2.5], {"0.1": [1, 2], "0.9": [2, 3]}))
    store.add_actual("sensor 2/ü", T0, {"y": 7.0})
    dash = Dashboard(store, "127.0.0.1", 0)
    dash.start()
    try:
        yield dash, store
    finally:
        dash.stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def get_json(url: str) -> tuple[int, Any]:
    status, ctype, body = get(url)
    assert ctype == "application/json"
    return status, json.loads(body)


def test_api_serves_keys_and_series(served: tuple[Dashboard, SeriesStore]) -> None:
    dash, _ = served
    base = dash.url
    assert base.startswith("http://127.0.0.1:") and not base.endswith(":0/")
    status, keys = get_json(base + "api/keys")
    assert status == 200
    assert keys["keys"] == ["sensor-1", "sensor 2/ü"]
    assert keys["target"] == "y"
    assert keys["counts"]["forecasts"] == 1
    status, s = get_json(base + "api/series?key=sensor-1")
    assert status == 200
    assert s["actual"] == {"ts": [T0, T0 + HOUR], "value": [1.0, 2.0]}
    assert s["one_step"] == {"ts": [T0 + HOUR], "value": [1.5]}
    assert s["latest"]["h_ts"] == [T0 + HOUR, T0 + 2 * HOUR]
    assert s["latest"]["lower"] == [1, 2] and s["latest"]["upper"] == [2, 3]
    quoted = urllib.request.quote("sensor 2/ü", safe="")
    status, s2 = get_json(base + f"api/series?key={quoted}")
    assert status == 200 and s2["key"] == "sensor 2/ü" and s2["actual"]["value"] == [7.0]


def test_api_errors(served: tuple[Dashboard, SeriesStore]) -> None:
    dash, _ = served
    status, body = get_json(dash.url + "api/series")
    assert status == 400 and "key" in body["error"]
    status, body = get_json(dash.url + "api/series?key=other")
    assert status == 404 and body["keys"] == ["sensor-1", "sensor 2/ü"]
    status, _ = get_json(dash.url + "nope")
    assert status == 404
    status, _ = get_json(dash.url + "static/../store.py")
    assert status == 404


def test_page_and_static_files_are_served(served: tuple[Dashboard, SeriesStore]) -> None:
    dash, _ = served
    status, ctype, body = get(dash.url)
    assert status == 200 and ctype.startswith("text/html")
    assert b'id="status"' in body
    assert b"://" not in body, "nothing is loaded from the web (no CDN)"
    status, ctype, js = get(dash.url + "static/app.js")
    assert status == 200 and ctype.startswith("text/javascript")
    assert b"dataset.points" in js and b"://" not in js
    status, ctype, _ = get(dash.url + "static/vendor/uPlot.iife.min.js")
    assert status == 200 and ctype.startswith("text/javascript")


def test_busy_port_fails_before_kafka_is_tried(
    served: tuple[Dashboard, SeriesStore], capsys: pytest.CaptureFixture[str]
) -> None:
    dash, _ = served
    port = str(dash.httpd.server_address[1])
    # the port is checked first: the unreachable bootstrap is never tried
    assert main(["dashboard", "--port", port, "--bootstrap", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_flags() -> None:
    p = build_parser()
    a = p.parse_args(["dashboard"])
    # no argparse defaults for what the environment or --config may give (tested in
    # test_kafka_connection.py)
    assert (a.bootstrap, a.input_topic, a.output_topic, a.config) == (None, None, None, None)
    assert (a.max_keys, a.history, a.port, a.addr) == (4, 500, 8050, "127.0.0.1")
    assert a.keys is None and a.target is None and not a.from_beginning
    a = p.parse_args(["dashboard", "--kafka-option", "a=1", "--kafka-option", "b=2", "--port", "0"])
    assert a.kafka_options == ["a=1", "b=2"] and a.port == 0
    for bad in (["--port", "70000"], ["--history", "0"], ["--max-keys", "x"]):
        with pytest.raises(SystemExit) as e:
            p.parse_args(["dashboard", *bad])
        assert e.value.code == 2
    assert parse_keys(" a, b,,a ") == ["a", "b"]
    assert parse_keys(None) is None
    with pytest.raises(ConfigError):
        parse_keys(" , ")


def test_default_topics_match_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_lstm.config import TopicSettings, WorkerSettings, build_settings

    for var in ("STREAM_LSTM_INPUT_TOPIC", "STREAM_LSTM_OUTPUT_TOPIC"):
        monkeypatch.delenv(var, raising=False)
    s = build_settings(TopicSettings)
    w = build_settings(WorkerSettings, model="m")
    assert (s.input_topic, s.output_topic) == (w.input_topic, w.output_topic)
    assert (s.input_topic, s.output_topic) == ("events", "forecasts")
