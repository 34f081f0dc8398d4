"""The public Python API: fit/predict/evaluate/save/load on DataFrames with the user's own column
names and time types, and the online forecaster (the engine's own path) against predict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import stream_lstm as sl
from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import SeriesSpec
from stream_lstm.data.synthetic import synthetic_frame
from stream_lstm.errors import StateError
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.training.predict import predict_frame

EPOCH = pd.Timestamp(0, tz="UTC")
TINY = dict(time_step=12, horizon=6, hidden_size=16, epochs=2, batch_size=8)


def user_frame(keys: int = 3, rows: int = 400) -> pd.DataFrame:
    """Synthetic series with a user's column names and a datetime time column."""
    df = synthetic_frame(keys=keys, rows=rows, features=2, seed=3)
    return pd.DataFrame(
        {
            "sensor": df["key"].map(lambda k: f"sensor-{k}"),
            "when": pd.to_datetime(df["ts"], unit="ms", utc=True),
            "load": df["f0"],
            "temp": df["f1"],
        }
    ).sample(frac=1.0, random_state=0)  # rows in no particular order


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return user_frame()


@pytest.fixture(scope="module")
def lstm(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> sl.Model:
    out = tmp_path_factory.mktemp("api") / "lstm"
    return sl.fit(
        frame, time="when", targets="load", features=["load", "temp"], key="sensor", out=out,
        norm="offset", **TINY,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cnn(frame: pd.DataFrame) -> sl.Model:
    return sl.fit(
        frame, time="when", targets=["load"], features=["load", "temp"], key="sensor",
        kind="cnn-lstm-attn", norm="revin", max_windows=256, quantiles=(0.1, 0.5, 0.9),
        loss="pinball", **TINY,
    )  # fmt: skip


def reference(model: sl.Model, frame: pd.DataFrame) -> pd.DataFrame:
    """predict as the CLI computes it: the loader's own column names."""
    spec = SeriesSpec("when", ("load", "temp"), ("load",), "sensor")
    rows, _ = load_frame(frame, spec)
    assert model.path is not None
    return predict_frame(Forecaster(load_artifact(model.path)), rows)


def test_predict_keeps_the_users_columns(lstm: sl.Model, frame: pd.DataFrame) -> None:
    got = lstm.predict(frame)
    assert list(got.columns) == ["sensor", "when", "target", "h", "value"]
    assert isinstance(got["when"].dtype, pd.DatetimeTZDtype) and str(got["when"].dt.tz) == "UTC"
    ref = reference(lstm, frame)
    assert len(got) == len(ref) == len(frame) * 6
    np.testing.assert_array_equal(got["value"].to_numpy(), ref["value"].to_numpy())
    assert (got["sensor"].to_numpy() == ref["key"].to_numpy()).all()


@pytest.mark.parametrize("form", ["iso", "naive", "epoch_s", "epoch_ms"])
def test_time_types_give_the_same_forecasts(lstm: sl.Model, frame: pd.DataFrame, form: str) -> None:
    df = frame.copy()
    unit = "ms"
    if form == "iso":
        df["when"] = df["when"].dt.strftime("%Y-%m-%dT%H:%M:%S%z")
    elif form == "naive":
        df["when"] = df["when"].dt.tz_localize(None)
    elif form == "epoch_s":
        df["when"] = (df["when"] - EPOCH) // pd.Timedelta(1, "s")
        unit = "s"
    else:
        df["when"] = (df["when"] - EPOCH) // pd.Timedelta(1, "ms")
    got = lstm.predict(df, time_unit=unit)  # type: ignore[arg-type]
    base = lstm.predict(frame)
    np.testing.assert_array_equal(got["value"].to_numpy(), base["value"].to_numpy())
    assert (got["when"] == base["when"]).all()


def test_save_load_round_trip(lstm: sl.Model, frame: pd.DataFrame, tmp_path: Path) -> None:
    saved = lstm.save(tmp_path / "copy")
    again = sl.load(saved)
    assert again.version == lstm.version
    np.testing.assert_array_equal(
        again.predict(frame)["value"].to_numpy(), lstm.predict(frame)["value"].to_numpy()
    )
    with pytest.raises(sl.ConfigError, match="not empty"):
        lstm.save(tmp_path / "copy")


def test_fit_without_out_lives_in_a_temporary_directory(cnn: sl.Model, tmp_path: Path) -> None:
    assert cnn.path is not None and cnn.path.exists()
    tmp = cnn.path
    cnn.save(tmp_path / "cnn")
    assert cnn.path == tmp_path / "cnn" and not tmp.exists()
    assert (tmp_path / "cnn" / "config.json").exists()


def test_evaluate_returns_the_scores(lstm: sl.Model, frame: pd.DataFrame) -> None:
    res = lstm.evaluate(frame)
    assert res["model"] == lstm.version and res["split"] == "test"
    assert set(res["scores"]) == {"model", "linear", "seasonal_naive", "persistence"}
    assert res["scores"]["model"]["original"]["overall"]["mse"] > 0
    assert "evaluation" in lstm.metrics


def test_bad_arguments_say_what_to_fix(frame: pd.DataFrame, lstm: sl.Model) -> None:
    with pytest.raises(sl.ConfigError, match="unknown training option"):
        sl.fit(frame, time="when", targets="load", key="sensor", epoch=3)
    with pytest.raises(sl.DataError, match="time column 'stamp' not found"):
        sl.fit(frame, time="stamp", targets="load", key="sensor")
    with pytest.raises(sl.DataError, match=r"column\(s\) \['lod'\] not found"):
        sl.fit(frame, time="when", targets="lod", key="sensor")
    with pytest.raises(sl.ConfigError, match="time_unit"):
        lstm.predict(frame, time_unit="minutes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DataFrame"):
        sl.fit([1, 2, 3], time="when", targets="load")  # type: ignore[arg-type]


@pytest.mark.parametrize("which", ["lstm", "cnn"])
def test_online_equals_predict(
    which: str, lstm: sl.Model, cnn: sl.Model, frame: pd.DataFrame
) -> None:
    model = lstm if which == "lstm" else cnn
    online = model.online()
    results = online.update_frame(frame, batch=97)  # ticks of odd sizes
    assert all(isinstance(r, sl.Forecast) for r in results)
    ref = model.predict(frame)
    if "quantile" in ref.columns:
        ref = ref[ref["quantile"] == 0.5]
    want = ref.set_index(["sensor", "when", "h"])["value"]
    for row, f in zip(frame.itertuples(), results, strict=True):
        assert isinstance(f, sl.Forecast)
        assert f.key == row.sensor and f.time == row.when
        exp = want.loc[(row.sensor, row.when)].sort_index().to_numpy()
        np.testing.assert_allclose(f.forecast["load"], exp, rtol=1e-5, atol=1e-5)
    if which == "cnn":
        assert results[0].quantiles is not None  # type: ignore[union-attr]


def test_event_by_event_restart_and_latest(lstm: sl.Model, frame: pd.DataFrame) -> None:
    """One event per call, a restart half way (a new forecaster on the same store), then the
    latest forecast of each key read back from the store."""
    rows = frame.sort_values(["when", "sensor"])
    half = len(rows) // 2
    online = lstm.online()
    store = online.store
    got: list[sl.Forecast] = []
    for r in rows.iloc[:half].itertuples():
        got.append(online.update(r.sensor, r.when, {"load": r.load, "temp": r.temp}))
    online.close()
    again = lstm.online(store=store)  # a restart: state from the store only
    for f in {f.key: f for f in got}.values():  # before any event: computed from the store
        before = again.latest(f.key)
        assert before is not None and before.ts == f.ts
        np.testing.assert_allclose(before.forecast["load"], f.forecast["load"], rtol=1e-5)
    for r in rows.iloc[half:].itertuples():
        got.append(again.update(r.sensor, r.when.isoformat(), {"load": r.load, "temp": r.temp}))
    ref = lstm.predict(frame).set_index(["sensor", "when", "h"])["value"]
    for r, f in zip(rows.itertuples(), got, strict=True):
        exp = ref.loc[(r.sensor, r.when)].sort_index().to_numpy()
        np.testing.assert_allclose(f.forecast["load"], exp, rtol=1e-5, atol=1e-5)
    last = {f.key: f for f in got}
    for key, f in last.items():
        latest = again.latest(key)
        assert latest is not None and latest.ts == f.ts and latest.model == lstm.version
        np.testing.assert_allclose(latest.forecast["load"], f.forecast["load"], rtol=1e-5)
    assert again.latest("nobody") is None


def test_latest_of_a_windowed_model(cnn: sl.Model, frame: pd.DataFrame) -> None:
    online = cnn.online()
    res = online.update_frame(frame.head(60))
    last: dict[str, sl.Forecast] = {}
    for f in res:
        assert isinstance(f, sl.Forecast)
        if f.key not in last or f.ts > last[f.key].ts:
            last[f.key] = f
    for key, f in last.items():
        got = online.latest(key)
        assert got is not None and got.ts == f.ts
        np.testing.assert_allclose(got.forecast["load"], f.forecast["load"], rtol=1e-5)
        assert got.quantiles is not None and f.quantiles is not None
        np.testing.assert_allclose(
            got.quantiles["load"]["0.9"], f.quantiles["load"]["0.9"], rtol=1e-5
        )


def test_rejected_events_carry_the_workers_reason(lstm: sl.Model) -> None:
    online = lstm.online()
    t0 = pd.Timestamp("2024-03-01T00:00:00Z")
    ok = online.update("a", t0, {"load": 10.0, "temp": 5.0})
    assert ok.key == "a" and len(ok.forecast["load"]) == 6
    res = online.update_many(
        [
            ("a", t0, {"load": 11.0, "temp": 5.0}),  # same time again: late/duplicate
            ("a", t0 + pd.Timedelta(hours=1), {"load": 11.0}),  # a feature missing
            {"key": "b", "ts": "not a time", "values": {"load": 1.0, "temp": 1.0}},
            ("b", t0, {"load": float("nan"), "temp": 1.0}),
            ("c", t0, {"load": 1.0, "temp": 2.0}),
        ]
    )
    assert [type(r).__name__ for r in res] == ["Rejected"] * 4 + ["Forecast"]
    reasons = [r.reason for r in res[:4]]  # type: ignore[union-attr]
    assert all(reasons) and len(set(reasons)) >= 3, reasons
    with pytest.raises(sl.EventRejectedError, match="rejected"):
        online.update("a", t0, {"load": 1.0, "temp": 1.0})
    t1 = t0 + pd.Timedelta(hours=2)
    odd = online.update_many(
        [
            (None, t1, {"load": 1.0, "temp": 1.0}),  # no key
            ("d", t1, {"load": object(), "temp": 1.0}),  # not a number
            ("e", t1, {"load": np.float32(2.5), "temp": np.int64(3)}),  # numpy scalars are fine
        ]
    )
    assert [getattr(r, "reason", "ok") for r in odd] == ["null_key", "wrong_type", "ok"]
    assert "key" in odd[0].detail and "object" in odd[1].detail  # type: ignore[union-attr]
    more = online.update_many(
        [
            (5, t1, {"load": 1.0, "temp": 1.0}),  # keys are strings
            ("g", t1),  # not (key, ts, values)
            ("h", t1, {"load": float("nan"), "temp": 1.0}),  # NaN: a missing value
        ]
    )
    assert [getattr(r, "reason", "ok") for r in more] == [
        "bad_key", "wrong_type", "missing_feature",
    ]  # fmt: skip
    with pytest.raises(sl.ConfigError, match="keys are strings"):
        online.latest(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="update_frame"):
        online.update_many(pd.DataFrame({"x": [1]}))  # type: ignore[arg-type]
    filling = lstm.online(missing="ffill")
    filling.update("h", t0, {"load": 2.0, "temp": 1.0})
    carried = filling.update("h", t1, {"load": float("nan"), "temp": 1.0})
    assert carried.ts > 0
    dropping = lstm.online(late="drop")
    dropping.update("a", t0, {"load": 1.0, "temp": 1.0})
    earlier = t0 - pd.Timedelta(hours=1)
    assert dropping.update_many([("a", earlier, {"load": 1.0, "temp": 1.0})]) == [None]
    inf = online.update_many([("f", t1, {"load": float("inf"), "temp": 1.0})])
    assert inf[0].reason == "non_finite_value"  # type: ignore[union-attr]
    online.close()
    online.close()  # again: nothing
    with pytest.raises(sl.ConfigError, match="closed"):
        online.update("z", t1, {"load": 1.0, "temp": 1.0})
    with pytest.raises(sl.ConfigError, match="late must be"):
        lstm.online(late="keep")
    with pytest.raises(sl.ConfigError, match="store must be"):
        lstm.online(store="postgres://x")


def test_import_is_light() -> None:
    """``import stream_lstm`` (and the CLI's --help) must not load torch; the API names load
    on first use."""
    code = (
        "import sys, stream_lstm as sl; assert 'torch' not in sys.modules; "
        "assert sorted(sl.__all__) == sorted(set(sl.__all__)); "
        "f = sl.fit; assert 'torch' in sys.modules; print(sl.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == sl.__version__


def test_online_time_units_and_string_times(lstm: sl.Model, frame: pd.DataFrame) -> None:
    """Epoch seconds with time_unit="s", and ISO strings in a frame, give predict's forecasts
    (update_frame orders the rows by their parsed times)."""
    ref = lstm.online().update_frame(frame)
    secs = frame.assign(when=(frame["when"] - EPOCH) // pd.Timedelta(1, "s"))
    by_s = lstm.online(time_unit="s").update_frame(secs)
    iso = frame.assign(when=frame["when"].dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"))
    by_iso = lstm.online().update_frame(iso)
    for a, b, c in zip(ref, by_s, by_iso, strict=True):
        assert isinstance(a, sl.Forecast) and isinstance(b, sl.Forecast)
        assert isinstance(c, sl.Forecast)
        assert a.ts == b.ts == c.ts
        np.testing.assert_array_equal(a.forecast["load"], b.forecast["load"])
        np.testing.assert_array_equal(a.forecast["load"], c.forecast["load"])
    one = lstm.online(time_unit="s").update("z", 1_709_251_200, {"load": 1.0, "temp": 2.0})
    assert one.time == pd.Timestamp("2024-03-01T00:00:00Z")


class FailingStore(MemoryStore):
    """The contract's error (5): the store cannot be reached."""

    def load(self, keys):  # type: ignore[no-untyped-def]
        if self.fail:
            raise StateError("Redis at redis://x: connection refused")
        return super().load(keys)

    fail = False


def test_a_forecaster_whose_store_failed_refuses_further_use(lstm: sl.Model) -> None:
    online = lstm.online()
    store = FailingStore(online.store.layout)  # type: ignore[attr-defined]
    online = lstm.online(store=store)
    t0 = pd.Timestamp("2024-03-01T00:00:00Z")
    online.update("a", t0, {"load": 1.0, "temp": 1.0})
    store.fail = True
    with pytest.raises(StateError, match="connection refused"):
        online.update("new-key", t0, {"load": 1.0, "temp": 1.0})
    store.fail = False
    with pytest.raises(StateError, match=r"failed earlier.*make a new one"):
        online.update("a", t0 + pd.Timedelta(hours=1), {"load": 1.0, "temp": 1.0})
    online.close()  # closes without writing what may be half applied
    again = lstm.online(store=store)
    assert again.update("a", t0 + pd.Timedelta(hours=1), {"load": 1.0, "temp": 1.0}).key == "a"


def test_column_names_need_not_be_identifiers(frame: pd.DataFrame) -> None:
    """Names with spaces, units and dashes train, predict and run online (the worker's decoder
    maps them to its own field names)."""
    odd = frame.rename(
        columns={"sensor": "mètre id", "when": "när tid", "load": "load kW", "temp": "temp °C"}
    ).head(600)
    m = sl.fit(
        odd, time="när tid", targets="load kW", features=["load kW", "temp °C"], key="mètre id",
        norm="offset", **TINY,
    )  # fmt: skip
    ref = m.predict(odd)
    assert list(ref.columns[:2]) == ["mètre id", "när tid"]
    got = m.online().update_frame(odd)
    by = ref.set_index(["mètre id", "när tid", "h"])["value"]
    for row, f in zip(odd.itertuples(index=False), got, strict=True):
        assert isinstance(f, sl.Forecast)
        exp = by.loc[(row[0], row[1])].sort_index().to_numpy()
        np.testing.assert_allclose(f.forecast["load kW"], exp, rtol=1e-5, atol=1e-5)


def test_more_mistakes_get_clear_errors(
    lstm: sl.Model, frame: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(sl.ConfigError, match="quantiles"):
        sl.fit(
            frame, time="when", targets="load", key="sensor", quantiles=(0.5, 1.5),
            loss="pinball", **TINY,
        )  # fmt: skip
    with pytest.raises(sl.ConfigError, match="path"):
        sl.load(None)  # type: ignore[arg-type]
    with pytest.raises(sl.ConfigError, match="path"):
        sl.load("")
    for bad in ({"epochs": "3"}, {"lr": -1.0}, {"repair": {"bogus": 1}}, {"hidden_size": 1.5}):
        with pytest.raises(sl.ConfigError):
            sl.fit(frame, time="when", targets="load", key="sensor", **{**TINY, **bad})
    with pytest.raises(sl.ConfigError, match="distinct"):
        sl.fit(
            frame, time="when", targets="load", key="sensor", quantiles=(0.5, 0.5),
            loss="pinball", **TINY,
        )  # fmt: skip
    with pytest.raises(sl.ConfigError, match="device"):
        lstm.online(device="cuda:7")  # no such device here (CI has no GPU)
    lstm.predict(frame.head(50))  # the model is untouched by the refused device
    with pytest.raises(sl.ConfigError, match="flush_interval_s"):
        lstm.online(flush_interval_s="1")  # type: ignore[arg-type]
    with pytest.raises(sl.ConfigError, match="store must be"):
        lstm.online(store=5)  # type: ignore[arg-type]
    with pytest.raises(sl.ConfigError, match="batch"):
        lstm.online().update_frame(frame, batch=0)
    with pytest.raises(TypeError, match="DataFrame"):
        lstm.online().update_frame(None)  # type: ignore[arg-type]
    assert sl.StateError.__name__ == "StateError"
    with pytest.raises(sl.ConfigError, match="missing must be"):
        lstm.predict(frame, missing="bogus")
    secs = frame.assign(when=(frame["when"] - EPOCH) // pd.Timedelta(1, "s"))
    with caplog.at_level("WARNING"):
        lstm.predict(secs)  # epoch seconds read as milliseconds: 1970
    assert "time_unit='s'" in caplog.text
