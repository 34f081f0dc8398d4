"""Anomaly repair judged against the series' seasonal pattern, not against a rolling median.

Why: a centred rolling median (25 steps) sits far below a daily evening peak, so the rolling
rule flags genuine peaks by the hundred (issue 17: on 60 days of 15-minute meter data with 49
injected spikes it flagged 930 values, 95 % of them real evening peaks). The seasonal rule asks
instead "is this value unusual *for this time of day, on this kind of day*?".

**Seasonal rule** — used when the sampling interval divides a day into ``s >= 2`` steps (or
``RepairRule.season`` gives ``s``) and the segment spans at least ``MIN_SEASONS`` seasons:

1. *Baseline* (:func:`seasonal_baseline`): ``b[t] = median{x[t + j*s] : 1 <= |j| <= K}`` (in
   bounds, not NaN; ``K = RepairRule.neighbours`` = 3: the same time on the 3 days before and
   the 3 after). The value itself is left out, so a spike does not pull its own baseline. With
   ``RepairRule.weekly`` and 4 weeks of data, a weekly stage follows (as in STL): the median of
   the residual at the same time of the same weekday in the K weeks either side, then the daily
   stage again on the week-adjusted series. Without it a weekend whose profile differs from the
   weekdays' (a lower evening peak, a midday bump) is judged against weekdays and may be
   flagged — the limit of segments shorter than 4 weeks. A weekday peak next to a quiet weekend
   is safe either way: 4 of its 6 neighbours are weekdays.
2. *Local level* ``m``: rolling median of ``r = x - b`` over ``2*s + 1`` steps (trend, drifts).
3. *Scale*: the larger of two robust sds (1.4826 · MAD of ``|r - m|``): over the same time of
   day (± ``slack`` steps) in the 2K+1 surrounding days — a rush hour varies more from day to
   day than the night does and must not be judged by the night's spread — and over the
   ``2*s + 1`` steps around; floored at ``RepairRule.floor`` × the robust sd of ``r`` over the
   whole segment (a flat stretch — a night at zero, a closed shop — has a MAD of 0 and would
   otherwise make every blip a spike).
4. *Flag* a value more than ``k`` sds outside the band that ``b + m`` spans within ``slack``
   steps either side (``slack`` = a quarter of an hour, at least 1 step): a peak a step early or
   late is a peak, not a spike.
5. *Level-jump guard*: a flag stands only if its whole excursion — the consecutive points
   beyond ``k/2`` sds on the same side — is at most ``RepairRule.max_run`` steps long. Default
   4: an hour of 15-minute data, two hours of half-hourly data, longer than a meter glitch and
   shorter than any level shift, outage or holiday, which are real behaviour, not spikes.
6. Two passes (STL's robustness iteration): the values the first pass flags are replaced by
   their expected values before the baselines and scales are computed again, so two spikes at
   the same time a week apart cannot make each other's baseline.

A flagged value is replaced by its **expected value** ``b[t] + m[t]`` (the same time on the
neighbouring days, shifted by the local level; clipped into the range of the segment), which
puts a spike that lands on an evening peak back on the peak — the neighbours' mean would put it
on the shoulder. Where no baseline exists, by the mean of the nearest unflagged values before
and after it (one side only at the ends).

**Rolling rule** — the fallback (no ``interval_ms`` and no ``season``, an interval that does not
divide a day into 2 steps or more, or a segment under ``MIN_SEASONS`` seasons) and the behaviour
before the seasonal rule, unchanged: a value is flagged when it lies more than ``k`` robust sds
from the median of a centred ``window``, and replaced by the mean of its nearest unflagged
neighbours.

``k`` stays at 6. On the synthetic meter data of tests/unit/test_anomalies.py it recalls at
least 96 % of the injected spikes with no other flag (10 seeds) and finds nothing to repair in
vic_elec demand; k = 5 gains a little recall on injected spikes but flags more of pedestrian's
event hours (320 values against 258), k = 7 loses recall.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

MAD_TO_SD = 1.4826
MEAN_AD_TO_SD = 1.2533  # sd / mean absolute deviation, for a normal
DAY_MS = 86_400_000
REPAIR_COLUMNS = ["key", "ts", "column", "old", "new"]
MIN_VALUES = 3  # fewer values make no median (a median of 3 ignores one spike among them)
MIN_SEASONS = 4  # the seasonal rule needs 4 seasons: 3 neighbouring seasons for every value
EXCURSION = 0.5  # an excursion: the consecutive points beyond EXCURSION * k on one side


@dataclass(frozen=True)
class RepairRule:
    window: int = 25  # rolling rule: centred window, in steps (odd)
    k: float = 6.0  # flag a value more than k robust sds from what is expected
    enabled: bool = True
    season: int | None = None  # seasonal rule: steps per season; None → a day, from the interval
    neighbours: int = 3  # seasons (weeks) on each side that make the baseline
    max_run: int = 4  # flags in a longer excursion are a level shift: not flagged
    floor: float = 0.25  # the sd is at least floor × the segment's robust sd of the residual
    weekly: bool = True  # also follow the weekly pattern (7 seasons), given 4 weeks of data


def infer_season(interval_ms: int | None, rule: RepairRule) -> int | None:
    """Steps per season: ``rule.season`` if set, else a day when the interval divides it into
    2 steps or more, else a week when it divides that (daily data); None → the rolling rule."""
    if rule.season is not None:
        return rule.season if rule.season >= 2 else None
    if interval_ms is None or interval_ms <= 0:
        return None
    if DAY_MS % interval_ms == 0 and DAY_MS // interval_ms >= 2:
        return DAY_MS // interval_ms
    if (7 * DAY_MS) % interval_ms == 0 and 7 * DAY_MS // interval_ms >= 2:
        return 7 * DAY_MS // interval_ms  # daily data: the week is the season
    return None


def seasonal_baseline(
    x: np.ndarray, season: int, neighbours: int = 3, *, weekly: bool = True
) -> np.ndarray:
    """The value expected at each position from the same phase of the neighbouring seasons.

    Daily stage: ``b[t] = median{x[t + j*season] : 1 <= |j| <= neighbours}`` (in bounds, not
    NaN). Weekly stage (``weekly`` and at least 4 weeks of ``7*season`` steps): the median of
    ``x - b`` at the same phase of the neighbouring weeks ``w``, the daily stage again on
    ``x - w``, and ``w`` again from that; the baseline is their sum. NaN where fewer than
    ``MIN_VALUES`` values make the daily median.
    """
    x = np.asarray(x, dtype="float64")
    base = _median_at(x, _offsets(season, neighbours))
    week = 7 * season
    if weekly and len(x) >= 4 * week:
        weeks = _offsets(week, neighbours)
        w = np.nan_to_num(_median_at(x - base, weeks), nan=0.0)
        daily = _median_at(x - w, _offsets(season, neighbours))
        w = np.nan_to_num(_median_at(x - daily, weeks), nan=0.0)
        base = daily + w
    return base


def _offsets(period: int, neighbours: int, slack: int = 0, *, self: bool = False) -> list[int]:
    """``j*period + d`` for ``|j| <= neighbours`` (j = 0 only with ``self``), ``|d| <= slack``."""
    return [
        j * period + d
        for j in range(-neighbours, neighbours + 1)
        if j or self
        for d in range(-slack, slack + 1)
    ]


def _median_at(x: np.ndarray, offsets: list[int]) -> np.ndarray:
    """``median{x[t + o] : o in offsets, in bounds, not NaN}``; NaN with too few values."""
    n = len(x)
    offsets = [o for o in offsets if abs(o) < n]
    if not offsets:
        return np.full(n, np.nan)
    stack = np.full((len(offsets), n), np.nan)
    for row, off in enumerate(offsets):
        if off >= 0:
            stack[row, : n - off] = x[off:]
        else:
            stack[row, -off:] = x[: n + off]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns → NaN
        med = np.asarray(np.nanmedian(stack, axis=0))
    # a median of one or two values copies a neighbour's spike: no baseline there
    enough = (~np.isnan(stack)).sum(axis=0) >= min(MIN_VALUES, len(offsets))
    return np.where(enough, med, np.nan)


def flag_anomalies(x: np.ndarray, rule: RepairRule, season: int | None = None) -> np.ndarray:
    """Boolean mask of flagged values in a 1-D series (NaN is never flagged).

    The seasonal rule when ``season`` (steps per season) is given and the series spans
    ``MIN_SEASONS`` seasons, else the rolling rule.
    """
    x = np.asarray(x, dtype="float64")
    if season is not None and len(x) >= MIN_SEASONS * season:
        return flag_seasonal(x, rule, season)[0]
    return _flag_rolling(x, rule)


def _flag_rolling(x: np.ndarray, rule: RepairRule) -> np.ndarray:
    s = pd.Series(x)
    roll = s.rolling(rule.window, center=True, min_periods=max(3, rule.window // 2))
    med = roll.median()
    mad = (s - med).abs().rolling(rule.window, center=True, min_periods=3).median()
    # a flat neighbourhood has MAD 0; fall back to the series' own robust scale
    floor = MAD_TO_SD * float(np.nanmedian(np.abs(x - np.nanmedian(x)))) or 1e-12
    scale = np.maximum(MAD_TO_SD * mad.to_numpy(), 0.1 * floor)
    dev = np.abs(x - med.to_numpy())
    return np.asarray((dev > rule.k * scale) & ~np.isnan(dev))


def flag_seasonal(x: np.ndarray, rule: RepairRule, season: int) -> tuple[np.ndarray, np.ndarray]:
    """Seasonal rule: (flags, expected values ``baseline + local level``, NaN where unknown).

    Two passes: the values the first pass flags are replaced by their expected values for
    the second pass's baselines and scales.
    """
    x = np.asarray(x, dtype="float64")
    flags, expected = _seasonal_pass(x, x, rule, season)
    if flags.any():
        cleaned = np.where(flags & ~np.isnan(expected), expected, x)
        flags, again = _seasonal_pass(x, cleaned, rule, season)
        expected = np.where(np.isnan(again), expected, again)
    if np.isfinite(x).any():  # never repair outside the range the series itself spans
        expected = np.clip(expected, np.nanmin(x), np.nanmax(x))
    return flags, expected


def _seasonal_pass(
    x: np.ndarray, cleaned: np.ndarray, rule: RepairRule, season: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flags and expected values of ``x``, with baselines and scales taken from ``cleaned``."""
    n = len(x)
    base = seasonal_baseline(cleaned, season, rule.neighbours, weekly=rule.weekly)
    if np.isnan(base).all():
        return np.zeros(n, dtype=bool), np.full(n, np.nan)
    r = pd.Series(cleaned - base)
    win, min_periods = 2 * season + 1, season // 2 + 1
    level = r.rolling(win, center=True, min_periods=min_periods).median().to_numpy()
    dev = np.abs(r.to_numpy() - level)
    slack = max(1, round(season / 96))  # a quarter of an hour of a daily season
    # robust sd: over the same time of day in the surrounding days, and over the steps around
    same_time = _median_at(dev, _offsets(season, rule.neighbours, slack, self=True))
    around = pd.Series(dev).rolling(win, center=True, min_periods=min_periods).median()
    sd = MAD_TO_SD * np.fmax(same_time, around.to_numpy())
    sd = np.fmax(sd, rule.floor * _global_sd(r.to_numpy()))
    sd = np.fmax(sd, 1e-12)
    # distance from the band the expected curve spans within ``slack`` steps either side
    expected = base + level
    near = pd.Series(expected).rolling(2 * slack + 1, center=True, min_periods=1)
    lo, hi = near.min().to_numpy(), near.max().to_numpy()
    z = np.nan_to_num((x - np.clip(x, lo, hi)) / sd, nan=0.0)  # signed, in sds; NaN → 0
    flags = np.abs(z) > rule.k
    # level-jump guard: a flag stands only if its whole excursion is short
    cut = EXCURSION * rule.k
    flags &= ~(long_runs(z > cut, rule.max_run) | long_runs(z < -cut, rule.max_run))
    return flags & ~np.isnan(x), expected


