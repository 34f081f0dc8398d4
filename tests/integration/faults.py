"""Helpers for the fault tests: worker subprocesses, a paced producer, the three checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from stream_lstm.metrics import WorkerMetrics
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.runtime.engine import Engine, EngineConfig, layout_for
from stream_lstm.runtime.events import InMessage, decode_forecast
from stream_lstm.stack.procs import free_port
from stream_lstm.stores.memory import MemoryStore
from stream_lstm.stores.record import decode_any
from stream_lstm.stores.redis import RedisStateStore
from stream_lstm.testing import MemorySink, ticks
from tests.integration.conftest import unique
from tests.integration.helpers import Topics

REPORT_ENV = "STREAM_LSTM_FAULT_REPORT"  # append each fault run's figures (JSON lines) here


class WorkerProc:
    """``stream-lstm worker`` as a real process, killed and restarted by the tests.

    Every started process is killed at the end of its test if it is still running (the
    ``_reap_worker_processes`` fixture in conftest.py), also when the test failed.
    """

    live: ClassVar[set[WorkerProc]] = set()

    @classmethod
    def reap(cls) -> int:
        """Kill what tests left running; returns how many were."""
        n = 0
        for w in list(cls.live):
            if w.alive():
                n += 1
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)
                w.kill()
            cls.live.discard(w)
        return n

    def __init__(
        self,
        model: Path,
        bootstrap: str,
        redis_url: str,
        topics: Topics,
        group: str,
        log_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log = log_dir / f"worker-{unique('w')}.log"
        self.argv = [
            sys.executable, "-m", "stream_lstm", "worker",
            "--model", str(model), "--bootstrap", bootstrap, "--redis", redis_url,
            "--input-topic", topics.input, "--output-topic", topics.output, "--dlq-topic", topics.dlq,
            "--group", group, "--metrics-port", str(self.port), "--commit-interval-ms", "500",
            "--max-batch", "2048", "--max-wait-ms", "20", "--threads", "1",
            "--consumer-option", "session.timeout.ms=6000",
            "--consumer-option", "heartbeat.interval.ms=500",
            *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> WorkerProc:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        WorkerProc.live.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait: the worker finishes the tick, commits, leaves the group."""
        self.signal(signal.SIGTERM)
        assert self.proc is not None
        return self.proc.wait(timeout)

    def metrics(self) -> dict[str, float] | None:
        try:
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1)
                .read()
                .decode()
            )
        except OSError:
            return None
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{label}}}" if label else s.name] = s.value
        return out

    def metric(self, name: str) -> float:
        m = self.metrics() or {}
        return float(m.get(name, 0.0))

    def wait_up(self, timeout: float = 120) -> None:
        """Until the worker owns partitions: its start-up (imports, model, Redis, topics) is
        done. Tests start their producer after it, so a slow machine does not let the input
        end before the fault it means to inject."""
        deadline = time.monotonic() + timeout
        while self.metric("stream_lstm_assigned_partitions") < 1:
            if not self.alive():
                raise AssertionError(
                    f"worker exited ({self.proc and self.proc.returncode}); see {self.log}"
                )
            assert time.monotonic() < deadline, f"not up within {timeout} s; see {self.log}"
            time.sleep(0.1)

    def wait_first_forecast(self, timeout: float = 90) -> float:
        """Seconds from this process's start to its first forecast."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metric("stream_lstm_forecasts_out_total") > 0:
                return time.monotonic() - self.started_at
            if not self.alive():
                raise AssertionError(
                    f"worker exited ({self.proc and self.proc.returncode}); see {self.log}"
                )
            time.sleep(0.1)
        raise AssertionError(f"no forecast within {timeout} s; see {self.log}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class PacedProducer(threading.Thread):
    """Produces (key, value) pairs at ``rate`` per second in the background."""

    def __init__(
        self, bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes]], rate: float
    ) -> None:
        super().__init__(daemon=True)
        self.p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5,
                           "message.timeout.ms": 300000})  # fmt: skip
        self.topic, self.messages, self.rate = topic, messages, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            for i, (k, v) in enumerate(self.messages):
                while True:
                    try:
                        self.p.produce(self.topic, v, k)
                        break
                    except BufferError:
                        self.p.poll(0.05)
                self.sent = i + 1
                if i % 500 == 0:
                    self.p.poll(0)
                    ahead = (i + 1) / self.rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
            assert self.p.flush(300) == 0
        except BaseException as e:
            self.error = e


def read_topic(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[Any]:
    """Every message of ``topic`` (all partitions, from the beginning, up to the end now), as
    a downstream consumer reads it (``read_committed``: no output of an aborted transaction)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("read"), "enable.partition.eof": True,
                  "enable.auto.commit": False, "isolation.level": isolation})  # fmt: skip
    md = c.list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out, eof = [], set()
    deadline = time.monotonic() + 120
    while len(eof) < len(parts) and time.monotonic() < deadline:
        for m in c.consume(num_messages=10000, timeout=0.5):
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
    c.close()
    return out


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


