"""What the dashboard keeps per key: recent actuals and recent forecasts, bounded.

Thread-safe: the Kafka feed thread writes, HTTP handler threads read. Plain Python (no Kafka,
no HTTP), so the unit tests drive it directly.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stream_lstm.runtime.events import ForecastOut


@dataclass(frozen=True, slots=True)
class Band:
    """One target's forecast for the horizon: the point values and, when the model has
    quantiles, the lowest and highest of them (the interval)."""

    values: tuple[float, ...]  # [H]
    lower: tuple[float, ...] | None  # [H], the lowest quantile
    upper: tuple[float, ...] | None  # [H], the highest quantile
    levels: tuple[str, str] | None  # the quantile names used for lower/upper, e.g. ("0.1", "0.9")


@dataclass(frozen=True, slots=True)
class KeptForecast:
    ts: int  # the event's time, epoch ms; step h is for ts + h * interval_ms
    interval: str  # e.g. "1h"
    interval_ms: int
    model: str
    targets: Mapping[str, Band]


def interval_of(f: ForecastOut, target: str) -> Band:
    """The target's point forecast and its interval from the lowest/highest quantile."""
    values = tuple(f.forecast[target])
    qs = (f.quantiles or {}).get(target) or {}
    levels = sorted(qs, key=_level)
    if len(levels) < 2:
        return Band(values, None, None, None)
    lo, hi = levels[0], levels[-1]
    return Band(values, tuple(qs[lo]), tuple(qs[hi]), (lo, hi))


def _level(name: str) -> float:
    try:
        return float(name)
    except ValueError:
        return math.nan


class _KeySeries:
    __slots__ = ("actuals", "forecasts")

    def __init__(self, history: int) -> None:
        self.actuals: deque[tuple[int, Mapping[str, float]]] = deque(maxlen=history)
        self.forecasts: deque[KeptForecast] = deque(maxlen=history)


class SeriesStore:
    """Per chosen key, the last ``history`` actuals and forecasts.

    ``keys`` fixes the keys to keep; without it the first ``max_keys`` keys seen (on either
    topic) are chosen and the others ignored. ``target`` fixes the charted target; without it
    the first target of the first forecast is used. Actuals keep every value of the event, so
    the history is there once the target is known.
    """

    def __init__(
        self,
        keys: Iterable[str] | None = None,
        max_keys: int = 4,
        history: int = 500,
        target: str | None = None,
    ) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._fixed = list(dict.fromkeys(keys)) if keys is not None else None
        self.max_keys = len(self._fixed) if self._fixed is not None else max_keys
        self.history = history
        self._target = target
        self._targets: list[str] = []
        self._lock = threading.Lock()
        self._series: dict[str, _KeySeries] = {k: _KeySeries(history) for k in (self._fixed or [])}
        self.counts = {"actuals": 0, "forecasts": 0, "ignored": 0, "bad": 0}
        self.last_error: str | None = None

    # -- writes (the feed thread) ---------------------------------------------------------------
    def _slot(self, key: str) -> _KeySeries | None:
        s = self._series.get(key)
        if s is None and self._fixed is None and len(self._series) < self.max_keys:
            s = self._series[key] = _KeySeries(self.history)
        if s is None:
            self.counts["ignored"] += 1
        return s

    def add_actual(self, key: str, ts: int, values: Mapping[str, float]) -> bool:
        """Keep an input event's values; False when the key is not charted."""
        with self._lock:
            s = self._slot(key)
            if s is None:
                return False
            s.actuals.append((ts, dict(values)))
            self.counts["actuals"] += 1
            return True

    def add_forecast(self, f: ForecastOut) -> bool:
        """Keep a forecast (every target's values and interval); False when not charted."""
        with self._lock:
            for t in f.forecast:
                if t not in self._targets:
                    self._targets.append(t)
            s = self._slot(f.key)
            if s is None:
                return False
            bands = {t: interval_of(f, t) for t in f.forecast}
            s.forecasts.append(KeptForecast(f.ts, f.interval, f.interval_ms, f.model, bands))
            self.counts["forecasts"] += 1
            return True

    def note_bad(self, detail: str) -> None:
        with self._lock:
            self.counts["bad"] += 1
            self.last_error = detail

    # -- reads (HTTP threads) -------------------------------------------------------------------
    @property
    def target(self) -> str | None:
        return self._target or (self._targets[0] if self._targets else None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._series)

    def overview(self) -> dict[str, Any]:
        """What ``/api/keys`` returns."""
        with self._lock:
            return {
                "keys": list(self._series),
                "fixed": self._fixed is not None,
                "max_keys": self.max_keys,
                "target": self.target,
                "targets": list(self._targets),
                "history": self.history,
                "counts": dict(self.counts),
                "last_error": self.last_error,
            }

    def series(self, key: str) -> dict[str, Any] | None:
        """What ``/api/series?key=`` returns; None when the key is not charted.

        ``actual``: the target's actuals. ``one_step``: each kept forecast's first step, placed
        at ``ts + interval`` (next to the actual it predicted). ``latest``: the newest forecast
        over its horizon, with ``lower``/``upper`` when the model has quantiles. Times are
        epoch ms, in ascending order.
        """
        with self._lock:
            s = self._series.get(key)
            if s is None:
                return None
            target = self.target
            actuals = list(s.actuals)
            forecasts = list(s.forecasts)
        out: dict[str, Any] = {
            "key": key,
            "target": target,
            "actual": {"ts": [], "value": []},
            "one_step": {"ts": [], "value": []},
            "latest": None,
            "one_step_mae": None,
        }
        if target is None:
            return out
        act = sorted((ts, v[target]) for ts, v in actuals if v.get(target) is not None)
        out["actual"] = {"ts": [t for t, _ in act], "value": [v for _, v in act]}
        with_target = sorted(
            (f for f in forecasts if target in f.targets and f.targets[target].values),
            key=lambda f: f.ts,
        )
        trail = [(f.ts + f.interval_ms, f.targets[target].values[0]) for f in with_target]
        out["one_step"] = {"ts": [t for t, _ in trail], "value": [v for _, v in trail]}
        by_ts = dict(act)
        errors = [abs(v - by_ts[t]) for t, v in trail if t in by_ts]
        if errors:
            out["one_step_mae"] = sum(errors) / len(errors)
            out["one_step_matched"] = len(errors)
        if with_target:
            last = with_target[-1]
            b = last.targets[target]
            out["latest"] = {
                "ts": last.ts,
                "model": last.model,
                "interval": last.interval,
                "interval_ms": last.interval_ms,
                "h_ts": [last.ts + h * last.interval_ms for h in range(1, len(b.values) + 1)],
                "value": list(b.values),
                "lower": list(b.lower) if b.lower is not None else None,
                "upper": list(b.upper) if b.upper is not None else None,
                "levels": list(b.levels) if b.levels is not None else None,
            }
        return out
