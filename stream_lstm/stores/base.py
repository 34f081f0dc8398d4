"""The store contract: what the runtime asks of a state store, and what every backend promises.

A store keeps one record per (model version, entity key): the binary state record of
:mod:`stream_lstm.stores.record`. The runtime (:class:`stream_lstm.runtime.engine.Engine`)
knows stores only through :class:`StateStore`; the backends — :mod:`stream_lstm.stores.redis`
(production) and :mod:`stream_lstm.stores.memory` (tests and experiments) — are equals under it,
and the same contract tests run against both (``tests/integration/test_store_contract.py``,
one test per clause below).

The contract:

1. **Key order.** ``load(keys)`` returns one entry per key, in the order given: the record, or
   ``None`` for a key the store has not seen. When a previous model version is known
   (``previous_version``, set by :meth:`StateStore.use_layout`), a key with records under both
   versions gets the :func:`newer` of the two (by ``last_offset``), so a new model version
   continues from the most advanced state.
2. **Delta writes.** ``save(snapshot)`` applies, per key, the snapshot's fixed part and new ring
   rows (:func:`stream_lstm.stores.record.apply_delta`); a key without a record gets a
   zero-filled one first. Each key's write is atomic.
3. **The offset guard.** A write is refused for a key whose stored record is newer
   (:func:`stream_lstm.stores.record.write_refused`: a higher ``last_offset`` in the same
   partition of the same topic incarnation; a later ``last_ts`` when the key moved). Refused keys
   are listed in :attr:`SaveResult.refused`; the others are written. A worker that lost its
   partitions (a zombie) therefore cannot overwrite state that the new owner has advanced.
4. **Wipes are noticed.** A store that lost its data under a running worker (Redis FLUSHDB, a
   restart without persistence, one cluster shard lost with its replicas) says so once: a
   ``save`` that finds it writes nothing where the data was lost (the Redis store: nothing in
   the key buckets whose epoch marker is gone) and returns ``wiped=True``, and the next
   :meth:`StateStore.wiped` call (also after a ``load`` that found it) returns True. The runtime
   then rewrites every key it holds in full.
5. **Errors.** A store that cannot be reached raises :class:`stream_lstm.errors.StateError`;
   nothing is half-applied from the caller's point of view beyond the per-key atomicity above,
   and the caller retries the whole call.
6. **Applied offsets** (exactly-once processing). ``save_marks(topic_id, {partition: offset})``
   records, per input partition (of one topic incarnation), the offset below which every event
   of a committed transaction has its state stored; a mark is only ever raised, never lowered
   (a late write of an older cycle leaves it). ``load_marks`` returns the marks that exist. The
   runtime writes a mark only after the states of that cycle are saved
   (:mod:`stream_lstm.runtime.commit`, exactly-once steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from stream_lstm.stores.record import OFFSET_POS, Layout, Snapshot


@dataclass
class SaveResult:
    written: int = 0
    refused: list[str] = field(default_factory=list)  # keys whose stored state was newer
    wiped: bool = False  # the store lost its data (epoch marker gone): nothing was written


class StateStore(Protocol):
    previous_version: str | None

    def load(self, keys: Sequence[str]) -> list[bytes | None]:
        """One record (or None) per key, in the order given (contract 1)."""

    def save(self, snap: Snapshot) -> SaveResult:
        """Apply the snapshot's deltas, refusing keys whose stored record is newer (2, 3, 4)."""

    def use_layout(self, layout: Layout) -> None:
        """Switch to a model version's layout; the version before becomes ``previous_version``."""

    def wiped(self) -> bool:
        """True once after a load or save found the store wiped (its epoch marker gone)."""

    def load_marks(self, topic_id: bytes, partitions: Sequence[int]) -> dict[int, int]:
        """The applied offset of each partition that has one (6)."""

    def save_marks(self, topic_id: bytes, marks: dict[int, int]) -> None:
        """Raise each partition's applied offset to the one given; never lower it (6)."""


def newer(cur: bytes | None, prev: bytes | None) -> bytes | None:
    """Of a key's record under this version and under the previous one, the one to load."""
    if cur is None or prev is None:
        return cur if prev is None else prev
    at = slice(OFFSET_POS, OFFSET_POS + 8)
    if int.from_bytes(prev[at], "little", signed=True) > int.from_bytes(
        cur[at], "little", signed=True
    ):
        return prev
    return cur
