"""Issue 17: normalisation that follows drift, model search, repaired rows in the artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import KEY, TS
from stream_lstm.errors import ConfigError
from stream_lstm.model.artifact import Artifact, build_module, load_artifact
from stream_lstm.model.cnn_lstm_attn import CNNLSTMAttention
from stream_lstm.model.runtime import Forecaster
from stream_lstm.model.scaling import Scaler
from stream_lstm.model.spec import ModelConfig
from stream_lstm.training.predict import predict_frame
from stream_lstm.training.train import REPAIRS_FILE, candidates, train
from tests.unit.conftest import SPEC, tiny_options


def _forecaster(kind: str, norm: str, seed: int = 0) -> Forecaster:
    """An untrained (random) model over features f0, f1, target f0, global scaling."""
    cfg = ModelConfig(
        kind=kind,  # type: ignore[arg-type]
        features=["f0", "f1"],
        targets=["f0"],
        time_step=8,
        horizon=3,
        interval_ms=60_000,
        hidden_size=8,
        num_layers=1,
        dropout=0.0,
        norm=norm,  # type: ignore[arg-type]
    )
    scaler = Scaler(["f0", "f1"], "global", np.array([10.0, -2.0]), np.array([3.0, 0.5]))
    torch.manual_seed(seed)
    module = build_module(cfg)
    if norm == "revin":  # move the affine map away from identity: it must invert too
        assert isinstance(module, CNNLSTMAttention)
        assert module.revin_weight is not None and module.revin_bias is not None
        with torch.no_grad():
            module.revin_weight.uniform_(0.5, 1.5)
            module.revin_bias.uniform_(-0.5, 0.5)
    return Forecaster(Artifact(cfg, scaler, module, "test"))


def _frame(level: float = 0.0, dt: int = 60_000) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 40
    return pd.DataFrame(
        {
            KEY: ["k"] * n,
            TS: np.arange(n, dtype=np.int64) * dt,
            "f0": 10 + 3 * np.sin(np.arange(n) / 4) + rng.normal(0, 0.3, n) + level,
            "f1": -2 + rng.normal(0, 0.5, n),
        }
    )


@pytest.mark.parametrize(("kind", "norm"), [("lstm", "diff"), ("cnn-lstm-attn", "revin")])
def test_a_level_shift_moves_the_forecasts_by_the_same_amount(kind: str, norm: str) -> None:
    """The property the normalisation exists for: a key whose target sits 500 units higher than
    anything seen in training gets the same forecasts, 500 higher (for the windowed kind once
    its window holds no zero context rows)."""
    fc = _forecaster(kind, norm)
    base = fc.to_original(fc.forecast_frame(_frame()), ["k"] * 40)[..., 0]
    moved = fc.to_original(fc.forecast_frame(_frame(level=500.0)), ["k"] * 40)[..., 0]
    skip = 0 if kind == "lstm" else 8  # windows still holding the zero context at the start
    np.testing.assert_allclose(moved[skip:], base[skip:] + 500.0, atol=2e-3)


@pytest.mark.parametrize(("kind", "norm"), [("lstm", "none"), ("cnn-lstm-attn", "none")])
def test_without_the_normalisation_a_level_shift_is_not_followed(kind: str, norm: str) -> None:
    """The same check fails without it (so the test above can fail)."""
    fc = _forecaster(kind, norm)
    base = fc.to_original(fc.forecast_frame(_frame()), ["k"] * 40)[..., 0]
    moved = fc.to_original(fc.forecast_frame(_frame(level=500.0)), ["k"] * 40)[..., 0]
    assert np.abs(moved[8:] - base[8:] - 500.0).max() > 100


def test_offset_forecasts_stay_anchored_to_a_moved_level() -> None:
    """``offset`` reads the levels too (so a moved level changes the offsets), but the forecast
    stays an offset from the event's value: within a few of the scale's units of the moved
    level, where ``none`` answers from the training range, 500 units away."""
    fc = _forecaster("lstm", "offset")
    base = fc.to_original(fc.forecast_frame(_frame()), ["k"] * 40)[..., 0]
    moved = fc.to_original(fc.forecast_frame(_frame(level=500.0)), ["k"] * 40)[..., 0]
    drift = np.abs(moved - base - 500.0)
    assert drift.max() < 0.1 * 500  # an offset the head can give: a few standard deviations
    assert not np.allclose(moved, base + 500.0, atol=1e-3)  # not invariant: it reads levels


def test_diff_inputs_are_changes_since_the_previous_row_and_zero_at_the_first() -> None:
    fc = _forecaster("lstm", "diff")
    v = np.array([[13.0, -2.0], [16.0, -1.0], [10.0, -1.5]])
    prev = np.array([[np.nan, np.nan], [13.0, -2.0], [16.0, -1.0]])
    x = fc.inputs(v, np.zeros(3, np.int64), ["k"] * 3, prev)
    np.testing.assert_allclose(x[:, :2], [[1, 0], [2, 2], [0, 1]], atol=1e-6)  # scaled levels
    np.testing.assert_allclose(x[:, 2:4], [[0, 0], [1, 2], [-2, -1]], atol=1e-6)  # changes
    with pytest.raises(ValueError, match="previous values"):
        fc.inputs(v, np.zeros(3, np.int64), ["k"] * 3)


def test_norm_must_suit_the_kind() -> None:
    with pytest.raises(ConfigError, match="revin is for windowed"):
        tiny_options(norm="revin").check()
    with pytest.raises(ConfigError, match="diff is for the stateful"):
        tiny_options(kind="cnn-lstm-attn", norm="diff").check()
    assert tiny_options(norm="auto").resolved_norm == "offset"
    assert tiny_options(kind="cnn-lstm-attn", norm="auto").resolved_norm == "revin"
    with pytest.raises(ValueError, match="revin"):
        ModelConfig(features=["a"], targets=["a"], time_step=2, horizon=1, interval_ms=1,
                    norm="revin")  # fmt: skip


def test_an_artifact_without_a_norm_loads_as_before(tiny_model: Path, tmp_path: Path) -> None:
    """config.json written before issue 17 has no ``norm``: it means none, and loads."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_model, old)
    doc = json.loads((old / "config.json").read_text())
    assert doc["norm"] == "offset"
    del doc["norm"]
    cfg = ModelConfig(**doc)
    assert cfg.norm == "none" and cfg.input_size == 2 + 2 * len(cfg.calendar)


