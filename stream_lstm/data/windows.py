"""Sliding windows and horizon targets, shaped batch first.

- ``sliding_windows(x [N, F], T)`` → ``[N - T + 1, T, F]`` (a view, no copy).
- ``horizon_targets(y [N, n_t], H)`` → ``[N, H, n_t]``: row t holds y[t+1 .. t+H]; steps past
  the end are NaN (masked out of the loss).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from stream_lstm.errors import DataError


def sliding_windows(x: np.ndarray, time_step: int) -> np.ndarray:
    """All windows of ``time_step`` consecutive rows: ``[N - time_step + 1, time_step, F]``."""
    if x.ndim != 2:
        raise ValueError(f"expected [N, F], got shape {x.shape}")
    n = x.shape[0]
    if time_step < 1:
        raise DataError(f"time_step must be >= 1, got {time_step}")
    if n < time_step:
        return np.empty((0, time_step, x.shape[1]), dtype=x.dtype)
    w = sliding_window_view(x, time_step, axis=0)  # [N - T + 1, F, T]
    return np.swapaxes(w, 1, 2)  # [N - T + 1, T, F]


def horizon_targets(y: np.ndarray, horizon: int) -> np.ndarray:
    """``[N, H, n_t]``: out[t, h-1] = y[t + h]; NaN beyond the end of the series."""
    n_t = y.shape[1]
    pad = np.full((horizon, n_t), np.nan, dtype=y.dtype)
    ext = np.concatenate([y, pad], axis=0)  # [N + H, n_t]
    w = sliding_window_view(ext[1:], horizon, axis=0)  # [N, n_t, H]
    return np.ascontiguousarray(np.swapaxes(w, 1, 2))  # [N, H, n_t]
