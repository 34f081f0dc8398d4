"""The commit protocol: when an offset may move, and what must be safe before it does.

The rule it enforces: an offset is committed only when every output of every event before it
(forecast, dead letter, alert) is acknowledged by the broker, and the state of every key those
events changed is in the store. One cycle (:meth:`CommitCycle.run`), every
``commit_interval_ms``, on revocation (``partitions``: only those) and at shutdown:

0. **Earlier cycles first.** Background writes that finished are committed, in order (step 3 of
   their cycle); if the previous write is still running and the caller does not wait, this
   cycle is skipped and tried again next interval.
1. **Flush** the producer: every forecast, dead letter and alert produced so far is
   acknowledged. A flush that fails raises :class:`stream_lstm.errors.PublishError`: nothing is
   written or committed, and the driver must rewind (:meth:`Engine.rewind`).
2. **Write** the dirty keys' states to the store (:mod:`stream_lstm.stores.base`), each record
   carrying the offset of the key's last applied event: here, or on the background writer
   thread (:meth:`CommitCycle.start_writer`) so that the hot loop does not wait for the store.
3. **Commit** the offsets that were pending when the cycle began — only now. Not when the store
   turned out to be wiped (every cached key is written again in full first, and these offsets
   wait for a later cycle); not offsets of a topic incarnation that has since been re-created;
   never after :meth:`Engine.halt` (a crash path).

A crash between 1 and 2 replays events whose forecasts were delivered: the same forecasts are
published again (duplicates with identical values). A crash between 2 and 3 replays events that
are at or below each key's stored offset: they are skipped for state. So output is at least once
and state exactly once. An idle worker still sends an empty write every ``STORE_CHECK_S`` so that
a wiped store is noticed while it holds the keys (see docs/architecture.md).

**Exactly-once** (the sink runs Kafka transactions, ``--processing-guarantee exactly-once``):
everything produced since the last cycle is one open transaction, and the steps are

E1. **Snapshot** the dirty keys' states and take the pending offsets, at the same point of the
    stream (nothing is applied between the two).
E2. **Commit the transaction** (the driver's ``commit``: ``send_offsets_to_transaction`` with
    the consumer group's metadata, then ``commit_transaction``): every forecast, dead letter and
    alert since the last cycle and the offsets after them become visible together, or — aborted
    — never (:class:`stream_lstm.errors.PublishError`: the driver rewinds, states included).
E3. **Write** the snapshot's states to the store (offset guard as above), here or on the
    background writer.
E4. **Mark** each partition's *applied offset* (:mod:`stream_lstm.stores.base`, clause 6) =
    the offset just committed: every committed event below it has its state stored.

With two writes still in flight a cycle does E2 alone (its states stay dirty for a later E1), so
outputs become visible every interval however slow the store is.

The store is never ahead of a committed transaction (E3 follows E2), and never behind it
unnoticed: a crash between E2 and E4 leaves a partition's applied offset below its committed
offset, and whoever is assigned the partition next consumes it again from the applied offset,
applying those events to state only (:meth:`Engine.begin_catch_up`) — the input topic is the
changelog. A crash before E2 aborts the transaction (the next producer with the same
``transactional.id``, or the broker's ``transaction.timeout.ms``): its outputs are never seen by
read_committed consumers, its offsets never moved, and its states were never written.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stream_lstm.runtime.faults import failpoint
from stream_lstm.stores.base import SaveResult
from stream_lstm.stores.record import NO_TOPIC, Snapshot

if TYPE_CHECKING:
    from stream_lstm.runtime.engine import Engine

log = logging.getLogger(__name__)
Offsets = dict[tuple[str, int], int]  # (topic, partition) → next offset to consume
Commit = Callable[[Offsets], None]  # the driver's offset commit
STORE_CHECK_S = 5.0  # an idle worker checks the store for a wipe this often
SLOW_SAVE_S = 5.0  # a state write this slow is logged
TRIM_EVERY_S = 5.0  # the writer returns freed heap pages to the system at most this often


def _libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return fn


_malloc_trim = _libc_malloc_trim()


@dataclass
class CommitJob:
    """One cycle's work after its flush: the states to write, then the offsets to commit."""

    snapshot: Snapshot
    offsets: Offsets
    topic_id: bytes = NO_TOPIC  # the input topic's incarnation the offsets belong to
    committed: bool = False  # exactly-once: the offsets are committed (E2); mark them after E3


