"""Column names, which columns of a file mean what (:class:`SeriesSpec`) and the interval
format, shared by the data pipeline, the commands and the stream runtime.

Kept apart from :mod:`stream_lstm.data.loading` so that the worker does not import pandas
(~70 MiB of RSS and ~2 s of start-up) for a few names.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_KEY = "default"  # the key of a file without a key column
KEY, TS, SEGMENT = "key", "ts", "segment"


def format_interval(ms: int) -> str:
    if ms <= 0:
        return "unknown"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class SeriesSpec:
    """Which columns of the file mean what."""

    time_col: str
    features: tuple[str, ...]
    targets: tuple[str, ...]
    key_col: str | None = None

    @property
    def value_cols(self) -> list[str]:
        """Features then the targets that are not features (order is stable)."""
        return list(dict.fromkeys([*self.features, *self.targets]))
