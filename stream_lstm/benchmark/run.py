"""The benchmark suite on the real local stack, measured in one run so the ratios hold.

Saturated throughput: a topic pre-filled with a warm-up section (each key once, so the worker
has every key's state cached) and a measured section; each round runs the passthrough ceiling,
the worker and the per-event baseline on it (fresh consumer groups and state namespaces); the
median of the rounds is reported with the ratios.

Latency: the worker warmed up on every key, then events produced at a fixed offered rate; the
latency of an event is its forecast message's timestamp minus its input message's timestamp.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition, libversion
from rich.console import Console

from stream_lstm import __version__
from stream_lstm.benchmark import systems
from stream_lstm.benchmark.micro import SIZES, micro_bench
from stream_lstm.benchmark.workload import (
    Workload,
    create_topics,
    delete_topics,
    make_events,
    make_model,
    prefill,
)
from stream_lstm.config import default_cache_dir
from stream_lstm.kafka_readers import reader_options
from stream_lstm.stack import Stack
from stream_lstm.stack.kafka import kafka_version
from stream_lstm.stack.procs import free_port
from stream_lstm.stack.redis_cluster import ClusterSpec, RedisCluster, free_ports


@dataclass
class BenchConfig:
    keys: tuple[int, ...] = (10_000, 100_000)
    events: int = 200_000  # measured events per saturated run
    rounds: int = 3
    baseline_events: int = 4_000
    loads: tuple[int, ...] = (5_000, 20_000, 50_000)
    runtimes: tuple[str, ...] = ("confluent", "faust")  # worker runtimes measured
    faust_loads: tuple[int, ...] = (5_000, 20_000)  # offered loads for the Faust runtime
    # the burst run: (offered events/s, seconds) phases, one after the other
    burst: tuple[tuple[int, float], ...] = ((5_000, 10.0), (50_000, 5.0), (5_000, 20.0))
    load_keys: int = 100_000
    load_seconds: float = 10.0
    max_batch: int = 4096
    max_wait_ms: int = 5
    threads: int | None = None
    # the worker again with its state on a Redis Cluster, in the same rounds: "local" starts a
    # 3-master + 3-replica cluster for the run, a URL uses a running one, None skips it
    redis_cluster: str | None = "local"
    cluster_url: str | None = None  # (set by run_bench)
    # the worker again with --processing-guarantee exactly-once, in the same rounds
    exactly_once: bool = True
    # Redis URLs of servers this run started (its own stack and cluster, set by run_bench): their
    # data is flushed before each run, so that earlier runs' states (gigabytes at 100,000 keys)
    # and their append-only rewrites do not weigh on later runs. Servers given with --redis are
    # never flushed.
    own_redis: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()
    micro: bool = True
    micro_sizes: tuple[int, ...] = SIZES
    parts: tuple[str, ...] = ("throughput", "latency", "burst", "micro")
    out_dir: Path = Path("bench/results")
    bootstrap: str | None = None
    redis_url: str | None = None
    tag: str = ""
    workload: Workload = field(default_factory=Workload)


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "librdkafka": libversion()[0],
        "kafka": kafka_version(),
        "stream_lstm": __version__,
    }


def _worker_args(
    c: BenchConfig,
    model: Path,
    bootstrap: str,
    redis_url: str,
    t_in: str,
    t_out: str,
    t_dlq: str,
    group: str,
) -> list[str]:
    args = ["--model", str(model), "--bootstrap", bootstrap, "--redis", redis_url,
            "--input-topic", t_in, "--output-topic", t_out, "--dlq-topic", t_dlq, "--group", group,
            "--max-batch", str(c.max_batch), "--max-wait-ms", str(c.max_wait_ms), "--max-future-ms", "-1"]  # fmt: skip
    if c.threads:
        args += ["--threads", str(c.threads)]
    return args + list(c.worker_args)


def fresh_state(c: BenchConfig) -> None:
    """Empty the Redis servers this run started (``c.own_redis``; replicas refuse and follow)."""
    import redis

    for url in c.own_redis:
        r = redis.Redis.from_url(url)
        try:
            r.flushall()
        except redis.ResponseError:
            pass  # a replica: its master's flush reaches it
        finally:
            r.close()


def settle_aof(redis_url: str, console: Console, timeout_s: float = 300.0) -> None:
    """Rewrite Redis's append-only file now and wait for it (when AOF is on).

    The warm-up writes every key's whole record (~4 KB each), which grows the file past Redis's
    auto-rewrite threshold; the rewrite it triggers (a fork, then seconds of serialising on the
    cores the worker shares here) otherwise falls into the measured phase and puts the worker
    seconds behind (measured 2026-11-29: p50 3.8 s at 5,000/s with a rewrite under the phase,
    53 ms without). The measured phases report the rewrites that still happen in them."""
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        if not r.info("persistence").get("aof_enabled"):
            return
        t0 = time.monotonic()
        started = False
        while time.monotonic() - t0 < timeout_s:
            info = r.info("persistence")
            busy = info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")
            if not busy and started:
                console.print(f"Redis's append-only file rewritten after the warm-up "
                              f"({time.monotonic() - t0:.1f} s)")  # fmt: skip
                return
            if not busy:
                try:
                    r.bgrewriteaof()
                    started = True
                except redis.ResponseError as e:
                    if "progress" not in str(e):  # (in progress: one is starting; wait for it)
                        raise
            time.sleep(0.2)
        console.print(
            f"[yellow]Redis's append-only file rewrite still running after {timeout_s:.0f} s"
        )
    except redis.RedisError as e:
        console.print(f"[yellow]could not rewrite Redis's append-only file ({e})")
    finally:
        r.close()


def aof_rewrites(redis_url: str) -> int | None:
    """Redis's count of append-only file rewrites so far (None: unknown)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        n = r.info("persistence").get("aof_rewrites")
        return int(n) if n is not None else None
    except redis.RedisError:
        return None
    finally:
        r.close()


