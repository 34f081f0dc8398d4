"""Thin confluent-kafka wrappers: librdkafka configuration in one place, a Sink, a Source.

Delivery semantics: ``enable.auto.commit=false`` and ``enable.auto.offset.store=false``:
offsets move only when the engine's commit cycle commits them, after the forecasts are
acknowledged and the states written. The producer is idempotent with ``acks=all``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]
from confluent_kafka.admin._metadata import ClusterMetadata

from stream_lstm.errors import ConfigError, KafkaClientError, PublishError
from stream_lstm.redact import redact_kafka, scrub
from stream_lstm.runtime.events import MessageBatch

log = logging.getLogger(__name__)

# Defaults chosen from the benchmark runs (docs/benchmarks.md); any key can be overridden by
# the pass-through options (--kafka-option key=value), which reach every client.
CONSUMER_DEFAULTS = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "fetch.wait.max.ms": 10,
    # librdkafka 2.x backs off 1 s when its prefetch queue is full: stalls of ~1 s measured;
    # 0 makes it spin under a backlog (CPU), 10 ms costs neither (docs/benchmarks.md)
    "fetch.queue.backoff.ms": 10,
    "queued.max.messages.kbytes": 65536,
}
PRODUCER_DEFAULTS = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 2,
    "batch.num.messages": 10000,
    "queue.buffering.max.messages": 1_000_000,
    "compression.type": "lz4",
    "delivery.report.only.error": True,
}


LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


def client_config(bootstrap: str, options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings every client shares: bootstrap servers plus pass-through options (security).

    librdkafka's own log lines go to the ``librdkafka`` Python logger.
    """
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG}
    conf.update(options or {})
    return conf


def _why(e: KafkaException) -> str:
    """A client error's message (``KafkaError.str()``) without the repr around it."""
    err = e.args[0] if e.args else None
    return err.str() if isinstance(err, KafkaError) else str(e)


def make_producer(
    bootstrap: str,
    options: Mapping[str, str] | None,
    on_error: Callable[[KafkaError, Message], None],
) -> Producer:
    conf = {**PRODUCER_DEFAULTS, **client_config(bootstrap, options)}

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            on_error(err, msg)

    conf["on_delivery"] = on_delivery
    try:
        return Producer(conf)
    except KafkaException as e:
        raise ConfigError(
            f"invalid Kafka producer settings {redact_kafka(conf)}: {scrub(_why(e), conf)}"
        ) from None


def make_consumer(bootstrap: str, group: str, options: Mapping[str, str] | None) -> Consumer:
    conf = {**CONSUMER_DEFAULTS, **client_config(bootstrap, options), "group.id": group}
    try:
        return Consumer(conf)
    except KafkaException as e:
        raise ConfigError(
            f"invalid Kafka consumer settings {redact_kafka(conf)}: {scrub(_why(e), conf)}"
        ) from None


def make_admin(bootstrap: str, options: Mapping[str, str] | None) -> AdminClient:
    return AdminClient(client_config(bootstrap, options))


def cluster_metadata(
    bootstrap: str, options: Mapping[str, str] | None, timeout_s: float = 15.0
) -> ClusterMetadata:
    """The cluster's metadata (topics and their partitions).

    Reaching the broker proves the connection settings: refused credentials are reported as
    such (librdkafka itself only says "transport failure").
    """
    errors: list[KafkaError] = []
    conf: dict[str, Any] = {**client_config(bootstrap, options), "error_cb": errors.append}
    try:
        admin = AdminClient(conf)
    except KafkaException as e:
        raise ConfigError(
            f"invalid Kafka settings {redact_kafka(conf)}: {scrub(_why(e), conf)}"
        ) from None
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        admin.poll(0.5)  # serve the error callbacks that say why
        auth = [x for x in errors if x.code() == KafkaError._AUTHENTICATION]
        if auth:
            raise ConfigError(
                f"Kafka at {bootstrap} refused the credentials: {auth[0].str()} "
                "(check sasl.username / sasl.password / sasl.mechanism)"
            ) from None
        why = errors[0].str() if errors else str(e)
        raise KafkaClientError(f"cannot reach Kafka at {bootstrap}: {why}", e) from None


def check_topics(
    bootstrap: str, options: Mapping[str, str] | None, topics: list[str], timeout_s: float = 15.0
) -> dict[str, int]:
    """Partition count of each topic; a ConfigError names missing ones and how to create them.

    A topic created a moment ago may not be in the broker's metadata yet: missing ones are
    looked up again for up to 3 s before they are reported.
    """
    deadline = time.monotonic() + 3.0
    while True:
        md = cluster_metadata(bootstrap, options, timeout_s)
        missing = [t for t in topics if t not in md.topics or md.topics[t].error is not None]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if missing:
        what = (
            f"topic {missing[0]} does not exist"
            if len(missing) == 1
            else f"topics {', '.join(missing)} do not exist"
        )
        raise ConfigError(
            f"{what} on {bootstrap}; create {'it' if len(missing) == 1 else 'them'} first, e.g. "
            f"`stream-lstm topics create --bootstrap {bootstrap} "
            + " ".join(f"{t}:8" for t in missing)
            + "`"
        )
    return {t: len(md.topics[t].partitions) for t in topics}