@dataclass
class FaultReport:
    name: str
    events: int = 0
    keys: int = 0
    partitions: int = 0
    kills: int = 0
    recovery_s: list[float] = field(default_factory=list)
    forecasts: int = 0
    duplicate_forecasts: int = 0
    max_duplicate_diff: float = 0.0
    max_state_diff: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def write(self) -> None:
        path = os.environ.get(REPORT_ENV)
        doc = json.dumps(self.__dict__, default=float)
        print(f"\nfault run: {doc}")
        if path:
            with open(path, "a") as f:
                f.write(doc + "\n")


def three_checks(
    report: FaultReport,
    model: Path,
    bootstrap: str,
    redis_url: str,
    namespace: str,
    topics: Topics,
    n_events: int,
    *,
    exactly_once: bool = False,
) -> None:
    """(1) every input event has a forecast; (2) all forecasts of one event are identical
    (up to float32 round-off: ticks group events differently after a restart); (3) every
    key's final state equals an uninterrupted run's (max abs difference ≤ 1e-6).

    ``exactly_once``: read as a read_committed consumer, every good event has exactly ONE
    forecast, equal to the uninterrupted run's, and every bad event exactly one dead letter
    (the bad ones: those the uninterrupted run dead-letters)."""
    inputs = read_topic(bootstrap, topics.input)
    assert len(inputs) == n_events, f"{len(inputs)} input events on the topic, expected {n_events}"
    outputs = read_topic(bootstrap, topics.output)
    by_event: dict[tuple[int, int], list[list[float]]] = {}
    for m in outputs:
        f = decode_forecast(m.value())
        by_event.setdefault((f.partition, f.offset), []).append(next(iter(f.forecast.values())))
    ref, ref_store, ref_sink, fc = _uninterrupted(model, inputs)
    bad = {_source(p.headers) for p in ref_sink.on("d")}
    missing = {(m.partition(), m.offset()) for m in inputs} - bad - set(by_event)
    assert not missing, f"(1) {len(missing)} events without a forecast, e.g. {sorted(missing)[:5]}"
    if exactly_once:
        _exactly_once(report, bootstrap, topics, by_event, bad, ref_sink)
    dup_diff = 0.0
    dups = 0
    for vals in by_event.values():
        if len(vals) > 1:
            dups += len(vals) - 1
            arr = np.asarray(vals)
            dup_diff = max(dup_diff, float(np.abs(arr - arr[0]).max()))
    assert dup_diff <= 1e-4, f"(2) forecasts of one event differ by {dup_diff}"
    report.forecasts, report.duplicate_forecasts, report.max_duplicate_diff = (
        len(outputs),
        dups,
        dup_diff,
    )

    # (3) the uninterrupted run's states
    keys = list(ref.cache.index)
    reader = RedisStateStore(redis_url, namespace, layout_for(fc))  # any mode: node, cluster…
    reader.connect()
    stored = reader.load(keys)
    worst = 0.0
    for k, rec in zip(keys, stored, strict=True):
        assert rec is not None, f"(3) no state stored for {k}"
        got, want = decode_any(rec), decode_any(ref_store.record(k) or b"")
        assert got is not None and want is not None
        assert got.count == want.count, (
            f"(3) {k}: {got.count} events applied, uninterrupted {want.count}"
        )
        assert got.last_offset == want.last_offset and got.last_ts == want.last_ts, k
        np.testing.assert_array_equal(got.win, want.win)  # the window: every event once, in order
        np.testing.assert_array_equal(got.win_ts, want.win_ts)
        worst = max(worst, float(np.abs(got.h - want.h).max()), float(np.abs(got.c - want.c).max()))
    assert worst <= 1e-6, f"(3) final states differ from an uninterrupted run by {worst}"
    report.max_state_diff = worst
    reader.close()


