"""Load a long-form table (CSV or Parquet), validate it, and put each key on a regular grid.

Long form: an optional key column (absent = one series), a time column, and numeric columns
for features and targets (a target may also be a feature). Internally times are int64
milliseconds since the epoch (UTC), the same unit the stream events carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stream_lstm.data.names import DEFAULT_KEY, KEY, SEGMENT, TS, SeriesSpec, format_interval
from stream_lstm.errors import DataError

FILL_POLICIES = ("interpolate", "ffill", "zero")


@dataclass
class LoadReport:
    """What validation found and did; printed by the commands and stored in metrics.json."""

    rows: int = 0
    keys: int = 0
    duplicates_dropped: int = 0
    missing_values: dict[str, int] = field(default_factory=dict)
    interval_ms: int = 0
    irregular_gaps: int = 0
    rows_filled: int = 0
    segments: int = 0
    anomalies_repaired: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"{self.rows} rows, {self.keys} key(s), interval {format_interval(self.interval_ms)}",
        ]
        if self.duplicates_dropped:
            out.append(f"{self.duplicates_dropped} duplicate (key, time) rows dropped (kept first)")
        missing = {k: v for k, v in self.missing_values.items() if v}
        if missing:
            out.append(f"missing values: {missing}")
        if self.irregular_gaps:
            out.append(
                f"{self.irregular_gaps} gap(s) in the time grid: {self.rows_filled} row(s) filled, "
                f"{self.segments} contiguous segment(s)"
            )
        repaired = {k: v for k, v in self.anomalies_repaired.items() if v}
        if self.anomalies_repaired:
            out.append(f"anomalies repaired (against the seasonal pattern): {repaired or 'none'}")
        return out


def read_table(path: Path) -> pd.DataFrame:
    """Read CSV or Parquet by suffix; a DataError says what is wrong with the file."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if suffix in {".csv", ".txt", ".gz"}:
            return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"could not read {path}: {e}") from None
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")


Source = Path | pd.DataFrame  # a file, or a table already in memory (the Python API)


def source_name(source: Source) -> str:
    """How errors name a source: its path, or "the DataFrame"."""
    return "the DataFrame" if isinstance(source, pd.DataFrame) else str(source)


def _numeric(col: pd.Series, name: str, path: Path | str) -> pd.Series:
    """Float column; booleans become 0/1; a non-numeric value is an error naming its row."""
    if col.dtype == bool:
        return col.astype("float64")
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna()
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: column {name!r} has a non-numeric value {col.iloc[pos]!r} at data row "
            f"{pos + 1} (line {pos + 2} of a CSV with a header)"
        )
    return num.astype("float64")


def parse_times(col: pd.Series, name: str, path: Path | str) -> np.ndarray:
    """int64 epoch milliseconds (UTC). Naive times are taken as UTC; epoch numbers as ms."""
    if pd.api.types.is_numeric_dtype(col):
        ts = pd.to_datetime(col, unit="ms", utc=True, errors="coerce")
    else:
        ts = pd.to_datetime(col, utc=True, errors="coerce", format="mixed")
    bad = ts.isna()
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: column {name!r} has an unparseable time {col.iloc[pos]!r} at data row "
            f"{pos + 1} (line {pos + 2} of a CSV with a header)"
        )
    return ts.astype("datetime64[ms, UTC]").astype("int64").to_numpy()


