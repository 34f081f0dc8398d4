"""The store contract in memory (:mod:`stream_lstm.stores.base`): for tests and experiments.

Behaves as the Redis store does, per the contract: key order, delta writes, the offset guard,
the epoch marker (:meth:`MemoryStore.wipe` is what FLUSHDB does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from stream_lstm.stores.base import SaveResult, newer
from stream_lstm.stores.record import Layout, Snapshot, apply_delta, write_refused


@dataclass
class MemoryStore:
    """The Redis store's contract in memory: delta writes, refused when a newer one is stored."""

    layout: Layout
    previous_version: str | None = None
    data: dict[str, bytes] = field(default_factory=dict)
    loads: int = 0  # round trips
    saves: int = 0
    marker: str | None = "e0"  # the namespace's epoch marker (see RedisStateStore)
    epoch: str = "e0"  # the marker as this store's user knows it
    wipes: int = 0
    marks: dict[tuple[bytes, int], int] = field(default_factory=dict)  # applied offsets
    _wiped: bool = False

    def wipe(self) -> None:
        """What FLUSHDB does: every record, the marker and the applied offsets are gone."""
        self.data.clear()
        self.marks.clear()
        self.marker = None

    def _check_epoch(self) -> bool:
        """The marker is the known epoch; if not (after :meth:`wipe`), adopt a new one."""
        if self.marker is not None and self.marker == self.epoch:
            return True
        if self.marker is None:
            self.wipes += 1
            self.marker = f"e{self.wipes}"
        self.epoch = self.marker
        self._wiped = True
        return False

    def wiped(self) -> bool:
        w, self._wiped = self._wiped, False
        return w

    @property
    def version(self) -> str:
        return self.layout.version

    def _k(self, key: str, version: str | None = None) -> str:
        return f"{version or self.version}:{{{key}}}"

    def load(self, keys: Sequence[str]) -> list[bytes | None]:
        self.loads += 1
        self._check_epoch()
        out = []
        for k in keys:
            rec = self.data.get(self._k(k))
            if self.previous_version:
                rec = newer(rec, self.data.get(self._k(k, self.previous_version)))
            out.append(rec)
        return out

    def save(self, snap: Snapshot) -> SaveResult:
        self.saves += 1
        res = SaveResult()
        if not self._check_epoch():
            res.wiped = True
            return res
        for k, fixed, rows in snap.items():
            name = self._k(k, snap.layout.version)
            cur = self.data.get(name)
            if cur is not None and write_refused(cur, fixed):
                res.refused.append(k)
                continue
            self.data[name] = apply_delta(cur, fixed, rows, snap.layout)
            res.written += 1
        return res

    def use_layout(self, layout: Layout) -> None:
        if layout.version != self.version:
            self.previous_version = self.version
        self.layout = layout

    def load_marks(self, topic_id: bytes, partitions: Sequence[int]) -> dict[int, int]:
        return {p: self.marks[topic_id, p] for p in partitions if (topic_id, p) in self.marks}

    def save_marks(self, topic_id: bytes, marks: dict[int, int]) -> None:
        for p, offset in marks.items():
            if offset > self.marks.get((topic_id, p), -1):
                self.marks[topic_id, p] = offset

    def peek(self, keys: Sequence[str]) -> list[bytes | None]:
        """Records for a query, read-only (see ``RedisStateStore.peek``)."""
        out = []
        for k in keys:
            rec = self.data.get(self._k(k))
            if self.previous_version:
                rec = newer(rec, self.data.get(self._k(k, self.previous_version)))
            out.append(rec)
        return out

    def record(self, key: str) -> bytes | None:
        return self.data.get(self._k(key))
