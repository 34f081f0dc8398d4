"""The linear (NLinear) baseline, per-target metrics and the flags of `evaluate`, on hand-built
(untrained) models and synthetic series whose future is a linear function of their past."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from stream_lstm.commands._scores import print_scores
from stream_lstm.data.names import KEY, TS
from stream_lstm.data.splits import SplitPoints
from stream_lstm.model.artifact import Artifact, build_module
from stream_lstm.model.runtime import Forecaster
from stream_lstm.model.scaling import Scaler
from stream_lstm.model.spec import ModelConfig
from stream_lstm.training.evaluate import (
    METHODS,
    EvalResult,
    baseline_flags,
    evaluate,
    key_windows,
    linear_baseline,
    lookup,
    stream_rows,
)

HOUR = 3_600_000
START = 1_704_067_200_000
ROWS = 600  # per key; train: rows 0-399, val: 400-499, test: 500-599
T, H = 48, 12
POINTS = SplitPoints(val_start=START + 400 * HOUR, test_start=START + 500 * HOUR)


def series(targets: tuple[str, ...] = ("y",), keys: int = 2, noise: float = 0.01) -> pd.DataFrame:
    """Trend plus a daily sine (with a key- and target-specific phase, level and slope): each
    value is an exact linear function of the previous ones, which persistence cannot follow."""
    rng = np.random.default_rng(3)
    t = np.arange(ROWS)
    parts = []
    for k in range(keys):
        cols = {
            name: 10 * (k + 1)
            + (0.01 + 0.005 * j) * t
            + (2 + j) * np.sin(2 * np.pi * t / 24 + k + 2 * j)
            + rng.normal(0, noise, ROWS)
            for j, name in enumerate(targets)
        }
        parts.append(pd.DataFrame({KEY: f"k{k}", TS: START + t * HOUR, **cols}))
    return pd.concat(parts, ignore_index=True)


def untrained(frame: pd.DataFrame, targets: tuple[str, ...] = ("y",)) -> Forecaster:
    """A model with random weights (its forecasts are noise around the mean), scaled on the
    training span as `train` would."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        features=list(targets),
        targets=list(targets),
        time_step=T,
        horizon=H,
        interval_ms=HOUR,
        hidden_size=4,
        num_layers=1,
        dropout=0.0,
    )
    scaler = Scaler.fit(frame[frame[TS] < POINTS.val_start], list(targets), "global", KEY)
    return Forecaster(Artifact(cfg, scaler, build_module(cfg), version="hand-built"))


def test_methods_are_the_model_then_the_three_baselines() -> None:
    assert METHODS == ("model", "linear", "seasonal_naive", "persistence")


def test_key_windows_pad_each_key_with_its_first_value() -> None:
    rows = pd.DataFrame({KEY: ["a", "a", "a", "b", "b"]})
    v = np.array([[1.0], [2.0], [3.0], [7.0], [8.0]])
    w = key_windows(v, rows, 3)
    assert w.shape == (5, 1, 3)
    assert w[:, 0].tolist() == [[1, 1, 1], [1, 1, 2], [1, 2, 3], [7, 7, 7], [7, 7, 8]]


def test_linear_baseline_follows_a_linear_process_far_better_than_persistence() -> None:
    frame = series()
    result = evaluate(untrained(frame), frame, POINTS, "test")
    mse = {m: result.overall(m, "standardised")["mse"] for m in METHODS}
    assert mse["linear"] < 0.05 * mse["persistence"]
    assert mse["linear"] < mse["seasonal_naive"]  # the trend breaks seasonal naive
    assert result.overall("linear")["mae"] < 0.1  # original units; the noise is 0.01
    assert result.linear_fit["fit"] == "out-of-sample"
    assert result.linear_fit["span"] == "train+val"


@pytest.mark.parametrize(
    ("split", "per_key"),
    [
        # origins 0-487: their windows and all H actuals before the test span (row 500)
        ("test", 500 - H),
        # train origins 0-387 (actuals before row 400), and test origins whose window starts
        # after the validation span (row >= 500 + T - 1) and whose actuals exist (row <= 587)
        ("val", (400 - H) + (ROWS - H - (500 + T - 1))),
    ],
)
def test_linear_baseline_is_fitted_outside_the_scored_split(split: str, per_key: int) -> None:
    frame = series()
    result = evaluate(untrained(frame), frame, POINTS, split)
    fit = result.linear_fit
    assert fit["fit"] == "out-of-sample"
    assert fit["origins"] == fit["samples"] == fit["candidates"] == 2 * per_key
    if split == "test":
        assert fit["last_origin_ms"] + H * HOUR < POINTS.test_start


