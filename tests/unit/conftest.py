"""Fixtures for fast tests: a synthetic CSV and a tiny trained model (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_lstm.data.names import SeriesSpec
from stream_lstm.data.synthetic import synthetic_frame
from stream_lstm.training.train import TrainOptions, train

SPEC = SeriesSpec(time_col="ts", features=("f0", "f1"), targets=("f0",), key_col="key")


@pytest.fixture(scope="session")
def synth_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    synthetic_frame(keys=3, rows=600, features=2, seed=1).to_csv(path, index=False)
    return path


def tiny_options(**kw: object) -> TrainOptions:
    base: dict[str, object] = dict(
        time_step=12, horizon=6, hidden_size=16, epochs=20, progress=False, batch_size=8
    )
    # one normalisation, the one `--norm auto` prefers (auto's selection has its own tests):
    # every parity test runs through it
    base["norm"] = "offset" if kw.get("kind", "lstm") == "lstm" else "revin"
    base.update(kw)
    return TrainOptions(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, synth_csv: Path) -> Path:
    out = tmp_path_factory.mktemp("model") / "lstm"
    train(synth_csv, SPEC, tiny_options(), out)
    return out


@pytest.fixture(scope="session")
def tiny_cnn_model(tmp_path_factory: pytest.TempPathFactory, synth_csv: Path) -> Path:
    out = tmp_path_factory.mktemp("model") / "cnn"
    train(synth_csv, SPEC, tiny_options(kind="cnn-lstm-attn", max_windows=512), out)
    return out


@pytest.fixture(scope="session")
def tiny_model_levels(tmp_path_factory: pytest.TempPathFactory, synth_csv: Path) -> Path:
    """The tiny lstm with ``--norm none``: forecasts from the training range, not anchored to
    the last value (an excursion stays far from them for as long as it lasts)."""
    out = tmp_path_factory.mktemp("model") / "lstm-none"
    train(synth_csv, SPEC, tiny_options(norm="none"), out)
    return out