def test_the_trained_artifact_records_norm_and_repairs(tiny_model: Path) -> None:
    metrics = json.loads((tiny_model / "metrics.json").read_text())
    assert metrics["model"]["norm"] == "offset"
    assert "search" not in metrics  # one normalisation given: nothing to select
    assert metrics["data"]["repairs_file"] == REPAIRS_FILE
    repairs = pd.read_csv(tiny_model / REPAIRS_FILE)
    assert list(repairs.columns) == ["key", "ts", "column", "old", "new", "filled"]
    assert len(repairs) == sum(metrics["data"]["anomalies_repaired"].values())
    assert "linear" in metrics["evaluation"]["scores"]


def test_repaired_rows_are_written_with_their_old_and_new_values(
    synth_csv: Path, tmp_path: Path
) -> None:
    df = pd.read_csv(synth_csv)
    hit = df.index[(df["key"] == "k1")][300]
    df.loc[hit, "f0"] = df["f0"].abs().max() * 50  # one spike, far outside the pattern
    path = tmp_path / "spiked.csv"
    df.to_csv(path, index=False)
    out = tmp_path / "m"
    train(path, SPEC, tiny_options(epochs=1), out)
    repairs = pd.read_csv(out / REPAIRS_FILE)
    row = repairs[(repairs["key"] == "k1") & (repairs["column"] == "f0")]
    frame, _ = load_frame(path, SPEC)
    ts = frame[(frame[KEY] == "k1")][TS].to_numpy()[300]
    spike = row[row["ts"] == ts]
    assert len(spike) == 1
    assert spike["old"].iloc[0] == pytest.approx(df.loc[hit, "f0"])
    assert abs(spike["new"].iloc[0]) < df["f0"].abs().max() * 2


def test_norm_auto_trains_both_and_keeps_the_better_on_validation(
    synth_csv: Path, tmp_path: Path
) -> None:
    opts = tiny_options(epochs=3, norm="auto")
    assert [n for n, _ in candidates(opts)] == ["norm offset", "norm none"]
    _, metrics = train(synth_csv, SPEC, opts, tmp_path / "auto")
    cands = metrics["search"]["candidates"]
    best = min(cands, key=lambda c: c["val_mse"])
    assert metrics["model"]["norm"] == best["norm"] and best["chosen"]
    assert load_artifact(tmp_path / "auto").config.norm == best["norm"]