class StateWriter:
    """One background thread that saves commit-cycle snapshots in order."""

    def __init__(self, save: Callable[[CommitJob], SaveResult]) -> None:
        self._save = save
        self._jobs: queue.Queue[CommitJob | None] = queue.Queue()
        self._done: queue.Queue[tuple[CommitJob, SaveResult | BaseException]] = queue.Queue()
        self._in_flight = 0
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_trim = 0.0
        while (job := self._jobs.get()) is not None:
            try:
                self._done.put((job, self._save(job)))
            except BaseException as e:
                self._done.put((job, e))
            if _malloc_trim is not None and time.monotonic() - last_trim >= TRIM_EVERY_S:
                # a write's buffers (its records' bytes, the Redis commands) are freed by now:
                # hand the free pages back, or the C heaps keep them at the largest write's size
                _malloc_trim(0)
                last_trim = time.monotonic()

    def busy(self, limit: int = 1) -> bool:
        """``limit`` or more writes are still in flight."""
        return self._in_flight >= limit

    def submit(self, job: CommitJob) -> None:
        self._in_flight += 1
        self._jobs.put(job)

    def done(self, block: bool) -> list[tuple[CommitJob, SaveResult]]:
        out = []
        while self._in_flight:
            try:
                job, res = self._done.get(block=block)
            except queue.Empty:
                break
            self._in_flight -= 1
            if isinstance(res, BaseException):
                raise res
            out.append((job, res))
        return out

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(30)


