"""Offline forecasts for every row of a file: the reference the streaming parity test uses.

For each row, the forecast the stream worker publishes after consuming that row, with each
key's state carried from its first row in the file. Rows the worker would not apply get no
forecast: a duplicate (key, time) after the first, and a row with a missing feature value
(the worker dead-letters both) — unless ``missing="ffill"``, where a missing value takes the
key's previous one, as ``worker --missing ffill`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from stream_lstm.data.loading import load_frame
from stream_lstm.data.names import KEY, TS, SeriesSpec
from stream_lstm.errors import DataError
from stream_lstm.model.runtime import Forecaster
from stream_lstm.training.evaluate import stream_rows


def predict_frame(fc: Forecaster, frame: pd.DataFrame, missing: str = "dlq") -> pd.DataFrame:
    """Long form ``key, ts, target, h, value`` (+ ``quantile``), original units.

    ``ts`` is the event time (UTC); ``h`` runs 1..H. Deterministic: the same artifact and file
    give the same numbers.
    """
    cfg = fc.config
    rows = stream_rows(frame, list(cfg.features), missing)
    y_std = fc.forecast_frame(rows)  # [N, H, n_t, n_q]
    y = fc.to_original(y_std, rows[KEY].tolist())  # [N, H, n_t, n_q]
    N, H, n_t, n_q = y.shape
    reps = H * n_t * n_q
    grid_h, grid_t, grid_q = np.meshgrid(
        np.arange(1, H + 1), np.arange(n_t), np.arange(n_q), indexing="ij"
    )
    out = pd.DataFrame(
        {
            "key": np.repeat(rows[KEY].to_numpy(), reps),
            "ts": pd.to_datetime(np.repeat(rows[TS].to_numpy(), reps), unit="ms", utc=True),
            "target": np.tile(np.asarray(cfg.targets, dtype=object)[grid_t.ravel()], N),
            "h": np.tile(grid_h.ravel(), N).astype(np.int32),
        }
    )
    if cfg.quantiles:
        out["quantile"] = np.tile(np.asarray(cfg.quantiles)[grid_q.ravel()], N)
    out["value"] = y.reshape(-1)
    return out


def predict_file(
    fc: Forecaster, path: Path, spec: SeriesSpec, out: Path, missing: str = "dlq"
) -> pd.DataFrame:
    frame, _ = load_frame(path, spec)
    result = predict_frame(fc, frame, missing)
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix in {".parquet", ".pq"}:
        result.to_parquet(out, index=False)
    elif suffix == ".csv":
        result.to_csv(out, index=False, float_format="%.9g")
    else:
        raise DataError(f"--out must end in .csv or .parquet, got {out.name}")
    return result
