"""The dashboard's Kafka side: one consumer thread that reads the input and the forecast topics
and fills a :class:`~stream_lstm.dashboard.store.SeriesStore`.

The consumer only reads: a unique group id, ``enable.auto.commit=false``,
``isolation.level=read_committed`` (no forecast of an aborted transaction), partitions assigned
explicitly (no group membership, so it never takes partitions from a worker's group and starts
at once, without a rebalance).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping

import msgspec
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

from stream_lstm.dashboard.store import SeriesStore
from stream_lstm.drivers.kafka_client import make_consumer
from stream_lstm.kafka_readers import reader_options
from stream_lstm.runtime.events import EventIn, decode_forecast, parse_ts

log = logging.getLogger(__name__)

_EVENT = msgspec.json.Decoder(EventIn)


def apply_event(store: SeriesStore, raw: bytes | None) -> bool:
    """An input event's values as actuals; a bad event is counted, not raised."""
    if not raw:
        store.note_bad("input: empty message")
        return False
    try:
        e = _EVENT.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        store.note_bad(f"input: {err}")
        return False
    ts = parse_ts(e.ts)
    if ts is None:
        store.note_bad(f"input: cannot parse ts {e.ts!r}")
        return False
    return store.add_actual(e.key, ts, e.values)


def apply_forecast(store: SeriesStore, raw: bytes | None) -> bool:
    """A forecast message into the store; a message that is not a forecast is counted."""
    try:
        f = decode_forecast(raw or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        store.note_bad(f"forecast: {err}")
        return False
    return store.add_forecast(f)


class KafkaFeed:
    """Reads both topics in a background thread until :meth:`stop`."""

    def __init__(
        self,
        store: SeriesStore,
        bootstrap: str,
        input_topic: str,
        output_topic: str,
        partitions: Mapping[str, int],
        from_beginning: bool = False,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.bootstrap = bootstrap
        self.input_topic = input_topic
        self.output_topic = output_topic
        self.partitions = dict(partitions)
        self.from_beginning = from_beginning
        self.options = dict(options or {})
        self.group = f"stream-lstm-dashboard-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None

    def start(self) -> None:
        opts = reader_options({"enable.auto.commit": "false", **self.options})
        c = make_consumer(self.bootstrap, self.group, opts)
        start = OFFSET_BEGINNING if self.from_beginning else OFFSET_END
        c.assign(
            [
                TopicPartition(t, p, start)
                for t in (self.input_topic, self.output_topic)
                for p in range(self.partitions[t])
            ]
        )
        self._consumer = c
        self._thread = threading.Thread(target=self._run, name="dashboard-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        c = self._consumer
        assert c is not None
        try:
            while not self._stop.is_set():
                for m in c.consume(num_messages=1000, timeout=0.3):
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("consumer: %s", err)
                            self.store.note_bad(f"kafka: {err.str()}")
                        continue
                    if m.topic() == self.output_topic:
                        apply_forecast(self.store, m.value())
                    else:
                        apply_event(self.store, m.value())
        except Exception:  # keep serving the page with what was read; say why it stopped
            log.exception("dashboard feed stopped")
            self.store.note_bad("kafka feed stopped; see the log")
        finally:
            c.close()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
