"""From raw rows to model inputs and from model outputs to values: shared by predict, evaluate
and the stream worker, so that offline and streaming forecasts are computed the same way.

Inputs per row: the features standardised with the training statistics, with ``norm="offset"``
or ``"diff"`` their change since the key's previous row (zero at a key's first row), then the
calendar encodings of the row's time. Outputs: ``[N, H, n_t, n_q]`` on the standardised target
scale; :meth:`Forecaster.to_original` maps them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from stream_lstm.data.calendar import calendar_features
from stream_lstm.data.names import KEY, TS
from stream_lstm.model.artifact import Artifact
from stream_lstm.model.cnn_lstm_attn import CNNLSTMAttention
from stream_lstm.model.lstm import LSTMForecaster

if TYPE_CHECKING:
    import pandas as pd


class Forecaster:
    """A loaded artifact ready to compute: input encoding, the module, output decoding."""

    def __init__(self, artifact: Artifact, device: str | torch.device = "cpu") -> None:
        self.artifact = artifact
        self.config = cfg = artifact.config
        self.version = artifact.version
        self.device = torch.device(device)
        self.module = artifact.module.to(self.device).eval()
        self.feature_scaler = artifact.scaler.subset(list(cfg.features))
        self.target_scaler = artifact.scaler.subset(list(cfg.targets))
        self.calendar = tuple(cfg.calendar)
        self.log_features = np.array([c in cfg.log1p for c in cfg.features])
        self.log_targets = np.array([c in cfg.log1p for c in cfg.targets])

    # -- encoding -------------------------------------------------------------------------
    def inputs(
        self,
        values: np.ndarray,
        ts_ms: np.ndarray,
        keys: Sequence[str] | np.ndarray,
        prev: np.ndarray | None = None,
    ) -> np.ndarray:
        """``values [N, F]`` raw features, ``ts_ms [N]`` → ``[N, I]`` float32 model inputs.

        ``prev [N, F]``: each row's key's previous raw values (NaN: none), needed by
        ``offset``/``diff`` models (:attr:`needs_previous`) and ignored by the others."""
        mean, std = self.feature_scaler.stats(keys)  # [N, F] each
        scaled = self._scaled(values, mean, std)  # [N, F]
        parts = [scaled]
        if self.needs_previous:
            if prev is None:
                raise ValueError(
                    f"a norm={self.config.norm!r} model needs each row's previous values"
                )
            change = scaled - self._scaled(prev, mean, std)  # [N, F], NaN where no previous
            parts.append(np.nan_to_num(change, nan=0.0))
        parts.append(calendar_features(ts_ms, self.calendar, self.config.timezone))  # [N, 2E]
        return np.concatenate(parts, axis=1)  # [N, I]

    @property
    def needs_previous(self) -> bool:
        """Whether :meth:`inputs` reads each row's previous values (``offset``, ``diff``)."""
        return self.config.reads_changes

    def _scaled(self, values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        v = values.astype(np.float32)
        if self.log_features.any():
            v[:, self.log_features] = np.log1p(np.maximum(v[:, self.log_features], 0))
        return (v - mean) / std

    def to_original(self, y: np.ndarray, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """``[N, H, n_t, n_q]`` standardised → original target units."""
        mean, std = self.target_scaler.stats(keys)  # [N, n_t]
        out = y * std[:, None, :, None] + mean[:, None, :, None]
        if self.log_targets.any():
            out[:, :, self.log_targets] = np.expm1(out[:, :, self.log_targets])
        return out

    def to_standard(self, y: np.ndarray, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """``[N, ..., n_t]`` original units → standardised (for metrics on the model's scale)."""
        mean, std = self.target_scaler.stats(keys)  # [N, n_t]
        shape = (len(keys),) + (1,) * (y.ndim - 2) + (y.shape[-1],)
        if self.log_targets.any():
            y = y.astype(np.float64, copy=True)
            y[..., self.log_targets] = np.log1p(np.maximum(y[..., self.log_targets], 0))
        return (y - mean.reshape(shape)) / std.reshape(shape)

    # -- offline, whole sequences -----------------------------------------------------------
    @torch.inference_mode()
    def run_sequence(self, x: np.ndarray) -> np.ndarray:
        """One key's whole series of inputs ``[N, I]`` → forecasts after every row.

        Starts from the initial state (``h_0, c_0``, or the zero context of a windowed model),
        exactly as the stream worker does at a key's first event. Returns ``[N, H, n_t, n_q]``.
        """
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)
        m = self.module
        if isinstance(m, LSTMForecaster):
            y, _ = m(xt, m.init_state(1, self.device))  # [1, N, H, n_t, n_q]
        else:
            assert isinstance(m, CNNLSTMAttention)
            ctx = m.init_context(1, xt.shape[2], self.device)  # [1, T - 1, I]
            chunks = []
            for s in range(0, xt.shape[1], 4096):  # bounded memory for long series
                y_part, ctx = m.run(xt[:, s : s + 4096], ctx)
                chunks.append(y_part)
            y = torch.cat(chunks, dim=1)
        return y[0].float().cpu().numpy()

    def forecast_frame(self, df: pd.DataFrame) -> np.ndarray:
        """Forecast after every row of ``df`` (columns key, ts, features; sorted by key, ts).

        Each key runs from its first row, in order: what the stream worker publishes for
        these rows. Returns ``[len(df), H, n_t, n_q]`` on the standardised scale.
        """
        out = np.empty(
            (len(df), self.config.horizon, self.config.n_targets, self.config.n_quantiles),
            dtype=np.float32,
        )
        feats = list(self.config.features)
        for _, idx in df.groupby(KEY, sort=False).indices.items():
            rows = df.iloc[idx]
            v = rows[feats].to_numpy()
            x = self.inputs(v, rows[TS].to_numpy(), rows[KEY].tolist(), previous_rows(v))
            out[idx] = self.run_sequence(x)
        return out


def previous_rows(values: np.ndarray) -> np.ndarray:
    """Rows in order ``[N, F]`` → the row before each (NaN before the first), float64."""
    prev = np.full(values.shape, np.nan, dtype=np.float64)
    prev[1:] = values[:-1]
    return prev