def test_linear_baseline_fit_does_not_see_the_scored_span() -> None:
    """Replace the test span by garbage: forecasts from origins outside it are unchanged."""
    frame = series()
    fc = untrained(frame)
    poisoned = frame.copy()
    late = poisoned[TS] >= POINTS.test_start
    poisoned.loc[late, "y"] = np.random.default_rng(0).normal(1e4, 1e3, int(late.sum()))

    def run(f: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
        rows = stream_rows(f, ["y"])
        ts = rows[TS].to_numpy()
        when = ts[:, None] + np.arange(1, H + 1)[None, :] * HOUR
        actual_std = fc.to_standard(lookup(rows, ["y"], when), rows[KEY].tolist())
        in_split = POINTS.mask(ts, "test")
        pred, info = linear_baseline(fc, rows, in_split, POINTS.mask(when, "test"), actual_std)
        return pred, in_split, info

    clean, in_split, info = run(frame)
    dirty, _, info_dirty = run(poisoned)
    assert info == info_dirty
    np.testing.assert_array_equal(clean[~in_split], dirty[~in_split])
    assert not np.allclose(clean[in_split], dirty[in_split])


def test_linear_baseline_subsamples_many_origins_deterministically(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stream_lstm.training.evaluate as ev

    monkeypatch.setattr(ev, "LINEAR_MAX_SAMPLES", 300)
    frame = series()
    fc = untrained(frame)
    first, second = (evaluate(fc, frame, POINTS, "test") for _ in range(2))
    fit = first.linear_fit
    assert fit["samples"] == 300 and fit["candidates"] == 2 * (500 - H)
    assert fit == second.linear_fit and first.scores["linear"] == second.scores["linear"]
    assert first.overall("linear")["mae"] < 0.1


def test_linear_baseline_falls_back_to_in_sample_without_other_rows() -> None:
    frame = series()
    result = evaluate(untrained(frame), frame, None, "all")
    assert result.linear_fit["fit"] == "in-sample"
    assert result.linear_fit["origins"] == 2 * (ROWS - H)
    assert "span" not in result.linear_fit
    assert result.overall("linear")["mae"] < 0.1


def test_per_target_metrics_pool_to_the_overall_ones() -> None:
    targets = ("y", "z")
    frame = series(targets)
    result = evaluate(untrained(frame, targets), frame, POINTS, "test")
    for method in METHODS:
        for scale in ("original", "standardised"):
            entry = result.scores[method][scale]
            per = entry["per_target"]
            assert set(per) == set(targets)
            counts = np.array([per[t]["count"] for t in targets])
            assert counts.sum() == entry["count"] and counts.min() > 0
            for metric in ("mse", "mae", "smape"):
                pooled = sum(per[t][metric] * per[t]["count"] for t in targets) / counts.sum()
                assert pooled == pytest.approx(entry["overall"][metric], rel=1e-9)
            for t in targets:
                assert per[t]["rmse"] == pytest.approx(math.sqrt(per[t]["mse"]))
            assert set(entry["overall"]) == {"mse", "mae", "rmse", "smape"}
            assert set(entry["per_h"]) == {"mse", "mae", "rmse", "smape"}


def test_an_untrained_model_is_flagged_and_the_result_round_trips() -> None:
    targets = ("y", "z")
    frame = series(targets)
    result = evaluate(untrained(frame, targets), frame, POINTS, "test")
    linear = [f for f in result.flags if "the linear baseline" in f]
    assert [f.split(" (")[0] for f in linear] == [
        "model does not beat the linear baseline overall",
        "model does not beat the linear baseline on y",
        "model does not beat the linear baseline on z",
    ]
    assert "standardised MSE" in linear[1]
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["flags"] == result.flags and doc["linear_fit"] == result.linear_fit
    again = EvalResult(**doc)  # as `stream-lstm train` reloads it
    assert again.flags == result.flags and again.scores == result.scores
    console = Console(record=True, width=200)
    print_scores(console, again)
    text = console.export_text()
    assert "linear (NLinear)" in text and "per target" in text
    assert "fitted out-of-sample on" in text
    for flag in result.flags:
        assert flag in text


def test_an_older_result_without_the_new_fields_still_loads_and_prints() -> None:
    frame = series()
    doc = evaluate(untrained(frame), frame, POINTS, "test").to_json()
    for name in ("flags", "linear_fit"):
        del doc[name]
    del doc["scores"]["linear"]
    old = EvalResult(**doc)
    assert old.flags == [] and old.linear_fit == {}
    console = Console(record=True, width=200)
    print_scores(console, old)
    assert "persistence" in console.export_text()


def _scores(
    model: list[float], baseline: list[float], targets: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Only what the flags read: standardised MSE and counts, overall and per target."""

    def entry(mse: list[float]) -> dict[str, Any]:
        return {
            "count": 10 * len(mse),
            "overall": {"mse": float(np.mean(mse))},
            "per_target": {t: {"mse": v, "count": 10} for t, v in zip(targets, mse, strict=True)},
        }

    return {
        "model": {"standardised": entry(model)},
        **{m: {"standardised": entry(baseline)} for m in METHODS[1:]},
    }


def test_flags_name_each_target_the_model_does_not_beat() -> None:
    targets = ["Demand", "Price"]
    better = _scores([0.2, 0.3], [0.4, 0.5], targets)
    assert baseline_flags(better, targets) == []
    mixed = _scores([0.41, 0.3], [0.38, 0.5], targets)
    flags = baseline_flags(mixed, targets)
    assert (
        flags[0]
        == "model does not beat the linear baseline on Demand (standardised MSE 0.41 vs 0.38)"
    )
    assert len(flags) == 3  # Demand against each baseline; overall 0.355 < 0.44 is no flag
    assert {f.split(" on ")[0] for f in flags} == {
        "model does not beat the linear baseline",
        "model does not beat seasonal naive",
        "model does not beat persistence",
    }
    worse = _scores([0.5, 0.6], [0.4, 0.5], targets)
    flags = baseline_flags(worse, targets)
    assert len(flags) == 9 and flags[0].startswith(
        "model does not beat the linear baseline overall"
    )
    one = _scores([0.5], [0.5], ["y"])  # a tie is not a win; one target: no separate overall
    assert baseline_flags(one, ["y"]) == [
        f"model does not beat {b} on y (standardised MSE 0.5 vs 0.5)"
        for b in ("the linear baseline", "seasonal naive", "persistence")
    ]
