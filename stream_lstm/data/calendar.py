"""Calendar encodings derived from event times, identical offline and in the stream.

Each encoding adds a (sin, cos) pair computed in the model's time zone:

- ``day``:  time of day,            period 24 h
- ``week``: day of week + time,     period 7 days
- ``year``: day of year,            period 365.25 days
"""

from __future__ import annotations

import numpy as np

from stream_lstm.errors import ConfigError

# pandas is imported only for a zone other than UTC: a worker whose model keeps UTC does not
# load it (~70 MiB of RSS, ~2 s of start-up)

ENCODINGS = ("day", "week", "year")
MS_PER_DAY = 86_400_000
BUCKET_MS = 900_000  # 15 minutes


def default_encodings(interval_ms: int) -> tuple[str, ...]:
    """Time of day and day of week for sub-daily data; day of week and year otherwise."""
    return ("day", "week") if interval_ms < MS_PER_DAY else ("week", "year")


def validate(encodings: tuple[str, ...], tz: str) -> None:
    unknown = [e for e in encodings if e not in ENCODINGS]
    if unknown:
        raise ConfigError(f"unknown calendar encoding(s) {unknown}; use any of {ENCODINGS}")
    if tz == "UTC":
        return
    import pandas as pd

    try:
        pd.Timestamp(0, tz=tz)
    except Exception:
        raise ConfigError(f"unknown time zone {tz!r} (use an IANA name such as UTC)") from None


def local_wall_ms(ts_ms: np.ndarray, tz: str) -> np.ndarray:
    """Wall-clock epoch milliseconds in ``tz`` (UTC time + the zone's offset at that instant).

    Offsets are looked up once per distinct 15-minute bucket (zone transitions fall on such
    boundaries), so a tick of events close in time costs a handful of lookups.
    """
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    if tz == "UTC" or ts_ms.size == 0:
        return ts_ms
    import pandas as pd

    buckets, inv = np.unique(ts_ms // BUCKET_MS, return_inverse=True)
    at = pd.DatetimeIndex(pd.to_datetime(buckets * BUCKET_MS, unit="ms", utc=True)).tz_convert(tz)
    wall = at.tz_localize(None).as_unit("ms").asi8  # local wall clock at each bucket start
    offsets = np.asarray(wall, dtype=np.int64) - buckets * BUCKET_MS
    return ts_ms + offsets[inv.reshape(-1)]


def calendar_features(ts_ms: np.ndarray, encodings: tuple[str, ...], tz: str) -> np.ndarray:
    """``[N, 2 * len(encodings)]`` float32 features for int64 epoch-ms times."""
    if not encodings:
        return np.zeros((len(ts_ms), 0), dtype=np.float32)
    wall = local_wall_ms(ts_ms, tz)
    days = wall // MS_PER_DAY  # local days since 1970-01-01 (a Thursday)
    frac_day = (wall - days * MS_PER_DAY) / MS_PER_DAY
    cols = []
    for enc in encodings:
        if enc == "day":
            phase = frac_day
        elif enc == "week":
            dow = (days + 3) % 7  # Monday = 0
            phase = (dow + frac_day) / 7.0
        else:
            year_start = (
                wall.astype("datetime64[ms]").astype("datetime64[Y]").astype("datetime64[D]")
            )
            doy = days - year_start.astype(np.int64)  # 0-based day of year
            phase = (doy + frac_day) / 365.25
        angle = 2 * np.pi * phase
        cols += [np.sin(angle), np.cos(angle)]
    return np.stack(cols, axis=1).astype(np.float32)