def _global_sd(r: np.ndarray) -> float:
    """Robust sd of a residual over a whole segment: 1.4826 · MAD, or, when more than half
    the residuals are equal (a series at zero all night), 1.2533 · mean absolute deviation."""
    if np.isnan(r).all():
        return 0.0
    d = np.abs(r - np.nanmedian(r))
    return MAD_TO_SD * float(np.nanmedian(d)) or MEAN_AD_TO_SD * float(np.nanmean(d))


def long_runs(mask: np.ndarray, max_run: int) -> np.ndarray:
    """The points of ``mask`` that lie in a run of more than ``max_run`` consecutive Trues."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    starts, ends = edges[::2], edges[1::2]
    keep = ends - starts > max_run
    delta = np.zeros(len(mask) + 1, dtype=np.int64)
    np.add.at(delta, starts[keep], 1)
    np.add.at(delta, ends[keep], -1)
    return np.asarray(np.cumsum(delta[:-1]) > 0)


def repair_series(
    x: np.ndarray, flags: np.ndarray, expected: np.ndarray | None = None
) -> np.ndarray:
    """Replace flagged values by ``expected`` where it is known (not NaN), else by the mean of
    their nearest unflagged neighbours (one side only at the ends)."""
    if not flags.any():
        return x
    out = x.astype("float64", copy=True)
    todo = np.flatnonzero(flags)
    if expected is not None:
        known = ~np.isnan(expected[todo])
        out[todo[known]] = expected[todo[known]]
        todo = todo[~known]
    good = np.flatnonzero(~flags)
    if good.size == 0 or todo.size == 0:
        return out
    j = np.searchsorted(good, todo)
    before = np.where(j > 0, x[good[np.maximum(j - 1, 0)]], np.nan)
    after = np.where(j < good.size, x[good[np.minimum(j, good.size - 1)]], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # both sides NaN → NaN
        out[todo] = np.nanmean(np.stack([before, after]), axis=0)
    return out


def repair_frame(
    df: pd.DataFrame,
    columns: list[str],
    rule: RepairRule,
    group_col: str,
    *,
    interval_ms: int | None = None,
    ts_col: str | None = None,
    key_col: str | None = None,
) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame]:
    """Repair ``columns`` within each group (a key's contiguous segment on a regular grid).

    The seasonal rule when ``interval_ms`` divides a day (or ``rule.season`` is set) and the
    group spans ``MIN_SEASONS`` seasons, else the rolling rule — so old callers, which pass no
    ``interval_ms``, get the behaviour they had.

    Returns the repaired frame (a copy; a repaired integer column becomes float64), the number
    of repaired values per column, and one row per repaired value with the columns ``key``
    (from ``key_col``, else ""), ``ts`` (``ts_col``'s int epoch ms; the row's position in
    ``df`` when ``ts_col`` is None), ``column``, ``old`` and ``new`` — empty, with the same
    columns, when nothing is repaired.
    """
    counts = dict.fromkeys(columns, 0)
    if not rule.enabled:
        return df, counts, _repairs([])
    season = infer_season(interval_ms, rule)
    if season is not None and interval_ms is not None and season * interval_ms > DAY_MS:
        rule = replace(rule, weekly=False)  # the season is a week already
    df = df.copy()
    found: list[pd.DataFrame] = []
    for positions in df.groupby(group_col, sort=False).indices.values():
        idx = np.asarray(positions, dtype=np.int64)
        for c in columns:
            x = df[c].to_numpy(dtype="float64", na_value=np.nan)[idx]
            expected = None
            if season is not None and len(x) >= MIN_SEASONS * season:
                flags, expected = flag_seasonal(x, rule, season)
            else:
                flags = _flag_rolling(x, rule)
            if not flags.any():
                continue
            fixed = repair_series(x, flags, expected)
            rows = idx[flags]
            counts[c] += len(rows)
            if not pd.api.types.is_float_dtype(df[c].dtype):
                df[c] = df[c].astype("float64")
            col = list(df.columns).index(c)
            df.iloc[rows, col] = fixed[flags]
            found.append(
                pd.DataFrame(
                    {
                        "key": df[key_col].to_numpy()[rows].astype(str) if key_col else "",
                        "ts": df[ts_col].to_numpy()[rows] if ts_col else rows,
                        "column": c,
                        "old": x[flags],
                        "new": fixed[flags],
                    }
                )
            )
    return df, counts, _repairs(found)


def _repairs(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The repairs table: key and column (str), ts (int64), old and new (float64)."""
    if parts:
        out = pd.concat(parts, ignore_index=True)
    else:
        out = pd.DataFrame({c: [] for c in REPAIR_COLUMNS})
    out["key"] = out["key"].astype(str)
    out["ts"] = out["ts"].astype("int64")
    out["column"] = out["column"].astype(str)
    out["old"] = out["old"].astype("float64")
    out["new"] = out["new"].astype("float64")
    return out[REPAIR_COLUMNS]
