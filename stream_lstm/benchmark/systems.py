"""The three systems measured in one run: the passthrough ceiling, the per-event baseline, and
the worker. Each consumes the same pre-filled topic section; throughput is measured from the
moment 5 % of the section is done to the moment all of it is (connection and group start-up
excluded the same way for all three)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import msgspec
import numpy as np
import psutil
import redis
import torch
from confluent_kafka import KafkaError, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from stream_lstm.drivers.kafka_client import KafkaSink, commit_offsets, make_consumer
from stream_lstm.kafka_readers import reader_options
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.lstm import LSTMForecaster
from stream_lstm.model.runtime import Forecaster
from stream_lstm.runtime.events import EventIn, ForecastOut, encode_forecast
from stream_lstm.stack.procs import free_port


@dataclass
class Run:
    system: str
    events: int  # measured events (after the first 5 %)
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class _Clock:
    """Times the measured window: from ``skip`` events done to ``total`` done."""

    def __init__(self, skip: int, total: int) -> None:
        self.skip, self.total = skip, total
        self.t_skip: float | None = None
        self.t_end: float | None = None

    def saw(self, done: int) -> bool:
        now = time.perf_counter()
        if self.t_skip is None and done >= self.skip:
            self.t_skip = now
        if done >= self.total:
            self.t_end = now
            return True
        return False

    def run(self, system: str, **extra: Any) -> Run:
        assert self.t_skip is not None
        assert self.t_end is not None
        return Run(system, self.total - self.skip, self.t_end - self.t_skip, extra)


def _assign(consumer: Any, topic: str, start: dict[int, int]) -> None:
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])


def passthrough(
    bootstrap: str, topic: str, out: str, start: dict[int, int], n: int, max_batch: int
) -> Run:
    """consume → decode → encode → produce, with the worker's client settings; commits every
    second like the worker. No state, no model."""
    c = make_consumer(bootstrap, f"bench-pass-{os.getpid()}-{time.time_ns()}", None)
    _assign(c, topic, start)
    sink = KafkaSink(bootstrap, None)
    dec, enc = msgspec.json.Decoder(EventIn), msgspec.json.Encoder()
    clock = _Clock(n // 20, n)
    done, last_commit = 0, time.monotonic()
    offsets: dict[tuple[str, int], int] = {}
    while True:
        msgs = c.consume(num_messages=max_batch, timeout=0.02)
        for m in msgs:
            if m.error() is not None:
                continue
            ev = dec.decode(m.value() or b"")
            sink.produce(out, m.key(), enc.encode(ev))
            offsets[(topic, m.partition() or 0)] = (m.offset() or 0) + 1
        done += len(msgs)
        sink.poll()
        if time.monotonic() - last_commit > 1.0:
            sink.flush()
            commit_offsets(c, offsets)
            last_commit = time.monotonic()
        if clock.saw(done):
            break
    sink.flush()
    c.close()
    return clock.run("passthrough")


def per_event_baseline(
    bootstrap: str, topic: str, out: str, start: dict[int, int], n: int, redis_url: str, model: Path
) -> Run:
    """What a straightforward implementation does, event by event: Redis GET of the key's
    state, one model call for that key alone, Redis SET, produce."""
    torch.set_num_threads(1)
    fc = Forecaster(load_artifact(model))
    m = fc.module
    assert isinstance(m, LSTMForecaster)
    cfg = fc.config
    feats = list(cfg.features)
    r = redis.Redis.from_url(redis_url)
    ns = f"bench-baseline-{time.time_ns()}"
    c = make_consumer(bootstrap, f"bench-base-{os.getpid()}-{time.time_ns()}", None)
    _assign(c, topic, start)
    sink = KafkaSink(bootstrap, None)
    dec = msgspec.json.Decoder(EventIn)
    L, Hd = cfg.num_layers, cfg.hidden_size
    clock = _Clock(n // 20, n)
    done = 0
    with torch.inference_mode():
        while True:
            for msg in c.consume(num_messages=100, timeout=0.05):
                if msg.error() is not None:
                    continue
                ev = dec.decode(msg.value() or b"")
                raw = cast(bytes | None, r.get(f"{ns}:{ev.key}"))
                if raw:
                    st = np.frombuffer(raw, np.float32).reshape(2, L, 1, Hd)
                    state = (torch.from_numpy(st[0].copy()), torch.from_numpy(st[1].copy()))
                else:
                    state = m.init_state(1)
                ts = int(ev.ts) if isinstance(ev.ts, int) else 0
                x = fc.inputs(
                    np.asarray([[ev.values[f] for f in feats]]), np.asarray([ts]), [ev.key]
                )
                y, (h, cc) = m(torch.from_numpy(x)[None], state)
                r.set(f"{ns}:{ev.key}", torch.stack([h, cc]).numpy().tobytes())
                vals = fc.to_original(y[0].numpy(), [ev.key])[0, :, 0, 0].tolist()
                f = ForecastOut(
                    ev.key,
                    ts,
                    fc.version,
                    "1min",
                    cfg.interval_ms,
                    {"f0": vals},
                    msg.partition() or 0,
                    msg.offset() or 0,
                )
                sink.produce(out, msg.key(), encode_forecast(f))
                done += 1
                if clock.saw(done):
                    break
            sink.poll()
            if clock.t_end is not None:
                break
    sink.flush()
    c.close()
    r.close()
    return clock.run("per-event baseline")


class WorkerProcess:
    """The real ``stream-lstm worker`` in its own process, watched through its metrics."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-P",  # not the working directory's stream_lstm: PYTHONPATH or the installed one
                    "-m",
                    "stream_lstm",
                    "worker",
                    *args,
                    "--metrics-port",
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.ps = psutil.Process(self.proc.pid)

    def metric(self, name: str) -> float:
        try:
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1)
                .read()
                .decode()
            )
        except OSError:
            return -1.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and not s.labels:
                    return float(s.value)
        return 0.0

    def stages(self) -> dict[str, dict[str, float]]:
        """Per tick stage: count, mean and p99 upper bound (ms) from the worker's histograms."""
        try:
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1)
                .read()
                .decode()
            )
        except OSError:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for fam in text_string_to_metric_families(text):
            if fam.name not in ("stream_lstm_tick_stage_seconds", "stream_lstm_tick_size_events"):
                continue
            for smp in fam.samples:
                key = smp.labels.get("stage", "tick_size")
                d = out.setdefault(key, {"buckets": []})
                if smp.name.endswith("_count"):
                    d["count"] = smp.value
                elif smp.name.endswith("_sum"):
                    d["sum"] = smp.value
                elif smp.name.endswith("_bucket"):
                    d["buckets"].append((float(smp.labels["le"]), smp.value))
        summary: dict[str, dict[str, float]] = {}
        for key, d in out.items():
            n = d.get("count", 0)
            if not n:
                continue
            p99 = next((le for le, c in d["buckets"] if c >= 0.99 * n), float("inf"))
            scale = 1 if key == "tick_size" else 1e3
            summary[key] = {"count": n, "mean": d["sum"] / n * scale, "p99_le": p99 * scale}
        return summary

    def wait_for(self, name: str, value: float, timeout: float = 600, poll: float = 0.02) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.metric(name)
            if v >= value:
                return time.perf_counter()
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.proc.returncode}); see {self.log}")
            time.sleep(poll)
        raise TimeoutError(f"{name} did not reach {value} in {timeout} s; see {self.log}")

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(120)


def worker_run(args: list[str], log: Path, warm: int, n: int) -> tuple[Run, WorkerProcess]:
    """Start the worker on a pre-filled topic (``warm`` events, then the measured ``n``)."""
    w = WorkerProcess(args, log)
    out = "stream_lstm_forecasts_out_total"
    w.wait_for(out, warm + n // 20)
    t0, cpu0 = time.perf_counter(), w.cpu_seconds()
    t1 = w.wait_for(out, warm + n)
    cpu1, rss = w.cpu_seconds(), w.rss()
    run = Run(
        "worker",
        n - n // 20,
        t1 - t0,
        {"cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0), "rss_bytes": rss},
    )
    return run, w


def consume_all(bootstrap: str, topic: str) -> list[Any]:
    """Every message of a topic (for latency): from the beginning to the end now."""
    opts = reader_options({"enable.partition.eof": "true"})
    c = make_consumer(bootstrap, f"bench-read-{time.time_ns()}", opts)
    md = c.list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Any] = []
    eof: set[int] = set()
    while len(eof) < len(parts):
        for m in c.consume(num_messages=20000, timeout=0.5):
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition() or 0)
    c.close()
    return out