class CommitCycle:
    """The steps above, over an engine's cache, sink, store and pending offsets."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self._writer: StateWriter | None = None
        self._last_store_check = time.monotonic()

    def run(
        self,
        commit: Commit,
        partitions: Iterable[tuple[str, int]] | None = None,
        *,
        wait: bool = True,
    ) -> bool:
        """One cycle. ``partitions`` limits it to those (on revocation). With ``wait=False``
        and a background writer, step 2 runs off the hot loop and step 3 happens in
        :meth:`poll` once it is done; the order per cycle is the same. Returns False when
        nothing needed committing (or the previous write is still running)."""
        e = self.e
        if e.halted:
            log.warning("not committing: %s", e.halted)
            return False
        self.poll(commit, block=wait)  # 0. earlier cycles first, in order
        # exactly-once commits while the previous cycle's states are being written (E3 and E4
        # follow E2 in order on the writer; two snapshot buffers), never more than that
        limit = 2 if e.transactional else 1
        busy = not wait and self._writer is not None and self._writer.busy(limit)
        if busy and not e.transactional:
            return False  # still writing the previous snapshot: try again next interval
        t0 = time.perf_counter()
        # (exactly-once: the open transaction holds every partition's outputs: all commit)
        tps = None if partitions is None or e.transactional else set(partitions)
        offsets = {tp: o for tp, o in e.pending.items() if tps is None or tp in tps}
        slots = e.cache.dirty_slots(None if tps is None else {p for _, p in tps})
        if not offsets and not slots.size:
            self._check_store(commit, wait)
            return False
        if e.transactional:
            if busy:  # E2 only: the states stay dirty, a later cycle writes and marks them
                return self._commit_only(commit, offsets)
            return self._run_transactional(commit, offsets, slots, wait, t0)
        e.sink.flush()  # 1. every forecast, dead letter and alert so far is acknowledged
        failpoint("after_flush")
        t1 = time.perf_counter()
        job = CommitJob(e.cache.snapshot(slots, everything=tps is None), offsets, e.topic_id)
        t2 = time.perf_counter()
        e.metrics.stage_seconds.labels("flush").observe(t1 - t0)
        e.metrics.stage_seconds.labels("snapshot").observe(t2 - t1)
        e.cache.dirty[slots] = False  # a key changed again later is dirty again
        self._submit(job, commit, wait)
        e.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)
        return True

    def _run_transactional(
        self, commit: Commit, offsets: Offsets, slots: np.ndarray, wait: bool, t0: float
    ) -> bool:
        """The exactly-once cycle: E1 snapshot, E2 commit, then E3 and E4 (:meth:`_save`)."""
        e = self.e
        job = CommitJob(e.cache.snapshot(slots, everything=True), offsets, e.topic_id, True)
        e.cache.dirty[slots] = False  # (an aborted E2 rewinds: every cached state is dropped)
        t1 = time.perf_counter()
        failpoint("before_commit")
        self._commit_transaction(commit, offsets)  # E2
        failpoint("after_commit")
        t2 = time.perf_counter()
        self._committed(offsets)
        e.metrics.stage_seconds.labels("snapshot").observe(t1 - t0)
        e.metrics.stage_seconds.labels("flush").observe(t2 - t1)
        self._submit(job, commit, wait)  # E3 and E4
        e.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)
        return True

    def _commit_only(self, commit: Commit, offsets: Offsets) -> bool:
        """Exactly-once with the writer still busy: commit the transaction (outputs visible
        every interval whatever Redis takes) and leave the states dirty for the next snapshot;
        the applied offsets stay behind until then (a crash replays from them)."""
        if not offsets:
            return False
        self._commit_transaction(commit, offsets)
        self._committed(offsets)
        return True

    def _commit_transaction(self, commit: Commit, offsets: Offsets) -> None:
        """E2: outputs and offsets together, or not at all (counted either way)."""
        try:
            commit(offsets)
        except Exception:
            self.e.metrics.transactions.labels(outcome="aborted").inc()
            raise
        self.e.metrics.transactions.labels(outcome="committed").inc()

    def _committed(self, offsets: Offsets) -> None:
        """Offsets just committed. At-least-once: their states are stored (step 2 came
        first), so a rewind resumes there. Exactly-once: a rewind resumes where the states
        are stored (:meth:`_stored`) and replays up to here for state only."""
        e = self.e
        for tp, o in offsets.items():
            if e.pending.get(tp) == o:
                del e.pending[tp]
            if e.transactional:
                e.committed_at[tp] = o
            elif tp in e.resume_at:
                e.resume_at[tp] = o

    def _stored(self, offsets: Offsets) -> None:
        """Exactly-once: the states of events below ``offsets`` are stored and marked."""
        e = self.e
        for tp, o in offsets.items():
            if tp in e.resume_at and o > e.resume_at[tp]:
                e.resume_at[tp] = o

    def _submit(self, job: CommitJob, commit: Commit, wait: bool) -> None:
        self._last_store_check = time.monotonic()
        if wait or self._writer is None:
            self._finish(job, self._save(job), commit)  # 2. and 3., here and now
        else:
            self._writer.submit(job)  # 2. in the background; 3. in poll

    def _check_store(self, commit: Commit, wait: bool) -> None:
        """An idle worker still looks at the store every few seconds (an empty write checks
        the epoch marker), so that a wipe is noticed while it holds the keys' states."""
        if time.monotonic() - self._last_store_check >= STORE_CHECK_S:
            empty = self.e.cache.snapshot(np.empty(0, np.int64))
            self._submit(CommitJob(empty, {}), commit, wait)

    def _save(self, job: CommitJob) -> SaveResult:
        """2. states, each carrying the offset of its last applied event (an empty snapshot
        only checks that the store still holds its data)."""
        e = self.e
        t0 = time.monotonic()
        job.snapshot.complete()  # the rows still owed (copy-on-write: runtime/cache.py)
        e.metrics.stage_seconds.labels("snapshot_rows").observe(time.monotonic() - t0)
        res: SaveResult = e.retry(lambda: e.store.save(job.snapshot))
        job.snapshot.release()  # its buffer serves a later snapshot
        if (took := time.monotonic() - t0) > SLOW_SAVE_S:
            log.warning(
                "writing %d state(s) took %.1f s (Redis slow or paused?): offsets wait for it",
                len(job.snapshot.keys), took,
            )  # fmt: skip
        if job.committed and not res.wiped:
            failpoint("after_states")
            marks = {p: o for (_, p), o in job.offsets.items()}
            e.retry(lambda: e.store.save_marks(job.topic_id, marks))  # E4
        return res

    def _finish(self, job: CommitJob, res: SaveResult, commit: Commit) -> None:
        e = self.e
        e.metrics.state_written.inc(res.written)
        if e.store.wiped() or res.wiped:
            # nothing (or not everything) of this cycle reached the store: write every cached
            # key in full next cycle, and commit these offsets only after that
            e.after_wipe()
            return
        if res.refused:
            # another worker has advanced these keys: our copy is stale, never reuse it
            e.metrics.state_refused.inc(len(res.refused))
            log.warning(
                "%d state write(s) refused: a newer state is stored (rebalanced away?)",
                len(res.refused),
            )
            e.cache.evict(e.cache.index[k] for k in res.refused if k in e.cache.index)
        if job.committed:  # exactly-once: committed before the write (E2)
            self._stored(job.offsets)
            e.metrics.commits.labels(outcome="ok").inc()
            return
        failpoint("after_save")
        offsets = job.offsets if job.topic_id == e.topic_id else {}  # not a re-created topic's
        if offsets and not e.halted:
            commit(offsets)  # 3. only now do the offsets move
            self._committed(offsets)
        if job.offsets or job.snapshot.keys:
            e.metrics.commits.labels(outcome="ok").inc()

    def start_writer(self) -> None:
        """Write states on a background thread (the worker's hot loop never waits for the
        store, except to load keys it has never seen)."""
        if self._writer is None:
            self._writer = StateWriter(self._save)

    def poll(self, commit: Commit, block: bool = False) -> None:
        """Commit the offsets of background writes that finished (all of them if ``block``).

        A write that failed for good re-raises here, on the driver's thread.
        """
        if self._writer is None:
            return
        for job, res in self._writer.done(block):
            self._finish(job, res, commit)

    def stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
