"""Helpers for the streaming integration tests: run a worker, produce events, read topics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, KafkaError, Message, Producer

from stream_lstm.config import WorkerSettings, build_settings
from stream_lstm.drivers.confluent import Worker
from stream_lstm.runtime.events import decode_forecast
from tests.integration.conftest import unique


@dataclass
class Topics:
    input: str
    output: str
    dlq: str


def make_topics(topic_factory: Callable[..., str], partitions: int = 4) -> Topics:
    return Topics(
        topic_factory("in", partitions=partitions),
        topic_factory("out", partitions=partitions),
        topic_factory("dlq", partitions=1),
    )


def settings(
    model: Path, bootstrap: str, redis_url: str, topics: Topics, group: str, **kw: Any
) -> WorkerSettings:
    base: dict[str, Any] = dict(
        model=model,
        bootstrap=bootstrap,
        redis=redis_url,
        input_topic=topics.input,
        output_topic=topics.output,
        dlq_topic=topics.dlq,
        group=group,
        metrics_port=0,
        max_wait_ms=20,
        commit_interval_ms=300,
        consumer_options={"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"},
    )
    base.update(kw)
    return build_settings(WorkerSettings, None, **base)


class RunningWorker:
    def __init__(self, s: WorkerSettings) -> None:
        self.worker = Worker(s)
        self.worker.start()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as e:
            self.error = e

    def metric(self, name: str, **labels: str) -> float:
        v = self.worker.metrics.registry.get_sample_value(name, labels or None)
        return float(v or 0.0)

    def stop(self, timeout: float = 60) -> None:
        self.worker.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error:
            raise self.error


@contextmanager
def running_worker(s: WorkerSettings) -> Iterator[RunningWorker]:
    w = RunningWorker(s)
    try:
        yield w
    finally:
        if w.thread.is_alive():
            w.stop()


def produce(
    bootstrap: str,
    topic: str,
    messages: Sequence[tuple[bytes | None, bytes | None]],
    **conf: str,
) -> None:
    """Produce and wait for delivery; ``conf``: more producer settings (dots as underscores)."""
    extra = {k.replace("_", "."): v for k, v in conf.items()}
    p = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, **extra}
    )
    for i, (k, v) in enumerate(messages):
        p.produce(topic, v, k)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 120) -> list[Message]:
    """Everything on ``topic`` once at least ``expected`` messages are there (fresh group)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    c.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for m in c.consume(num_messages=5000, timeout=0.2):
                err = m.error()
                if err is None:
                    out.append(m)
                elif err.code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(str(err))
            if len(out) >= expected:
                # linger briefly to catch anything beyond the expected count (duplicates)
                extra_deadline = time.monotonic() + 1.0
                while time.monotonic() < extra_deadline:
                    out += [
                        m for m in c.consume(num_messages=5000, timeout=0.2) if m.error() is None
                    ]
                return out
    finally:
        c.close()
    raise AssertionError(f"only {len(out)} of {expected} messages on {topic} after {timeout_s} s")


def wait_for(cond: Callable[[], bool], timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def forecasts_frame(msgs: Sequence[Message], target: str) -> pd.DataFrame:
    """Long form key, ts_ms, h, value (+ partition, offset, model) of forecast messages."""
    fs = [decode_forecast(m.value() or b"") for m in msgs]
    if not fs:
        return pd.DataFrame(columns=["key", "ts_ms", "h", "value", "partition", "offset", "model"])
    H = len(fs[0].forecast[target])
    values = np.asarray([f.forecast[target] for f in fs], dtype=np.float64)  # [n, H]
    rep = lambda xs: np.repeat(np.asarray(xs, dtype=object if isinstance(xs[0], str) else None), H)  # noqa: E731
    return pd.DataFrame(
        {
            "key": rep([f.key for f in fs]),
            "ts_ms": rep([f.ts for f in fs]),
            "h": np.tile(np.arange(1, H + 1), len(fs)),
            "value": values.reshape(-1),
            "partition": rep([f.partition for f in fs]),
            "offset": rep([f.offset for f in fs]),
            "model": rep([f.model for f in fs]),
        }
    )
