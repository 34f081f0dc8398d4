"""The confluent-kafka driver around the engine: consume ticks, commit cycles, rebalances,
Redis outages, signals, metrics and health.

A tick is one ``consumer.consume(max_batch, max_wait)``: it closes when ``max_batch`` messages
are there or ``max_wait_ms`` has passed. The commit cycle runs every ``commit_interval_ms``, on
partition revocation, and on shutdown.

Outputs that are not acknowledged (a forecast, dead letter or alert refused by the producer or
not delivered) never let an offset move past them: the worker rewinds — forgets every state
and offset since the last commit, seeks each partition back to it and consumes again, with a
back-off while it keeps failing (unready meanwhile). Any other error is a crash path: the engine
is halted first, so the shutdown (whose revocation would otherwise run a commit cycle) commits
nothing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from stream_lstm.config import WorkerSettings
from stream_lstm.drivers.assembly import build_engine, counts
from stream_lstm.drivers.kafka_client import (
    CONSUMER_DEFAULTS,
    TransactionalSink,
    batch_of,
    commit_offsets,
    make_consumer,
)
from stream_lstm.errors import KafkaClientError, PublishError
from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.runtime import Forecaster
from stream_lstm.runtime.commit import Offsets

log = logging.getLogger(__name__)
FENCED = {
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError._ASSIGNMENT_LOST,
}


class Worker:
    def __init__(self, s: WorkerSettings) -> None:
        self.s = s
        self.metrics = WorkerMetrics()
        self.stop_requested = threading.Event()
        self.parts = parts = build_engine(s, self.metrics, self.stop_requested.is_set)
        self.device = parts.device
        self.store, self.sink, self.engine = parts.store, parts.sink, parts.engine
        self.consumer = make_consumer(s.bootstrap, s.group, s.consumer_config())
        # exactly-once: the sink commits offsets inside its transactions (KIP-447 fencing with
        # the group's metadata as it is at each commit)
        self.txn = self.sink if isinstance(self.sink, TransactionalSink) else None
        if self.txn is not None:
            self.txn.group_metadata = self.consumer.consumer_group_metadata
        strategy = s.consumer_config().get(
            "partition.assignment.strategy", str(CONSUMER_DEFAULTS["partition.assignment.strategy"])
        )
        self._cooperative = "cooperative" in strategy
        self._publish_failed: PublishError | None = None  # seen where the loop cannot rewind
        self._rewind_delay = 0.5  # back-off before consuming again after a rewind (doubles)
        self._rewound = False  # unready since a rewind, until a commit succeeds

    # -- start-up ----------------------------------------------------------------------------
    def start(self) -> None:
        s = self.s
        partitions = self.parts.start(s, self.metrics)
        self.consumer.subscribe(
            [s.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.parts.log_started(s, "worker", partitions)
        self.parts.ready = True

    @property
    def forecaster(self) -> Forecaster:
        return self.parts.forecaster  # changes on a hot model switch

    @property
    def metrics_port(self) -> int | None:
        return self.parts.metrics_port

    # -- the loop ----------------------------------------------------------------------------
    def run(self, stop_when: Callable[[], bool] | None = None) -> int:
        """Consume until SIGTERM/SIGINT (or ``stop_when()``); then commit, leave, return 0."""
        s = self.s
        wait = s.max_wait_ms / 1000.0
        commit_every = s.commit_interval_ms / 1000.0
        last_commit = last_lag = last_log = time.monotonic()
        try:
            while not self.stop_requested.is_set() and not (stop_when and stop_when()):
                msgs = self.consumer.consume(num_messages=s.max_batch, timeout=wait)
                now = time.monotonic()
                self.parts.beat()
                if self._publish_failed is not None:  # seen in a rebalance callback
                    self._rewind(self._publish_failed)
                    continue
                batch = batch_of(msgs, s.input_topic)
                try:
                    if len(batch):
                        self.engine.process(batch)
                    self.sink.poll()
                    self._guarded(self.engine.poll_commits, self._commit)
                    if now - last_commit >= commit_every:
                        self._guarded(self.engine.commit_cycle, self._commit, wait=False)
                        last_commit = time.monotonic()
                    self._guarded(self.parts.maybe_reload, s, self.metrics, self._commit)
                except PublishError as e:
                    self._rewind(e)
                    continue
                if now - last_lag >= 5.0:
                    self._update_lag()
                    self.parts.check_input_topic()
                    last_lag = now
                if now - last_log >= 30.0:
                    self._log_progress()
                    last_log = now
            self._commit_cycle()
        except BaseException as e:
            # a crash path (or undelivered outputs at the final cycle): nothing more is
            # committed, not even by the revocation that closing the consumer runs
            self.engine.halt(f"{type(e).__name__}: {e}")
            raise
        finally:
            self._shutdown()
        return 0

    def request_stop(self, *_: Any) -> None:
        self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def _shutdown(self) -> None:
        self.parts.ready = False
        try:
            self.consumer.close()  # leaves the group (the revoke callback commits first)
        except (KafkaException, RuntimeError) as e:
            log.warning("closing the consumer: %s", e)
        try:
            self.sink.flush()
        except Exception as e:
            log.warning("final flush: %s", e)
        if self.txn is not None:
            self.txn.close()  # a crash path's open transaction: aborted now, not at its timeout
        if self.parts.health:
            self.parts.health.stop()
        self.engine.stop_writer()
        self.store.close()
        log.info("worker stopped: %s", self._counts())

    # -- undelivered outputs -----------------------------------------------------------------
    def _rewind(self, e: PublishError) -> None:
        """Outputs were not acknowledged: commit nothing past them. Forget every state and
        offset since the last commit, seek back to it, and consume again after a back-off."""
        self._publish_failed = None
        self.metrics.publish_failures.inc()
        self.parts.ready = False  # until a commit cycle succeeds again
        self._rewound = True
        delay = self._rewind_delay
        self._rewind_delay = min(delay * 2, 30.0)
        self._guarded(self.engine.poll_commits, self._commit, block=True)  # flushed cycles
        dropped = self.engine.rewind()
        self.sink.reset()
        targets = dict(self.engine.resume_at)
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for (topic, p), offset in targets.items():
            if (topic, p) not in owned:
                continue  # revoked meanwhile: its new owner consumes it from the last commit
            try:
                self.consumer.seek(TopicPartition(topic, p, offset))
            except KafkaException as err:
                # consuming on from here would skip what was dropped: a crash path instead
                # (nothing is committed; a restart resumes from the last commit)
                raise KafkaClientError(
                    f"cannot seek {topic}[{p}] back to {offset} after undelivered outputs: {err}",
                    err,
                ) from None
        log.error(
            "outputs not acknowledged (%s): nothing is committed past them; %d cached states "
            "dropped, consuming again from the last committed offsets %s in %.1f s",
            e, dropped, {p: o for (_, p), o in sorted(targets.items())}, delay,
        )  # fmt: skip
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.stop_requested.is_set():
            self.parts.beat()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    # -- commit cycle and rebalances -------------------------------------------------------------
    def _commit(self, offsets: Offsets) -> None:
        if self.txn is not None:
            self.txn.commit(offsets)  # outputs and offsets together (PublishError: aborted)
        else:
            self._commit_offsets(offsets)
        if self._rewound and not self.stop_requested.is_set():
            log.info("outputs acknowledged and offsets committed again: ready")
            self.parts.ready = True
        self._rewound = False
        self._rewind_delay = 0.5

    def _commit_offsets(self, offsets: Offsets) -> None:
        try:
            commit_offsets(self.consumer, offsets)
        except KafkaException as e:
            err = e.args[0] if e.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            if code in FENCED:
                # a rebalance is under way, or this worker was paused past its session timeout.
                # Forget these offsets (committed later by a newer tick while we own the
                # partitions; never committed stale once they moved), but keep the cached
                # states: they hold events applied since the last write, and the rebalance
                # callbacks (revoke, lost) drop the keys of partitions that really moved. The
                # conditional state write stops a zombie from overwriting newer states.
                log.warning("offset commit refused (%s): a rebalance is under way", err)
                self.metrics.commits.labels(outcome="fenced").inc()
                self.engine.forget_offsets(list(offsets))
            else:
                self.metrics.commits.labels(outcome="failed").inc()
            raise KafkaClientError(f"offset commit failed: {err}", err) from None

    def _commit_cycle(self, partitions: list[tuple[str, int]] | None = None) -> None:
        """A whole commit cycle, waiting for the Redis write (revocation, shutdown)."""
        self._guarded(self.engine.commit_cycle, self._commit, partitions)

    def _guarded(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """Run a commit step; a refused or failed offset commit leaves the offsets pending for
        the next cycle. Undelivered outputs (PublishError) are not that: they propagate."""
        try:
            fn(*args, **kw)
        except PublishError:
            raise
        except KafkaClientError as e:
            log.warning("%s; offsets stay pending until the next cycle", e)

    def _on_assign(self, consumer: Any, parts: list[TopicPartition]) -> None:
        # before any event of these partitions: is the topic still the one the records know?
        self.parts.check_input_topic()
        if self.txn is not None and parts:
            self._catch_up(consumer, parts)
        self.metrics.assigned.inc(len(parts))
        log.info("assigned %s", sorted(tp.partition for tp in parts))

    def _catch_up(self, consumer: Any, parts: list[TopicPartition]) -> None:
        """Exactly-once: partitions whose stored states trail their committed offset start
        from their applied offset, for state only up to the committed one
        (:meth:`Engine.begin_catch_up`)."""
        topic = parts[0].topic
        for attempt in range(3):
            try:
                got = consumer.committed(parts, timeout=20)
                break
            except KafkaException as e:
                if attempt == 2:  # a crash path: nothing committed; a restart tries again
                    raise KafkaClientError(
                        f"reading the committed offsets of {topic} (exactly-once recovery "
                        f"needs them): {e.args[0] if e.args else e}",
                        e.args[0] if e.args else None,
                    ) from None
                log.warning("reading the committed offsets: %s; again", e)
        committed = {tp.partition: tp.offset for tp in got}
        applied = self.engine.retry(
            lambda: self.store.load_marks(self.engine.topic_id, sorted(committed))
        )
        start = self.engine.begin_catch_up(topic, applied, committed)
        if not start:
            return
        for p, offset in start.items():
            low, _ = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if low > offset:
                log.error(
                    "%s[%d]: events %d to %d are gone from the topic (retention): keys with "
                    "events there keep states without them",
                    topic, p, offset, low - 1,
                )  # fmt: skip
        tps = [TopicPartition(topic, tp.partition, start.get(tp.partition, OFFSET_INVALID))
               for tp in parts]  # fmt: skip
        if self._cooperative:
            consumer.incremental_assign(tps)
        else:
            consumer.assign(tps)

    def _on_revoke(self, consumer: Any, parts: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in parts]
        try:
            if self.engine.halted is None and self._publish_failed is None:
                self._commit_cycle(tps)
        except PublishError as e:
            self._publish_failed = e  # the loop rewinds what it still owns
            log.error("outputs not acknowledged at revocation, offsets not committed: %s", e)
        except Exception as e:
            log.error("commit cycle on revocation failed, offsets not committed: %s", e)
        finally:
            n = self.engine.drop_partitions(tps)
            self._forget_lag(tps)
            self.metrics.assigned.dec(len(parts))
            log.info("revoked %s (%d cached keys dropped)", sorted(p for _, p in tps), n)

    def _on_lost(self, consumer: Any, parts: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in parts]
        if self.txn is not None and self.txn.in_txn and self._publish_failed is None:
            # the open transaction holds outputs of the lost partitions' events, which their
            # new owner produces again: it must abort (the loop rewinds what is still ours)
            self._publish_failed = PublishError(f"partitions {sorted(p for _, p in tps)} lost")
        n = self.engine.drop_partitions(tps)  # nothing may be committed for lost partitions
        self._forget_lag(tps)
        self.metrics.assigned.dec(len(parts))
        log.warning("lost %s (%d cached keys dropped, no commit)", sorted(p for _, p in tps), n)

    def _forget_lag(self, tps: list[tuple[str, int]]) -> None:
        """Partitions no longer ours: their lag is their new owner's to report."""
        for _, p in tps:
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(str(p))

    def _update_lag(self) -> None:
        try:
            assigned = self.consumer.assignment()
            if not assigned:
                return
            positions = self.consumer.position(assigned)
            unread = [tp for tp in positions if tp.offset < 0]
            if unread:  # nothing consumed since the assignment: where it starts, the commit
                known = {tp.partition: tp for tp in positions if tp.offset >= 0}
                for tp in self.consumer.committed(unread, timeout=2):
                    known[tp.partition] = tp
                positions = list(known.values())
            for tp in positions:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:  # (no cached watermark yet)
                    _, high = self.consumer.get_watermark_offsets(tp, timeout=2)
                if tp.offset >= 0 and high >= 0:
                    self.metrics.lag.labels(partition=str(tp.partition)).set(
                        max(0, high - tp.offset)
                    )
        except KafkaException as e:
            log.debug("lag: %s", e)

    def _counts(self) -> str:
        return counts(self.metrics, self.engine.cached_keys)

    def _log_progress(self) -> None:
        log.info("%s", self._counts())