def _uninterrupted(
    model: Path, inputs: list[Any]
) -> tuple[Engine, MemoryStore, MemorySink, Forecaster]:
    """The same messages, in order, through the engine in process, in one go."""
    fc = Forecaster(load_artifact(model))
    ref_store, ref_sink = MemoryStore(layout_for(fc)), MemorySink()
    ref = Engine(fc, ref_store, ref_sink, WorkerMetrics(), EngineConfig("o", "d"))
    msgs = [InMessage(m.key(), m.value(), m.topic(), m.partition(), m.offset(), 0) for m in inputs]
    msgs.sort(key=lambda m: (m.partition, m.offset))
    for tick in ticks(msgs, [4096]):
        ref.process(tick)
    ref.commit_cycle(lambda offsets: None)
    return ref, ref_store, ref_sink, fc


def _source(headers: list[tuple[str, bytes]] | None) -> tuple[int, int]:
    """(partition, offset) of a dead letter's input event (its ``source`` header)."""
    src = dict(headers or [])["source"].decode()
    _, p, o = src.rsplit("/", 2)
    return int(p), int(o)


def _exactly_once(
    report: FaultReport,
    bootstrap: str,
    topics: Topics,
    by_event: dict[tuple[int, int], list[list[float]]],
    bad: set[tuple[int, int]],
    ref_sink: MemorySink,
) -> None:
    dups = {e: len(v) for e, v in by_event.items() if len(v) > 1}
    assert not dups, (
        f"(EOS) {len(dups)} events with more than one forecast, e.g. {list(dups.items())[:5]}"
    )
    assert not set(by_event) & bad, "(EOS) a dead-lettered event has a forecast"
    want: dict[tuple[int, int], list[float]] = {}
    for m in ref_sink.on("o"):
        f = decode_forecast(m.value or b"")
        want[(f.partition, f.offset)] = next(iter(f.forecast.values()))
    assert set(want) == set(by_event), (
        "(EOS) forecasts for other events than the uninterrupted run's"
    )
    worst = max(
        (float(np.abs(np.asarray(by_event[e][0]) - np.asarray(v)).max()) for e, v in want.items()),
        default=0.0,
    )
    assert worst <= 1e-4, f"(EOS) forecasts differ from an uninterrupted run's by {worst}"
    dead = [_source(m.headers()) for m in read_topic(bootstrap, topics.dlq)]
    assert len(dead) == len(set(dead)), (
        f"(EOS) {len(dead) - len(set(dead))} dead letters published more than once"
    )
    assert set(dead) == bad, (
        f"(EOS) dead letters {len(dead)}, bad events {len(bad)}: "
        f"missing {sorted(bad - set(dead))[:5]}, extra {sorted(set(dead) - bad)[:5]}"
    )
    report.notes.update(dead_letters=len(dead), max_forecast_diff=worst)
