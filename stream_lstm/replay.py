"""Turn a data file into input events: the load generator and the demo's source.

Rows go out in time order across keys (stable by key), each as one event keyed by its entity;
missing values are left out of ``values`` (a missing feature then reaches the dead-letter
topic, exactly the rows ``predict`` does not forecast). With ``loop``, the file repeats with
its times shifted by its span, so every key's times keep increasing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stream_lstm.data.names import KEY, TS
from stream_lstm.runtime.events import encode_event


@dataclass(frozen=True)
class EventRow:
    key: str
    ts: int
    value: bytes


def iter_events(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    loop: bool = False,
    iso: bool = False,
    interval_ms: int = 0,
) -> Iterator[EventRow]:
    rows = frame.sort_values([TS, KEY], kind="stable")
    keys = rows[KEY].astype(str).tolist()
    ts = rows[TS].to_numpy(dtype=np.int64)
    vals = rows[list(columns)].to_numpy(dtype=np.float64)
    span = int(ts.max() - ts.min()) + max(interval_ms, 1) if len(ts) else 0
    shift = 0
    while True:
        for k, t, row in zip(keys, ts, vals, strict=True):
            values = {c: float(v) for c, v in zip(columns, row, strict=True) if np.isfinite(v)}
            t_out = int(t) + shift
            stamp: int | str = (
                pd.Timestamp(t_out, unit="ms", tz="UTC").isoformat().replace("+00:00", "Z")
                if iso
                else t_out
            )
            yield EventRow(k, t_out, encode_event(k, stamp, values))
        if not loop:
            return
        shift += span


class RateLimiter:
    """At most ``rate`` events per second on average (0: unlimited)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.start = clock()
        self.sent = 0

    def wait(self, n: int = 1) -> None:
        self.sent += n
        if self.rate <= 0:
            return
        ahead = self.sent / self.rate - (self.clock() - self.start)
        if ahead > 0:
            time.sleep(ahead)
