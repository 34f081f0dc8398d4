"""One model call per tick, one class per model kind.

A tick's accepted events arrive grouped by key (``kpos``: the key row of each event, ``pos``:
its index within the key's events this tick, ``counts``: events per key) with their model
inputs ``x [n, I]``. A step runs every key in ONE batched call from the key's cached state and
returns the forecasts ``[n, H, n_t, n_q]`` (standardised) in event order:

- :class:`StatefulStep` (``lstm``): each key's events as one packed sequence from its stored
  ``(h, c)``; a key loaded from another model version first replays its stored window.
- :class:`WindowedStep` (``cnn-lstm-attn``): each event's window is the key's last ``T - 1``
  cached rows and this tick's rows before it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from stream_lstm.model.runtime import Forecaster, previous_rows
from stream_lstm.runtime.cache import StateCache
from stream_lstm.runtime.inference import TickRunner


def keys_of(fc: Forecaster, cache: StateCache, slots: np.ndarray) -> np.ndarray:
    """Entity keys of slots (only per-key scaling needs them; global scaling ignores them)."""
    if fc.config.scaling != "per-key":
        return np.full(len(slots), "", dtype=object)
    return cache.slot_keys[slots]


class ModelStep(Protocol):
    keeps_windows: bool  # whether the cache keeps each key's window in memory

    def __call__(
        self,
        cache: StateCache,
        slots: np.ndarray,
        kpos: np.ndarray,
        pos: np.ndarray,
        counts: np.ndarray,
        x: np.ndarray,
    ) -> np.ndarray: ...


class _Step:
    def __init__(self, fc: Forecaster, runner: TickRunner) -> None:
        self.fc, self.runner = fc, runner


class StatefulStep(_Step):
    """Stateful ``lstm``: the model state is ``(h, c)``; windows stay in the store and are read
    only to rebuild a key's state for a new model version."""

    keeps_windows = False

    def __call__(
        self,
        cache: StateCache,
        slots: np.ndarray,
        kpos: np.ndarray,
        pos: np.ndarray,
        counts: np.ndarray,
        x: np.ndarray,
    ) -> np.ndarray:
        fc, K, n_in = self.fc, slots.size, x.shape[1]
        # keys loaded from another model version replay their stored window first
        pre = np.where(cache.rebuild[slots], cache.fill[slots], 0)  # [K]
        lengths = counts + pre
        xp = np.zeros((K, int(lengths.max()), n_in), np.float32)  # [K, Tmax, I]
        if pre.any():
            rb = np.flatnonzero(pre)
            stored = [cache.rebuild_rows.pop(int(s)) for s in slots[rb]]  # oldest first
            w_raw = np.concatenate([v for v, _ in stored])  # [sum(pre[rb]), F]
            w_ts = np.concatenate([t for _, t in stored])
            r_row = np.repeat(rb, pre[rb])
            r_col = np.arange(len(r_row)) - np.repeat(np.cumsum(pre[rb]) - pre[rb], pre[rb])
            w_keys = np.repeat(keys_of(fc, cache, slots[rb]), pre[rb])
            w_prev = previous_rows(w_raw)  # within each key's stored window
            w_prev[r_col == 0] = np.nan
            xp[r_row, r_col] = fc.inputs(w_raw, w_ts, w_keys, w_prev)
            cache.h[slots[rb]], cache.c[slots[rb]] = cache.init_h, cache.init_c
        xp[kpos, pre[kpos] + pos] = x
        y_all, h, c = self.runner.run_stateful(xp, lengths, cache.h[slots], cache.c[slots])
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        y = y_all[np.repeat(starts + pre, counts) + pos]  # drop the replayed window rows
        cache.h[slots], cache.c[slots] = h, c
        cache.rebuild[slots] = False
        return y


class WindowedStep(_Step):
    """Windowed models (``cnn-lstm-attn``): no recurrent state between ticks; each event's
    window of ``time_step`` rows is built from the key's cached rows."""

    keeps_windows = True

    def __call__(
        self,
        cache: StateCache,
        slots: np.ndarray,
        kpos: np.ndarray,
        pos: np.ndarray,
        counts: np.ndarray,
        x: np.ndarray,
    ) -> np.ndarray:
        fc, K, n_in = self.fc, slots.size, x.shape[1]
        T = fc.config.time_step
        w_raw, w_ts = cache.window_rows(slots)  # [K, T, F] oldest first, zeros unfilled
        c_keys = np.repeat(keys_of(fc, cache, slots), T - 1)
        ctx = fc.inputs(
            w_raw[:, 1:].reshape(-1, w_raw.shape[2]), w_ts[:, 1:].reshape(-1), c_keys
        ).reshape(K, T - 1, n_in)
        filled = np.arange(1, T)[None, :] >= (T - cache.fill[slots])[:, None]  # [K, T - 1]
        ctx[~filled] = 0.0  # the offline initial context is zeros in input space
        ext = np.zeros((K, T - 1 + int(counts.max()), n_in), np.float32)  # [K, T - 1 + n_max, I]
        ext[:, : T - 1] = ctx
        ext[kpos, T - 1 + pos] = x
        win = ext[kpos[:, None], pos[:, None] + np.arange(T)[None, :]]  # [n, T, I]
        return self.runner.run_windows(win)


def step_for(fc: Forecaster) -> ModelStep:
    runner = TickRunner(fc.module, fc.device)
    return StatefulStep(fc, runner) if fc.config.stateful else WindowedStep(fc, runner)
