"""Per-feature standardisation, fitted on the training span only; global or per key.

Stored as ``scaler.json``: the column order, a global mean/std, and (per-key mode) a mean/std
for each key seen in training. A key unseen in training uses the global statistics.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_lstm.errors import ModelError

if TYPE_CHECKING:
    import pandas as pd

MODES = ("global", "per-key")
MIN_STD = 1e-6


@dataclass
class Scaler:
    columns: list[str]
    mode: str = "global"
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [C]
    std: np.ndarray = field(default_factory=lambda: np.ones(0))  # [C]
    per_key: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def fit(cls, df: pd.DataFrame, columns: list[str], mode: str, key_col: str) -> Scaler:
        """Fit on ``df`` (the caller passes the training rows only)."""
        if mode not in MODES:
            raise ModelError(f"unknown scaling mode {mode!r}; use one of {MODES}")
        vals = df[columns].to_numpy(dtype=np.float64)
        s = cls(columns=list(columns), mode=mode, mean=np.nanmean(vals, 0), std=_std(vals))
        if mode == "per-key":
            for key, idx in df.groupby(key_col, sort=True).indices.items():
                v = vals[idx]
                s.per_key[str(key)] = (np.nanmean(v, 0), _std(v))
        return s

    def stats(self, keys: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row (mean, std), ``[N, C]`` float32, for an array of keys."""
        n = len(keys)
        mean = np.broadcast_to(self.mean, (n, len(self.columns))).astype(np.float32)
        std = np.broadcast_to(self.std, (n, len(self.columns))).astype(np.float32)
        if self.mode == "per-key" and self.per_key:
            keys_arr = np.asarray(keys, dtype=object)
            uniq, inv = np.unique(keys_arr, return_inverse=True)
            for i, k in enumerate(uniq):
                if str(k) in self.per_key:
                    m, sd = self.per_key[str(k)]
                    rows = inv == i
                    mean[rows] = m
                    std[rows] = sd
        return mean, std

    def subset(self, columns: list[str]) -> Scaler:
        """The statistics of some of the columns, in the given order."""
        idx = [self.columns.index(c) for c in columns]
        return Scaler(
            columns=list(columns),
            mode=self.mode,
            mean=self.mean[idx],
            std=self.std[idx],
            per_key={k: (m[idx], s[idx]) for k, (m, s) in self.per_key.items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "mode": self.mode,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "per_key": {
                k: {"mean": m.tolist(), "std": s.tolist()} for k, (m, s) in self.per_key.items()
            },
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Scaler:
        try:
            columns = [str(c) for c in doc["columns"]]
            s = cls(
                columns=columns,
                mode=str(doc["mode"]),
                mean=np.asarray(doc["mean"], dtype=np.float64),
                std=np.asarray(doc["std"], dtype=np.float64),
                per_key={
                    str(k): (
                        np.asarray(v["mean"], dtype=np.float64),
                        np.asarray(v["std"], dtype=np.float64),
                    )
                    for k, v in doc.get("per_key", {}).items()
                },
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"scaler.json is malformed: {e}") from None
        if s.mean.shape != (len(columns),) or s.std.shape != (len(columns),):
            raise ModelError("scaler.json: mean/std do not match the number of columns")
        if s.mode not in MODES:
            raise ModelError(f"scaler.json: unknown mode {s.mode!r}")
        return s

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))


def _std(v: np.ndarray) -> np.ndarray:
    sd = np.nanstd(v, 0)
    return np.where(np.isfinite(sd) & (sd > MIN_STD), sd, 1.0)
