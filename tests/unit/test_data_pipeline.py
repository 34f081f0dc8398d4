"""Loading and validation, gaps, anomaly repair, splits, windows, calendar encodings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stream_lstm.data.anomalies import RepairRule, flag_anomalies, repair_frame, repair_series
from stream_lstm.data.calendar import calendar_features
from stream_lstm.data.loading import LoadReport, load_frame, regularize
from stream_lstm.data.names import KEY, SEGMENT, TS, SeriesSpec
from stream_lstm.data.splits import split_points
from stream_lstm.data.windows import horizon_targets, sliding_windows
from stream_lstm.errors import DataError

H = 3_600_000


def write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(("n", "T"), [(10, 1), (10, 3), (10, 10), (5, 7), (100, 24)])
def test_window_count_and_shape(n: int, T: int) -> None:
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    w = sliding_windows(x, T)
    assert w.shape == (max(n - T + 1, 0), T, 3)
    if len(w):
        np.testing.assert_array_equal(w[0], x[:T])
        np.testing.assert_array_equal(w[-1], x[n - T :])


def test_horizon_targets_shift_and_pad() -> None:
    y = np.arange(5, dtype=np.float32)[:, None]
    t = horizon_targets(y, 3)
    assert t.shape == (5, 3, 1)
    np.testing.assert_array_equal(t[0, :, 0], [1, 2, 3])
    assert np.isnan(t[3, 1:, 0]).all() and t[3, 0, 0] == 4
    assert np.isnan(t[4]).all()


def test_load_reports_duplicates_and_interval(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "id,time,x\na,2024-01-01T00:00:00Z,1\na,2024-01-01T01:00:00Z,2\n"
        "a,2024-01-01T01:00:00Z,9\nb,2024-01-01T00:00:00Z,5\nb,2024-01-01T01:00:00Z,6\n",
    )
    df, rep = load_frame(p, SeriesSpec("time", ("x",), ("x",), "id"))
    assert rep.duplicates_dropped == 1
    assert rep.interval_ms == H
    assert rep.keys == 2
    assert df[df[KEY] == "a"]["x"].tolist() == [1.0, 2.0]  # the first duplicate is kept


def test_non_numeric_value_names_column_and_row(tmp_path: Path) -> None:
    p = write(tmp_path, "time,x\n2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00Z,oops\n")
    with pytest.raises(DataError, match=r"column 'x' has a non-numeric value 'oops' at data row 2"):
        load_frame(p, SeriesSpec("time", ("x",), ("x",)))


def test_bad_time_and_missing_column(tmp_path: Path) -> None:
    p = write(tmp_path, "time,x\nnot-a-time,1\n")
    with pytest.raises(
        DataError, match=r"column 'time' has an unparseable time 'not-a-time' at data row 1"
    ):
        load_frame(p, SeriesSpec("time", ("x",), ("x",)))
    with pytest.raises(
        DataError, match=r"column\(s\) \['y'\] not found; the file has \['time', 'x'\]"
    ):
        load_frame(p, SeriesSpec("time", ("x",), ("y",)))
    with pytest.raises(DataError, match="does not exist"):
        load_frame(tmp_path / "nope.csv", SeriesSpec("time", ("x",), ("x",)))
    with pytest.raises(DataError, match="unsupported file type"):
        load_frame(write(tmp_path, "", "d.json"), SeriesSpec("time", ("x",), ("x",)))


def test_regularize_fills_short_gaps_and_splits_long_ones() -> None:
    ts = [0, 1, 2, 4, 5, 20, 21, 22]  # a 1-step gap (3) and a 14-step gap (6..19)
    df = pd.DataFrame({KEY: "k", TS: np.array(ts) * H, "x": [float(t) for t in ts]})
    rep = LoadReport()
    out = regularize(df, H, ["x"], fill="interpolate", max_gap=3, report=rep)
    assert rep.irregular_gaps == 2
    assert rep.rows_filled == 1
    assert rep.segments == 2
    assert out[out[TS] == 3 * H]["x"].item() == pytest.approx(3.0)  # interpolated
    assert not (out[TS] == 10 * H).any()  # the long gap is not invented
    assert out[SEGMENT].nunique() == 2


def test_anomaly_is_replaced_by_neighbour_mean() -> None:
    rng = np.random.default_rng(0)
    x = 10 + np.sin(np.arange(200) / 5) + rng.normal(0, 0.05, 200)
    x[100] = 80.0
    flags = flag_anomalies(x, RepairRule())
    assert flags[100] and flags.sum() == 1
    fixed = repair_series(x, flags)
    assert fixed[100] == pytest.approx((x[99] + x[101]) / 2)
    df = pd.DataFrame({"g": "a", "x": x})
    # repair_frame also returns the repaired rows (without interval_ms: the rolling rule)
    _, counts, repairs = repair_frame(df, ["x"], RepairRule(), "g")
    assert counts == {"x": 1}
    assert repairs[["ts", "column", "old"]].values.tolist() == [[100, "x", 80.0]]
    _, off, none = repair_frame(df, ["x"], RepairRule(enabled=False), "g")
    assert off == {"x": 0} and none.empty


def test_split_is_chronological_and_global() -> None:
    df = pd.DataFrame({KEY: ["a"] * 10 + ["b"] * 10, TS: np.r_[np.arange(10), np.arange(10)] * H})
    pts = split_points(df, fractions=(0.6, 0.2, 0.2))
    labels = pts.label(df[TS].to_numpy())
    for key in ("a", "b"):
        lab = labels[(df[KEY] == key).to_numpy()]
        order = {"train": 0, "val": 1, "test": 2}
        assert [order[x] for x in lab] == sorted(order[x] for x in lab)
    with pytest.raises(DataError, match="must be three positive numbers"):
        split_points(df, fractions=(0.5, 0.5, 0.5))
    pts2 = split_points(df, dates=("1970-01-01T05:00:00Z", "1970-01-01T08:00:00Z"))
    assert pts2.val_start == 5 * H and pts2.test_start == 8 * H


def test_calendar_features_known_points() -> None:
    monday_midnight = 1_704_067_200_000  # 2024-01-01T00:00Z, a Monday
    f = calendar_features(
        np.array([monday_midnight, monday_midnight + 6 * H]), ("day", "week"), "UTC"
    )
    np.testing.assert_allclose(f[0], [0, 1, 0, 1], atol=1e-6)  # midnight, start of the week
    np.testing.assert_allclose(f[1, :2], [1, 0], atol=1e-6)  # 06:00 is a quarter of the day
    # a zone shifts the wall clock: 00:00Z is 11:00 in Melbourne (UTC+11 in January)
    mel = calendar_features(np.array([monday_midnight]), ("day",), "Australia/Melbourne")
    angle = 2 * np.pi * 11 / 24
    np.testing.assert_allclose(mel[0], [np.sin(angle), np.cos(angle)], atol=1e-6)


def test_calendar_features_follow_daylight_saving_over_long_spans() -> None:
    # two years of half hours: both ends in summer time, the winters in between are not
    ts = 1_419_984_000_000 + np.arange(2 * 365 * 48) * 1_800_000  # from 2014-12-31
    got = calendar_features(ts, ("day", "week", "year"), "Australia/Melbourne")
    local = pd.to_datetime(ts, unit="ms", utc=True).tz_convert("Australia/Melbourne")
    frac = (local.hour * 60 + local.minute).to_numpy() / 1440
    dow = local.day_of_week.to_numpy()
    doy = local.day_of_year.to_numpy() - 1
    angles = 2 * np.pi * np.stack([frac, (dow + frac) / 7, (doy + frac) / 365.25], 1)
    ref = np.stack([np.sin(angles[:, 0]), np.cos(angles[:, 0]), np.sin(angles[:, 1]),
                    np.cos(angles[:, 1]), np.sin(angles[:, 2]), np.cos(angles[:, 2])], 1)  # fmt: skip
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_parquet_and_csv_load_the_same(tmp_path: Path) -> None:
    from stream_lstm.data.synthetic import synthetic_frame

    df = synthetic_frame(keys=2, rows=30, features=2, seed=4)
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    spec = SeriesSpec("ts", ("f0", "f1"), ("f0",), "key")
    a, ra = load_frame(tmp_path / "d.csv", spec)
    b, rb = load_frame(tmp_path / "d.parquet", spec)
    pd.testing.assert_frame_equal(a, b)
    assert ra.interval_ms == rb.interval_ms == H
