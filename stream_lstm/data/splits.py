"""Chronological train / validation / test split, by fractions of the time span or by dates.

The cut times are global (the same instants for every key), so no key's test span leaks into
another key's training span.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stream_lstm.data.names import TS
from stream_lstm.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitPoints:
    """``train``: ts < val_start; ``val``: val_start ≤ ts < test_start; ``test``: the rest."""

    val_start: int  # epoch ms
    test_start: int  # epoch ms

    def label(self, ts: np.ndarray) -> np.ndarray:
        out = np.full(ts.shape, "train", dtype=object)
        out[ts >= self.val_start] = "val"
        out[ts >= self.test_start] = "test"
        return out

    def mask(self, ts: np.ndarray, split: str) -> np.ndarray:
        if split == "train":
            return np.asarray(ts < self.val_start)
        if split == "val":
            return np.asarray((ts >= self.val_start) & (ts < self.test_start))
        if split == "test":
            return np.asarray(ts >= self.test_start)
        if split == "all":
            return np.ones(ts.shape, dtype=bool)
        raise DataError(f"unknown split {split!r}; use one of {(*SPLITS, 'all')}")


def split_points(
    df: pd.DataFrame,
    *,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    dates: tuple[str, str] | None = None,
) -> SplitPoints:
    """Cut points from fractions of the overall time span, or from two dates."""
    t = df[TS].to_numpy()
    if dates is not None:
        try:
            v, s = (int(pd.Timestamp(d, tz="UTC").value // 1_000_000) for d in dates)
        except ValueError as e:
            raise DataError(f"--split-dates: {e}") from None
        if not v < s:
            raise DataError(f"--split-dates: validation start {dates[0]} must be before {dates[1]}")
    else:
        if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise DataError(
                f"--split fractions must be three positive numbers summing to 1, got {fractions}"
            )
        lo, hi = int(t.min()), int(t.max())
        v = lo + int((hi - lo) * fractions[0])
        s = lo + int((hi - lo) * (fractions[0] + fractions[1]))
    points = SplitPoints(val_start=v, test_start=s)
    for name in SPLITS:
        if not points.mask(t, name).any():
            raise DataError(f"the {name} split is empty with cut points {points}; adjust the split")
    return points
