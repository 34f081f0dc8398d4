"""Anomaly repair as the LSTM forecasting literature does it: replace by the neighbours' mean.

A value is flagged when it lies more than ``k`` robust standard deviations from the rolling
median of a centred window (robust sd = 1.4826 · MAD). A flagged value is replaced by the mean
of the nearest unflagged value before and after it (one side only at the ends).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class RepairRule:
    window: int = 25  # centred rolling window, in steps (odd)
    k: float = 6.0  # flag |x - median| > k * 1.4826 * MAD
    enabled: bool = True


def flag_anomalies(x: np.ndarray, rule: RepairRule) -> np.ndarray:
    """Boolean mask of flagged values in a 1-D series (NaN is never flagged)."""
    s = pd.Series(x)
    roll = s.rolling(rule.window, center=True, min_periods=max(3, rule.window // 2))
    med = roll.median()
    mad = (s - med).abs().rolling(rule.window, center=True, min_periods=3).median()
    # a flat neighbourhood has MAD 0; fall back to the series' own robust scale
    floor = MAD_TO_SD * float(np.nanmedian(np.abs(x - np.nanmedian(x)))) or 1e-12
    scale = np.maximum(MAD_TO_SD * mad.to_numpy(), 0.1 * floor)
    dev = np.abs(x - med.to_numpy())
    return np.asarray((dev > rule.k * scale) & ~np.isnan(dev))


def repair_series(x: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Replace flagged values by the mean of their nearest unflagged neighbours."""
    if not flags.any():
        return x
    out = x.astype("float64", copy=True)
    good = np.flatnonzero(~flags)
    if good.size == 0:
        return out
    for i in np.flatnonzero(flags):
        j = np.searchsorted(good, i)
        neighbours = []
        if j > 0:
            neighbours.append(x[good[j - 1]])
        if j < good.size:
            neighbours.append(x[good[j]])
        out[i] = float(np.mean(neighbours))
    return out


def repair_frame(
    df: pd.DataFrame, columns: list[str], rule: RepairRule, group_col: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Repair ``columns`` within each group (a key's contiguous segment). Returns counts."""
    counts = dict.fromkeys(columns, 0)
    if not rule.enabled:
        return df, counts
    df = df.copy()
    for _, idx in df.groupby(group_col, sort=False).indices.items():
        for c in columns:
            x = df[c].to_numpy()[idx]
            flags = flag_anomalies(x, rule)
            if flags.any():
                counts[c] += int(flags.sum())
                df.loc[df.index[idx], c] = repair_series(x, flags)
    return df, counts