def load_frame(source: Source, spec: SeriesSpec) -> tuple[pd.DataFrame, LoadReport]:
    """Columns ``key, ts`` + value columns, sorted by (key, ts), duplicates dropped.

    ``source``: a CSV/Parquet file, or a DataFrame with the same columns (times as datetimes,
    ISO strings or epoch milliseconds). Missing values stay NaN here (filled by
    :func:`regularize` for training; the stream path treats an event with a missing feature as
    bad input).
    """
    raw = source if isinstance(source, pd.DataFrame) else read_table(source)
    path = source_name(source)
    wanted = [spec.time_col, *spec.value_cols] + ([spec.key_col] if spec.key_col else [])
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not found; the file has {list(raw.columns)}")
    if not spec.features:
        raise DataError("at least one feature column is needed (--features)")
    if not spec.targets:
        raise DataError("at least one target column is needed (--targets)")
    df = pd.DataFrame(
        {
            KEY: raw[spec.key_col].astype(str) if spec.key_col else DEFAULT_KEY,
            TS: parse_times(raw[spec.time_col], spec.time_col, path),
        }
    )
    for c in spec.value_cols:
        df[c] = _numeric(raw[c], c, path).to_numpy()
    for c in spec.value_cols:
        arr = df[c].to_numpy()
        if np.isinf(arr).any():
            pos = int(np.flatnonzero(np.isinf(arr))[0])
            raise DataError(f"{path}: column {c!r} has an infinite value at data row {pos + 1}")
    df = df.sort_values([KEY, TS], kind="stable").reset_index(drop=True)
    dup = df.duplicated([KEY, TS], keep="first")
    report = LoadReport(
        duplicates_dropped=int(dup.sum()),
        missing_values={c: int(df[c].isna().sum()) for c in spec.value_cols},
    )
    df = df[~dup].reset_index(drop=True)
    if df.empty:
        raise DataError(f"{path}: no rows")
    report.rows = len(df)
    report.keys = int(df[KEY].nunique())
    report.interval_ms = infer_interval_ms(df)
    return df, report


def infer_interval_ms(df: pd.DataFrame) -> int:
    """The most common positive step between consecutive times of a key."""
    diffs = df.groupby(KEY, sort=False)[TS].diff().dropna()
    diffs = diffs[diffs > 0]
    if diffs.empty:
        raise DataError("cannot infer the interval: every key has a single timestamp")
    return int(diffs.mode().iloc[0])


def regularize(
    df: pd.DataFrame,
    interval_ms: int,
    value_cols: list[str],
    *,
    fill: str = "interpolate",
    max_gap: int = 24,
    report: LoadReport | None = None,
) -> pd.DataFrame:
    """Reindex each key on its ``interval_ms`` grid; fill gaps of ≤ ``max_gap`` steps.

    Longer gaps are not invented: the series is cut there into contiguous *segments* (column
    ``segment``), which training treats as separate sequences. Off-grid times are snapped to
    the grid of the key's first timestamp (rounded). Missing values inside the data are filled
    by the same policy.
    """
    if fill not in FILL_POLICIES:
        raise DataError(f"unknown fill policy {fill!r}; use one of {FILL_POLICIES}")
    parts = []
    gaps = filled = segments = 0
    for key, g in df.groupby(KEY, sort=True):
        t0 = int(g[TS].iloc[0])
        step = np.rint((g[TS].to_numpy() - t0) / interval_ms).astype(np.int64)
        g = g.assign(_step=step).drop_duplicates("_step", keep="first").set_index("_step")
        full = g.reindex(np.arange(step.max() + 1))
        present = full[TS].notna().to_numpy()
        # run lengths of missing steps → gaps; long ones start a new segment
        missing_runs = _runs(~present)
        gaps += len(missing_runs)
        long_gap = np.zeros(len(full), dtype=bool)
        for start, length in missing_runs:
            if length > max_gap:
                long_gap[start : start + length] = True
        full[TS] = t0 + full.index.to_numpy() * interval_ms
        full[KEY] = key
        vals = full[value_cols]
        if fill == "interpolate":
            vals = vals.interpolate(method="linear", limit_area="inside").ffill().bfill()
        elif fill == "ffill":
            vals = vals.ffill().bfill()
        else:
            vals = vals.fillna(0.0)
        full[value_cols] = vals
        filled += int((~present & ~long_gap).sum())
        keep = ~long_gap
        seg_id = np.cumsum(np.r_[True, np.diff(np.flatnonzero(keep)) > 1])
        out = full[keep].copy()
        out[SEGMENT] = [f"{key}#{i}" for i in seg_id] if seg_id.max() > 1 else f"{key}#1"
        segments += int(seg_id.max())
        parts.append(out.reset_index(drop=True))
    result = pd.concat(parts, ignore_index=True)
    result[TS] = result[TS].astype("int64")
    if report is not None:
        report.irregular_gaps = gaps
        report.rows_filled = filled
        report.segments = segments
    return result


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a boolean array."""
    if not mask.any():
        return []
    padded = np.r_[False, mask, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2], strict=True)]
