"""An in-process harness for the engine: memory sink, memory state store, message builders.

Fast unit tests drive the same :class:`~stream_lstm.runtime.engine.Engine` the worker runs; the
integration tests then prove the same behaviour on a real Kafka broker and Redis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stream_lstm.data.names import KEY, TS
from stream_lstm.runtime.events import InMessage, encode_event


@dataclass
class Produced:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None


@dataclass
class MemorySink:
    """Collects produced messages; ``flush`` moves them to ``delivered``."""

    pending: list[Produced] = field(default_factory=list)
    delivered: list[Produced] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.pending.append(Produced(topic, key, value, headers))

    def produce_many(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> None:
        for k, v in zip(keys, values, strict=True):
            self.produce(topic, k, v)

    def flush(self) -> None:
        self.delivered += self.pending
        self.pending = []

    def on(self, topic: str) -> list[Produced]:
        return [p for p in self.delivered + self.pending if p.topic == topic]


def frame_events(
    frame: pd.DataFrame, features: Sequence[str], extra: Sequence[str] = ()
) -> list[tuple[str, int, dict[str, float]]]:
    """Rows as (key, ts, values), in time order across keys (stable by key), as replay sends."""
    rows = frame.sort_values([TS, KEY], kind="stable")
    cols = list(dict.fromkeys([*features, *extra]))
    vals = rows[cols].to_numpy(dtype=np.float64)
    return [
        (str(k), int(t), {c: float(v) for c, v in zip(cols, row, strict=True)})
        for k, t, row in zip(rows[KEY], rows[TS], vals, strict=True)
    ]


def to_messages(
    events: Sequence[tuple[str, int, dict[str, float]]],
    topic: str = "in",
    partitions: int = 4,
    start_ms: int = 0,
) -> list[InMessage]:
    """Messages as Kafka would deliver them: partition by key hash, offsets per partition."""
    next_off = [0] * partitions
    out = []
    for i, (k, t, v) in enumerate(events):
        p = hash_partition(k, partitions)
        out.append(
            InMessage(k.encode(), encode_event(k, t, v), topic, p, next_off[p], start_ms + i)
        )
        next_off[p] += 1
    return out


def hash_partition(key: str, partitions: int) -> int:
    """A stable key → partition map for tests (not Kafka's murmur2; any stable map works)."""
    return int.from_bytes(key.encode()[:8].ljust(8, b"\0"), "little") % partitions


def ticks(msgs: Sequence[InMessage], sizes: Sequence[int]) -> Iterator[list[InMessage]]:
    """Split a message list into ticks of the given sizes (cycled)."""
    i = j = 0
    while i < len(msgs):
        n = sizes[j % len(sizes)]
        yield list(msgs[i : i + n])
        i += n
        j += 1