NO_TOPIC_ID = bytes(16)


def topic_id(admin: AdminClient, topic: str, timeout_s: float = 10.0) -> bytes:
    """The topic's id (16 bytes; a re-created topic has a new one), or zeros if the broker
    does not say (brokers before Kafka 2.8)."""
    try:
        desc = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)[topic]
        uuid = desc.result().topic_id
    except KafkaException as e:
        raise KafkaClientError(f"describing topic {topic}: {e.args[0]}", e.args[0]) from None
    if uuid is None:
        return NO_TOPIC_ID
    return b"".join(
        bits.to_bytes(8, "big", signed=True)
        for bits in (uuid.get_most_significant_bits(), uuid.get_least_significant_bits())
    )


def max_message_bytes(
    admin: AdminClient, topics: list[str], timeout_s: float = 10.0
) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` (the largest record batch its broker accepts)."""
    out = {}
    futures = admin.describe_configs(
        [ConfigResource("topic", t) for t in topics], request_timeout=timeout_s
    )
    for res, fut in futures.items():
        try:
            out[res.name] = int(fut.result()["max.message.bytes"].value)
        except (KafkaException, KeyError, ValueError) as e:
            log.warning("max.message.bytes of %s unknown (%s): assuming 1048588", res.name, e)
            out[res.name] = 1_048_588
    return out


class KafkaSink:
    """The engine's Sink over a confluent-kafka Producer.

    A message the producer refuses at once (too large, unknown topic) raises
    :class:`PublishError` as a delivery failure does at :meth:`flush`: the caller must not
    commit past it (the worker rewinds, see ``drivers/confluent.py``)."""

    def __init__(
        self, bootstrap: str, options: Mapping[str, str] | None, flush_timeout_s: float = 120.0
    ) -> None:
        self.failures: list[str] = []
        self._bootstrap, self._options = bootstrap, options
        self.producer = make_producer(bootstrap, options, self._on_error)
        self.flush_timeout_s = flush_timeout_s
        # librdkafka refuses larger messages itself (MSG_SIZE_TOO_LARGE)
        self.max_message_bytes = int((options or {}).get("message.max.bytes", 1_000_000))

    def _on_error(self, err: KafkaError, msg: Message) -> None:
        self.failures.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, headers=headers)  # type: ignore[arg-type]
                return
            except BufferError:  # the local queue is full: let deliveries drain
                self.producer.poll(0.05)
            except KafkaException as e:
                raise PublishError(
                    f"producing a {len(value or b'')}-byte message to {topic} failed: "
                    f"{e.args[0].str() if e.args else e}",
                    e.args[0] if e.args else None,
                ) from None

    def produce_many(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> None:
        produce = self.producer.produce
        for k, v in zip(keys, values, strict=True):
            try:
                produce(topic, v, k)
            except (BufferError, KafkaException):
                self.produce(topic, k, v)  # the slow path: waits for the queue, or raises

    def reset(self) -> None:
        """After a failed delivery: drop what is still queued or in flight (it is produced
        again when the events are consumed again) and start over with a new producer."""
        old = self.producer
        try:
            old.purge(in_queue=True, in_flight=True, blocking=True)
            old.flush(0)  # serve the purged messages' reports
        except (KafkaException, RuntimeError) as e:
            log.warning("purging the producer: %s", e)
        self.producer = make_producer(self._bootstrap, self._options, self._on_error)
        self.failures.clear()

    def poll(self) -> None:
        self.producer.poll(0)

    def flush(self) -> None:
        remaining = self.producer.flush(self.flush_timeout_s)
        if self.failures:
            first, n = self.failures[0], len(self.failures)
            self.failures.clear()
            raise PublishError(f"{n} message(s) were not delivered, e.g. {first}")
        if remaining:
            raise PublishError(
                f"{remaining} message(s) still undelivered after {self.flush_timeout_s:.0f} s"
            )


# a transaction left open by a crashed worker holds back read_committed consumers of the output
# topics until the broker aborts it: 10 s (librdkafka's default is 60 s), as Kafka Streams
TRANSACTIONAL_DEFAULTS = {"transaction.timeout.ms": 10000}


class TransactionalSink(KafkaSink):
    """The Sink for exactly-once processing: everything produced between two commits is one
    Kafka transaction, committed together with the consumer's offsets (KIP-447: the consumer
    group's metadata fences a worker that lost its partitions).

    :meth:`commit` is the driver's offset commit. A transaction that cannot commit raises
    :class:`PublishError` after it is aborted (the worker rewinds: its outputs are never
    visible to read_committed consumers, its offsets never moved); :meth:`reset` starts over
    with a new producer when the old one cannot go on (a fatal error: fenced by a newer
    instance with the same ``transactional.id``)."""

    transactional = True

    def __init__(
        self,
        bootstrap: str,
        options: Mapping[str, str] | None,
        flush_timeout_s: float,
        transactional_id: str,
    ) -> None:
        self.transactional_id = transactional_id
        opts = {**TRANSACTIONAL_DEFAULTS, **(options or {}), "transactional.id": transactional_id}
        super().__init__(bootstrap, {k: str(v) for k, v in opts.items()}, flush_timeout_s)
        self.group_metadata: Callable[[], Any] | None = None  # the consumer's, at commit time
        # the broker aborts a transaction open longer than this: waiting longer for a commit or
        # an abort is pointless (and a stuck coordinator connection is left for a new producer)
        txn_s = float(str(opts["transaction.timeout.ms"])) / 1000.0
        self.call_timeout_s = min(flush_timeout_s, max(5.0, txn_s))
        self.in_txn = False
        self._abandoned: list[Producer] = []  # stuck in a call (see _abandon)
        self._initialised = False

    def start(self, timeout_s: float | None = None) -> None:
        """Register the transactional id: the broker aborts what an earlier producer with the
        same id left open (a crashed incarnation of this worker) and fences that producer."""
        try:
            self.producer.init_transactions(timeout_s or self.flush_timeout_s)
        except KafkaException as e:
            raise KafkaClientError(
                f"initialising transactions as {self.transactional_id!r}: {_why(e)} (exactly-once "
                "needs brokers with transactions: transaction.state.log.* settings, Kafka ≥ 2.5)",
                e.args[0] if e.args else None,
            ) from None
        self._initialised = True

    def _begin(self) -> None:
        if not self.in_txn:
            if not self._initialised:  # a new producer after a fatal error: the worker rewinds
                try:  # and tries again after a back-off while this fails (broker down)
                    self.start(self.call_timeout_s)
                except KafkaClientError as e:
                    raise PublishError(str(e), e.cause) from None
            self.in_txn = True  # (also when it fails: reset() then aborts or starts over)
            try:
                self.producer.begin_transaction()
            except KafkaException as e:
                raise PublishError(f"beginning a transaction: {_why(e)}", e.args[0]) from None

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self._begin()
        super().produce(topic, key, value, headers)

    def produce_many(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> None:
        self._begin()
        super().produce_many(topic, keys, values)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Send ``offsets`` into the open transaction and commit it: every output produced
        since the last commit and these offsets become visible together, or not at all."""
        if self.failures:  # a delivery already failed: the transaction can only abort
            self._abort_and_raise(f"{len(self.failures)} message(s) not delivered, e.g. "
                                  f"{self.failures[0]}")  # fmt: skip
        assert self.group_metadata is not None, "the driver sets group_metadata"
        self._begin()
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        deadline = time.monotonic() + self.call_timeout_s
        try:
            if tps:
                self._bounded(
                    "send_offsets_to_transaction",
                    self.producer.send_offsets_to_transaction,
                    tps, self.group_metadata(), self.call_timeout_s,
                )  # fmt: skip
            while True:
                try:
                    left = max(1.0, deadline - time.monotonic())
                    self._bounded("commit_transaction", self.producer.commit_transaction, left)
                    break
                except KafkaException as e:
                    err = e.args[0] if e.args else None
                    if (
                        isinstance(err, KafkaError)
                        and err.retriable()
                        and time.monotonic() < deadline
                    ):
                        continue  # a timeout: committing again is allowed
                    raise
        except KafkaException as e:
            self._abort_and_raise(_why(e), e.args[0] if e.args else None)
        except _HungError as e:
            self._abandon(str(e))
        self.in_txn = False
        if self.failures:  # (a report served during the commit; the broker refused the commit)
            self._abort_and_raise(f"{len(self.failures)} message(s) not delivered")

    def _bounded(self, what: str, call: Callable[..., Any], *args: Any) -> None:
        """``call(*args)`` on a thread of its own, waited for at most its own timeout and 5 s:
        librdkafka's transactional calls can block past their timeout when the coordinator
        they cached is gone (a broker restart; confluentinc/librdkafka #5511)."""
        out: list[BaseException | None] = []

        def run() -> None:
            try:
                call(*args)
                out.append(None)
            except BaseException as e:
                out.append(e)

        t = threading.Thread(target=run, name=f"txn-{what}", daemon=True)
        t.start()
        t.join(self.call_timeout_s + 5.0)
        if not out:
            raise _HungError(f"{what} did not return within {self.call_timeout_s + 5.0:.0f} s")
        if out[0] is not None:
            raise out[0]

    def _abandon(self, why: str) -> None:
        """A producer stuck in a transactional call is left as it is (its thread keeps it; it
        is never destroyed: that could block too) and replaced; the new producer's
        ``init_transactions`` with the same id fences it, so whatever it might still commit is
        refused. The worker rewinds."""
        log.error(
            "transaction not committed: %s (the transaction coordinator does not answer); "
            "starting a new producer with the same transactional id", why,
        )  # fmt: skip
        self._abandoned.append(self.producer)
        self._new_producer()
        self.in_txn = False
        self.failures.clear()
        raise PublishError(f"the transaction could not commit: {why}")

    def _new_producer(self) -> None:
        """A new producer with the same transactional id; ``init_transactions`` (which fences
        the old one) runs before its first transaction."""
        self.producer = make_producer(self._bootstrap, self._options, self._on_error)
        self._initialised = False

    def _abort_and_raise(self, why: str, err: KafkaError | None = None) -> None:
        log.error("transaction not committed (%s): aborting it", why)
        code = err.code() if isinstance(err, KafkaError) else None
        if code in (
            KafkaError._FENCED,
            KafkaError.PRODUCER_FENCED,
            KafkaError.INVALID_PRODUCER_EPOCH,
        ):
            log.error(
                "the broker fenced this producer (transactional id %r): either another worker "
                "uses the same --transactional-id (give each worker its own), or this "
                "transaction stayed open past transaction.timeout.ms (the worker paused, or a "
                "commit took that long) and the broker aborted it",
                self.transactional_id,
            )
        self.reset()
        raise PublishError(f"the transaction could not commit and was aborted: {why}", err)

    def reset(self) -> None:
        """Abort the open transaction (its outputs are never seen by read_committed
        consumers); a producer that cannot abort (fatal: fenced, or timed out on the broker)
        is replaced by a new one with the same id."""
        self.failures.clear()
        if not self.in_txn:
            return
        self.in_txn = False
        try:
            self._bounded("abort_transaction", self.producer.abort_transaction, self.call_timeout_s)
        except (KafkaException, _HungError) as e:
            why = _why(e) if isinstance(e, KafkaException) else str(e)
            log.warning("aborting the transaction: %s; starting a new producer", why)
            try:
                self.producer.purge(in_queue=True, in_flight=True, blocking=False)
            except (KafkaException, RuntimeError) as err:
                log.warning("purging the producer: %s", err)
            # (the old producer's transaction is aborted by the broker: by the new producer's
            # init_transactions with the same id, or at transaction.timeout.ms)
            holder = [self.producer]
            self._new_producer()
            # destroying a producer whose coordinator connection is stuck can block
            # (librdkafka): on a thread of its own, which holds the last reference
            threading.Thread(target=holder.clear, name="retired-producer", daemon=True).start()
        self.failures.clear()

    def flush(self) -> None:
        """Outputs are acknowledged by :meth:`commit`; here only undelivered ones are raised."""
        self.producer.flush(0)
        if self.failures:
            self._abort_and_raise(f"{len(self.failures)} message(s) not delivered, e.g. "
                                  f"{self.failures[0]}")  # fmt: skip

    def close(self) -> None:
        """At shutdown: abort what is still open (nothing committed after the last cycle)."""
        if self.in_txn:
            try:
                self.producer.abort_transaction(10)
            except KafkaException as e:
                log.warning("aborting the last transaction: %s", _why(e))
            self.in_txn = False


class _HungError(Exception):
    """A transactional call that did not return in time."""


def batch_of(msgs: list[Message], topic: str) -> MessageBatch:
    """Consumed messages as columns; error events are logged and left out (EOF silently)."""
    good = [m for m in msgs if m.error() is None]
    if len(good) < len(msgs):
        for m in msgs:
            err = m.error()
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", err)
    return MessageBatch.columns(
        topic,
        len(good),
        (m.key() for m in good),
        (m.value() for m in good),
        (cast(int, m.partition()) for m in good),  # set on every message without an error
        (cast(int, m.offset()) for m in good),
        (m.timestamp()[1] for m in good),
    )


def commit_offsets(consumer: Consumer, offsets: Mapping[tuple[str, int], int]) -> None:
    """Synchronous commit of explicit offsets (the next offset to read per partition)."""
    tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    result = consumer.commit(offsets=tps, asynchronous=False)
    for tp in result or []:
        if tp.error is not None:
            raise KafkaException(tp.error)