def _during(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


def _watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer(reader_options({"bootstrap.servers": bootstrap, "group.id": "bench-wm"}))
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        c.close()


def throughput(
    c: BenchConfig,
    keys: int,
    model: Path,
    bootstrap: str,
    redis_url: str,
    logs: Path,
    console: Console,
) -> dict[str, Any]:
    w = Workload(**{**asdict(c.workload), "keys": keys})
    run_id = uuid.uuid4().hex[:6]
    t_in, t_dlq = f"bench-in-{run_id}", f"bench-dlq-{run_id}"
    outs = {s: f"bench-out-{s}-{run_id}" for s in ("pass", "worker", "base", "faust")}
    create_topics(bootstrap, [t_in, *outs.values()], w.partitions)
    create_topics(bootstrap, [t_dlq], 1)
    try:
        console.print(
            f"[bold]throughput, {keys:,} keys[/bold]: pre-filling {keys:,} warm-up + {c.events:,} measured events"
        )
        prefill(bootstrap, t_in, make_events(w, keys, seed=1, every_key_once=True))
        start = _watermarks(bootstrap, t_in, w.partitions)
        prefill(bootstrap, t_in, make_events(w, c.events, seed=2, first=keys))
        runs: dict[str, list[systems.Run]] = {
            "passthrough": [],
            "worker": [],
            "per-event baseline": [],
        }
        if c.cluster_url:
            runs["worker (Redis Cluster)"] = []
        if c.exactly_once:
            runs["worker (exactly-once)"] = []
        if "faust" in c.runtimes:
            runs["faust worker"] = []
        for r in range(c.rounds):
            fresh_state(c)
            p = systems.passthrough(bootstrap, t_in, outs["pass"], start, c.events, c.max_batch)
            runs["passthrough"].append(p)
            group = f"bench-{run_id}-{r}"
            args = _worker_args(c, model, bootstrap, redis_url, t_in, outs["worker"], t_dlq, group)
            wr, proc = systems.worker_run(args, logs / f"worker-{keys}-{r}.log", keys, c.events)
            proc.stop()
            runs["worker"].append(wr)
            on_cluster = ""
            if c.cluster_url:
                args = _worker_args(
                    c, model, bootstrap, c.cluster_url, t_in, outs["worker"], t_dlq, f"{group}-c"
                )
                cr, proc = systems.worker_run(
                    args, logs / f"cluster-{keys}-{r}.log", keys, c.events
                )
                proc.stop()
                runs["worker (Redis Cluster)"].append(cr)
                on_cluster = f" · on the cluster {cr.rate:,.0f}/s"
            eo = ""
            if c.exactly_once:
                args = _worker_args(
                    c, model, bootstrap, redis_url, t_in, outs["worker"], t_dlq, f"{group}-eo"
                )
                args += ["--processing-guarantee", "exactly-once",
                         "--transactional-id", f"{group}-eo", "--namespace", f"{group}-eo"]  # fmt: skip
                er, proc = systems.worker_run(
                    args, logs / f"exactly-once-{keys}-{r}.log", keys, c.events
                )
                proc.stop()
                runs["worker (exactly-once)"].append(er)
                eo = f" · exactly-once {er.rate:,.0f}/s"
            faust = ""
            if "faust" in c.runtimes:
                args = _worker_args(
                    c, model, bootstrap, redis_url, t_in, outs["faust"], t_dlq, f"{group}-f"
                )
                fr, proc = systems.worker_run(
                    [*args, "--runtime", "faust"], logs / f"faust-{keys}-{r}.log", keys, c.events
                )
                proc.stop()
                runs["faust worker"].append(fr)
                faust = f" · faust worker {fr.rate:,.0f}/s (RSS {fr.extra['rss_bytes'] / 2**20:.0f} MiB)"
            b = systems.per_event_baseline(
                bootstrap, t_in, outs["base"], start, c.baseline_events, redis_url, model
            )
            runs["per-event baseline"].append(b)
            console.print(
                f"  round {r + 1}: passthrough {p.rate:,.0f}/s · worker {wr.rate:,.0f}/s "
                f"(CPU {wr.extra['cpu_percent']:.0f} %, RSS {wr.extra['rss_bytes'] / 2**20:.0f} MiB)"
                f"{on_cluster}{eo} · per-event baseline {b.rate:,.0f}/s{faust}"
            )
        med = {k: statistics.median(x.rate for x in v) for k, v in runs.items()}
        faust_ratios = {}
        if "faust worker" in runs:
            faust_ratios = {
                "faust_over_passthrough": med["faust worker"] / med["passthrough"],
                "faust_over_worker": med["faust worker"] / med["worker"],
                "faust_rss_bytes_max": max(x.extra["rss_bytes"] for x in runs["faust worker"]),
            }
        if c.cluster_url:
            faust_ratios["cluster_over_single_node"] = med["worker (Redis Cluster)"] / med["worker"]
        if c.exactly_once:
            faust_ratios["exactly_once_over_at_least_once"] = (
                med["worker (exactly-once)"] / med["worker"]
            )
        return faust_ratios | {
            "keys": keys,
            "measured_events": c.events,
            "runs": {k: [asdict(x) | {"rate": x.rate} for x in v] for k, v in runs.items()},
            "median_events_per_s": med,
            "worker_over_passthrough": med["worker"] / med["passthrough"],
            "worker_over_baseline": med["worker"] / med["per-event baseline"],
            "worker_rss_bytes_max": max(x.extra["rss_bytes"] for x in runs["worker"]),
            "worker_cpu_percent_median": statistics.median(
                x.extra["cpu_percent"] for x in runs["worker"]
            ),
        }
    finally:
        delete_topics(bootstrap, [t_in, t_dlq, *outs.values()])


def due_times(schedule: float | Sequence[tuple[float, float]], n: int) -> np.ndarray:
    """When each of ``n`` events is due (seconds from the start): at a constant rate, or over
    ``(rate, seconds)`` phases one after the other (``n`` = the phases' events)."""
    if isinstance(schedule, int | float):
        return np.arange(n) / float(schedule)
    parts, start = [], 0.0
    for rate, seconds in schedule:
        parts.append(start + np.arange(int(rate * seconds)) / rate)
        start += seconds
    due = np.concatenate(parts) if parts else np.zeros(0)
    assert len(due) == n, (len(due), n)
    return due


class _Paced(threading.Thread):
    """Produces ``events`` on schedule (``due_times``); ``sent`` holds when each one went."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        events: list[tuple[bytes, bytes]],
        schedule: float | Sequence[tuple[float, float]],
    ) -> None:
        super().__init__(daemon=True)
        self.p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "compression.type": "lz4",
                           "queue.buffering.max.messages": 2_000_000})  # fmt: skip
        self.topic, self.events = topic, events
        self.due = due_times(schedule, len(events))
        self.seconds = 0.0

    def run(self) -> None:
        t0 = time.perf_counter()
        i, n = 0, len(self.events)
        while i < n:
            now = time.perf_counter() - t0
            j = int(np.searchsorted(self.due, now, side="right"))  # every event due by now
            if j <= i:
                time.sleep(min(0.001, float(self.due[i]) - now))
                continue
            for k, v in self.events[i:j]:
                while True:
                    try:
                        self.p.produce(self.topic, v, k)
                        break
                    except BufferError:
                        self.p.poll(0.001)
            self.p.poll(0)
            i = j
        self.seconds = time.perf_counter() - t0
        self.p.flush(60)


def latency(
    c: BenchConfig,
    rate: int,
    model: Path,
    bootstrap: str,
    redis_url: str,
    logs: Path,
    console: Console,
    runtime: str = "confluent",
) -> dict[str, Any]:
    keys = c.load_keys
    w = Workload(**{**asdict(c.workload), "keys": keys})
    run_id = uuid.uuid4().hex[:6]
    t_in, t_out, t_dlq = f"lat-in-{run_id}", f"lat-out-{run_id}", f"lat-dlq-{run_id}"
    create_topics(bootstrap, [t_in, t_out], w.partitions)
    create_topics(bootstrap, [t_dlq], 1)
    n = int(rate * c.load_seconds)
    fresh_state(c)
    try:
        prefill(bootstrap, t_in, make_events(w, keys, seed=1, every_key_once=True))
        events = make_events(w, n, seed=3, first=keys)
        args = _worker_args(c, model, bootstrap, redis_url, t_in, t_out, t_dlq, f"lat-{run_id}")
        args += ["--runtime", runtime]
        proc = systems.WorkerProcess(args, logs / f"latency-{runtime}-{rate}.log")
        proc.wait_for("stream_lstm_forecasts_out_total", keys)
        # the warm-up's states written (a first write of every key takes seconds here): the
        # measured load starts on a worker in its steady state, not behind that write
        proc.wait_for("stream_lstm_state_writes_total", keys, timeout=300)
        settle_aof(redis_url, console)
        time.sleep(1.0)
        rss_warm = proc.rss()
        rw0 = aof_rewrites(redis_url)
        cpu0, t0 = proc.cpu_seconds(), time.perf_counter()
        paced = _Paced(bootstrap, t_in, events, rate)
        paced.start()
        paced.join()
        proc.wait_for("stream_lstm_forecasts_out_total", keys + n, timeout=300)
        rewrites = _during(rw0, aof_rewrites(redis_url))
        cpu = 100 * (proc.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
        rss = proc.rss()
        stages = proc.stages()
        proc.stop()
        src_a, out_a = forecast_times(bootstrap, t_in, t_out, keys)
        arr = (out_a - src_a).astype(np.float64)
        res: dict[str, Any] = {
            "runtime": runtime,
            "offered_events_per_s": rate,
            "achieved_events_per_s": n / paced.seconds,
            "events": n,
            "keys": keys,
            "latency_ms": {
                q: float(np.percentile(arr, p))
                for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
            },
            "worker_cpu_percent": cpu,
            "worker_rss_bytes": rss,
            "worker_rss_bytes_after_warmup": rss_warm,
            "worker_stages": stages,
            "aof_rewrites_during": rewrites,
        }
        ms = res["latency_ms"]
        console.print(
            f"  {runtime}: offered {rate:,}/s (achieved {res['achieved_events_per_s']:,.0f}/s), {keys:,} keys: latency p50 {ms['p50']:.1f} ms, "
            f"p95 {ms['p95']:.1f} ms, p99 {ms['p99']:.1f} ms · worker CPU {cpu:.0f} %, RSS {rss / 2**20:.0f} MiB"
        )
        return res
    finally:
        delete_topics(bootstrap, [t_in, t_out, t_dlq])


def burst(
    c: BenchConfig,
    model: Path,
    bootstrap: str,
    redis_url: str,
    logs: Path,
    console: Console,
) -> dict[str, Any]:
    """The offered load steps through ``c.burst``'s phases (5,000 → 50,000 → 5,000 events/s by
    default) on warm keys; per phase the latency of the events produced in it, and the time to
    drain: from the end of the burst phase until the last event produced before it has its
    forecast."""
    keys = c.load_keys
    w = Workload(**{**asdict(c.workload), "keys": keys})
    run_id = uuid.uuid4().hex[:6]
    t_in, t_out, t_dlq = f"burst-in-{run_id}", f"burst-out-{run_id}", f"burst-dlq-{run_id}"
    create_topics(bootstrap, [t_in, t_out], w.partitions)
    create_topics(bootstrap, [t_dlq], 1)
    n = sum(int(r * s) for r, s in c.burst)
    fresh_state(c)
    try:
        prefill(bootstrap, t_in, make_events(w, keys, seed=1, every_key_once=True))
        events = make_events(w, n, seed=5, first=keys)
        args = _worker_args(c, model, bootstrap, redis_url, t_in, t_out, t_dlq, f"burst-{run_id}")
        proc = systems.WorkerProcess(args, logs / "burst.log")
        proc.wait_for("stream_lstm_forecasts_out_total", keys)
        # the warm-up's states written (a first write of every key takes seconds here): the
        # measured load starts on a worker in its steady state, not behind that write
        proc.wait_for("stream_lstm_state_writes_total", keys, timeout=300)
        settle_aof(redis_url, console)
        time.sleep(1.0)
        rw0 = aof_rewrites(redis_url)
        cpu0, t0 = proc.cpu_seconds(), time.perf_counter()
        paced = _Paced(bootstrap, t_in, events, c.burst)
        paced.start()
        paced.join()
        proc.wait_for("stream_lstm_forecasts_out_total", keys + n, timeout=600)
        rewrites = _during(rw0, aof_rewrites(redis_url))
        cpu = 100 * (proc.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
        rss = proc.rss()
        proc.stop()
        src_a, out_a = forecast_times(bootstrap, t_in, t_out, keys)
        start = int(src_a.min())  # the first measured event went out at the schedule's start
        bounds = np.cumsum([0.0, *(s for _, s in c.burst)]) * 1000 + start
        phases: list[dict[str, Any]] = []
        for i, (rate, seconds) in enumerate(c.burst):
            sel = (src_a >= bounds[i]) & (src_a < bounds[i + 1])
            lat = (out_a[sel] - src_a[sel]).astype(np.float64)
            phases.append(
                {
                    "offered_events_per_s": rate,
                    "seconds": seconds,
                    "events": int(sel.sum()),
                    "latency_ms": {
                        q: float(np.percentile(lat, p)) if lat.size else float("nan")
                        for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
                    },
                }
            )
        peak = max(range(len(c.burst)), key=lambda i: c.burst[i][0])
        end = bounds[peak + 1]
        before = src_a < end
        drain_s = max(0.0, float(out_a[before].max() - end) / 1000) if before.any() else 0.0
        res: dict[str, Any] = {
            "keys": keys,
            "phases": phases,
            "burst_phase": peak,
            "drain_seconds": drain_s,
            "producer_seconds": paced.seconds,
            "scheduled_seconds": float(sum(s for _, s in c.burst)),
            "worker_cpu_percent": cpu,
            "worker_rss_bytes": rss,
            "aof_rewrites_during": rewrites,
        }
        steps = " → ".join(f"{r:,}/s" for r, _ in c.burst)
        console.print(
            f"  burst {steps}, {keys:,} keys: "
            + " · ".join(
                f"{p['offered_events_per_s']:,}/s p50 {p['latency_ms']['p50']:.0f} ms "
                f"p99 {p['latency_ms']['p99']:.0f} ms"
                for p in phases
            )
            + f" · drained {drain_s:.1f} s after the burst ended"
            + f" (producer took {paced.seconds:.1f} s of {res['scheduled_seconds']:.0f} s)"
        )
        return res
    finally:
        delete_topics(bootstrap, [t_in, t_out, t_dlq])


def forecast_times(
    bootstrap: str, t_in: str, t_out: str, keys: int
) -> tuple[np.ndarray, np.ndarray]:
    """For every measured event (after the warm-up section) that has its forecast: the input
    message's timestamp and the forecast message's, in ms."""
    import msgspec

    sent = {
        (m.partition(), m.offset()): m.timestamp()[1] for m in systems.consume_all(bootstrap, t_in)
    }
    first_ts = make_events_first_ts(keys)
    src_ts, out_ts = [], []
    for m in systems.consume_all(bootstrap, t_out):
        f = msgspec.json.decode(m.value())
        src = sent.get((f["partition"], f["offset"]))
        if src is not None and f["offset"] >= 0 and f["ts"] >= first_ts:
            src_ts.append(src)
            out_ts.append(m.timestamp()[1])
    return np.asarray(src_ts, np.int64), np.asarray(out_ts, np.int64)


def make_events_first_ts(keys: int) -> int:
    from stream_lstm.benchmark.workload import T0

    return T0 + keys  # events after the warm-up section


def warm_broker(bootstrap: str, console: Console, events: int = 300_000) -> None:
    """Run traffic through a fresh broker first: its JIT compiles the hot paths during the
    first tens of seconds, and a cold broker adds hundreds of milliseconds of latency (measured)."""
    w = Workload(keys=1000)
    topic, out = f"bench-warm-{uuid.uuid4().hex[:6]}", f"bench-warm-out-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [topic, out], w.partitions)
    try:
        t = time.perf_counter()
        prefill(bootstrap, topic, make_events(w, events, seed=9))
        systems.passthrough(
            bootstrap, topic, out, dict.fromkeys(range(w.partitions), 0), events, 4096
        )
        console.print(
            f"broker warm-up: {events:,} events through it in {time.perf_counter() - t:.1f} s"
        )
    finally:
        delete_topics(bootstrap, [topic, out])


def run_bench(c: BenchConfig, console: Console) -> dict[str, Any]:
    c.out_dir.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="stream-lstm-bench-"))
    stack = None
    bootstrap, redis_url = c.bootstrap, c.redis_url
    if not (bootstrap and redis_url):
        stack = Stack(
            logs / "stack",
            default_cache_dir(),
            kafka_port=free_port(),
            controller_port=free_port(),
            redis_port=free_port(),
        )
        console.print("starting a local stack for the benchmark …")
        stack.redis.start()
        stack.kafka.start()
        bootstrap, redis_url = stack.bootstrap, stack.redis_url
        c.own_redis += (redis_url,)
    cluster = None
    if c.redis_cluster == "local" and "throughput" in c.parts:
        ports = free_ports(12)
        cluster = RedisCluster(
            ClusterSpec(
                run_dir=logs / "cluster", ports=ports[:6], bus_ports=ports[6:], node_timeout_ms=5000
            )
        )
        console.print("starting a local Redis Cluster (3 masters + 3 replicas) …")
        cluster.start()
        c.cluster_url = cluster.spec.url
        spec = cluster.spec
        c.own_redis += tuple(f"redis://{spec.host}:{p}/0" for p in spec.ports)
    elif c.redis_cluster:
        c.cluster_url = c.redis_cluster
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(c).items()
            if k not in {"out_dir"}
        },
    }
    try:
        warm_broker(bootstrap, console)
        model = make_model(c.workload, logs / "model")
        if "throughput" in c.parts:
            result["throughput"] = [
                throughput(c, k, model, bootstrap, redis_url, logs, console) for k in c.keys
            ]
        if "latency" in c.parts:
            console.print(f"[bold]latency at fixed offered loads, {c.load_keys:,} keys[/bold]")
            result["latency"] = [
                latency(c, r, model, bootstrap, redis_url, logs, console, rt)
                for rt in c.runtimes
                for r in (c.faust_loads if rt == "faust" else c.loads)
            ]
        if "burst" in c.parts and c.burst:
            steps = " → ".join(f"{r:,}/s for {s:g} s" for r, s in c.burst)
            console.print(f"[bold]burst[/bold]: {steps}, {c.load_keys:,} keys")
            result["burst"] = burst(c, model, bootstrap, redis_url, logs, console)
        if "micro" in c.parts and c.micro:
            console.print("[bold]inference microbenchmark[/bold] (one tick of S keys)")
            w = c.workload
            result["micro"] = micro_bench(
                w.features + 4, w.hidden, w.layers, w.horizon, w.time_step, c.micro_sizes
            )
    finally:
        if cluster is not None:
            cluster.stop()
        if stack is not None:
            stack.kafka.stop()
            stack.redis.stop()
    name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}{('-' + c.tag) if c.tag else ''}.json"
    for path in (c.out_dir / name, c.out_dir / "latest.json"):
        path.write_text(json.dumps(result, indent=1, default=str))
    result["written"] = str(c.out_dir / name)
    result["logs"] = str(logs)
    return result