def test_search_keeps_the_best_candidate_on_validation(synth_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "searched"
    opts = tiny_options(epochs=3, search=True, norm="auto")
    artifact, metrics = train(synth_csv, SPEC, opts, out)
    cands = metrics["search"]["candidates"]
    assert [c["name"] for c in cands] == [n for n, _ in candidates(opts)]
    assert len(cands) == 5
    scored = [c for c in cands if "val_mse" in c]
    assert len(scored) == len(cands)  # no budget reached with a tiny model
    best = min(scored, key=lambda c: c["val_mse"])
    assert [c["name"] for c in cands if c.get("chosen")] == [best["name"]]
    cfg = load_artifact(out).config
    assert (cfg.norm, cfg.hidden_size, cfg.time_step) == (
        best["norm"], best["hidden_size"], best["time_step"],
    )  # fmt: skip
    # the saved model is the one scored: forecasts equal a fresh load's
    a = predict_frame(Forecaster(artifact), load_frame(synth_csv, SPEC)[0])
    b = predict_frame(Forecaster(load_artifact(out)), load_frame(synth_csv, SPEC)[0])
    pd.testing.assert_frame_equal(a, b)


def test_search_stops_starting_candidates_when_the_budget_is_spent(
    synth_csv: Path, tmp_path: Path
) -> None:
    opts = tiny_options(epochs=1, search=True, norm="auto", search_budget=1e-6)
    _, metrics = train(synth_csv, SPEC, opts, tmp_path / "m")
    cands = metrics["search"]["candidates"]
    assert "val_mse" in cands[0] and cands[0]["chosen"]
    assert all("budget" in c["skipped"] for c in cands[1:])


def test_train_cli_help_documents_norm_and_search(capsys: pytest.CaptureFixture[str]) -> None:
    from stream_lstm.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--norm", "--search", "--search-budget"):
        assert flag in out


# -- what the outside trial found ----------------------------------------------------------------
def test_auto_selection_reports_a_settings_error_as_one(synth_csv: Path, tmp_path: Path) -> None:
    """--norm auto trains candidates; a mistake common to all is the user's error, not an
    AssertionError after every candidate was skipped."""
    from stream_lstm.data.names import SeriesSpec
    from stream_lstm.errors import DataError

    bad = SeriesSpec("ts", ("zz",), ("f0",), "key")
    with pytest.raises((ConfigError, DataError)):
        train(synth_csv, bad, tiny_options(norm="auto", epochs=1), tmp_path / "m")


def test_log1p_of_a_column_with_negative_values_is_refused(tmp_path: Path) -> None:
    from stream_lstm.errors import DataError
    from stream_lstm.training.train import prepare

    df = _frame(level=-100.0)
    path = tmp_path / "neg.csv"
    df.to_csv(path, index=False)
    spec = SPEC.__class__("ts", ("f0", "f1"), ("f0",), "key")
    with pytest.raises(DataError, match="negative values"):
        prepare(path, spec, tiny_options(log1p=("f0",)))


def test_evaluate_refuses_a_season_below_one_and_an_empty_score(tiny_model: Path) -> None:
    from stream_lstm.errors import DataError
    from stream_lstm.training.evaluate import evaluate

    fc = Forecaster(load_artifact(tiny_model))
    frame = _frame(dt=fc.config.interval_ms)
    with pytest.raises(DataError, match="season must be"):
        evaluate(fc, frame, None, "all", season=0)
    with pytest.raises(DataError, match="nothing to score"):
        evaluate(fc, frame, None, "all", season=10_000)


def test_ffill_scores_against_the_values_the_file_holds(tiny_model: Path) -> None:
    """A target value --missing ffill carried forward is an input, never an actual."""
    from stream_lstm.training.evaluate import evaluate

    fc = Forecaster(load_artifact(tiny_model))
    full = _frame(dt=fc.config.interval_ms)
    holes = full.copy()
    holes.loc[[20, 21, 22], "f0"] = np.nan
    a = evaluate(fc, full, None, "all", season=1, missing="ffill")
    b = evaluate(fc, holes, None, "all", season=1, missing="ffill")
    n_a = a.scores["model"]["original"]["count"]
    n_b = b.scores["model"]["original"]["count"]
    # each hole is the actual of up to H origins, and no longer a persistence origin itself
    assert n_b < n_a - 3


def test_daily_data_is_judged_against_the_week() -> None:
    from stream_lstm.data.anomalies import DAY_MS, RepairRule, infer_season, repair_frame

    assert infer_season(DAY_MS, RepairRule()) == 7
    n = 700
    x = np.where(np.arange(n) % 7 == 5, 300.0, 100.0) + np.random.default_rng(0).normal(0, 5, n)
    x[[100, 400]] += 2000.0  # two real spikes
    df = pd.DataFrame({"seg": 0, "k": "a", "t": np.arange(n) * DAY_MS, "v": x})
    _, _, repairs = repair_frame(
        df, ["v"], RepairRule(), "seg", interval_ms=DAY_MS, ts_col="t", key_col="k"
    )
    days = set((repairs["ts"] // DAY_MS).tolist())
    assert {100, 400} <= days and len(days) <= 4
    assert not any(d % 7 == 5 for d in days)  # the weekly peaks stay (the rolling rule: ~100)


def test_repairs_mark_rows_the_gap_fill_added(synth_csv: Path, tmp_path: Path) -> None:
    df = pd.read_csv(synth_csv)
    k1 = df.index[df["key"] == "k1"]
    df.loc[k1[300], "f0"] = df["f0"].abs().max() * 50
    df = df.drop(index=k1[297:300])  # three rows missing just before the spike: filled
    path = tmp_path / "gap.csv"
    df.to_csv(path, index=False)
    train(path, SPEC, tiny_options(epochs=1), tmp_path / "m")
    repairs = pd.read_csv(tmp_path / "m" / REPAIRS_FILE)
    assert "filled" in repairs.columns
    frame, _ = load_frame(path, SPEC)
    given = set(zip(frame[KEY].astype(str), frame[TS], strict=True))
    for row in repairs.itertuples():
        assert row.filled == ((str(row.key), row.ts) not in given)
    assert not repairs[~repairs["filled"]].empty
