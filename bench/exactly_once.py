"""Exactly-once against at-least-once: what ``--processing-guarantee exactly-once`` costs the
worker in saturated throughput and in end-to-end latency, at several commit intervals.

Both guarantees run **alternating on one stack** (Kafka + Redis started on the given or free
ports, stopped at the end), so that the machine's noise falls on both alike; the suite's
machinery does the work (``stream_lstm.benchmark``: the workload, the worker subprocess watched
through its metrics, the paced producer).

* **Throughput**: one pre-filled input topic (every key once as a warm-up, then ``--events``
  measured events); each round runs the passthrough ceiling once, then, for each commit
  interval, the worker with each guarantee (fresh consumer group, state namespace and
  ``--transactional-id``; the order of the two flips every round). A run's rate is the suite's:
  forecasts produced, counted by the worker, from 5 % of the section to all of it (with
  exactly-once the last cycle's transaction commits up to one interval later). Reported: the
  median of the rounds, and exactly-once / at-least-once per interval (the ratio of the medians
  and each round's neighbouring pair).
* **Latency**: for each interval and guarantee (alternating), a fresh topic, the worker warmed
  up on every key, then events at a fixed offered rate while a ``read_committed`` consumer
  (:func:`stream_lstm.kafka_readers.reader_options`, as every reader the project ships) tails
  the output topic. Reported: **visible** latency = the moment that consumer receives the
  forecast − the input message's timestamp, i.e. what a downstream read_committed consumer
  sees (an exactly-once forecast is visible only once its cycle's transaction commits); and,
  for comparison, the suite's **produced** latency = forecast message timestamp − input message
  timestamp (the moment the worker produced it, commit or not).

    .venv/bin/python bench/exactly_once.py       # 10-20 min on 2 cores
    .venv/bin/python bench/exactly_once.py --intervals 1000 --rounds 1 --events 50000 \\
        --load-keys 10000 --latency-rounds 0     # a quick look

Prints a table and writes ``bench/results/exactly-once-<time>[-tag].json``. Figures are
measurements for docs/benchmarks.md (section "Exactly-once"), never assertions.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from confluent_kafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from stream_lstm.benchmark import systems
from stream_lstm.benchmark.run import (
    BenchConfig,
    _Paced,
    _watermarks,
    _worker_args,
    machine,
    make_events_first_ts,
    warm_broker,
)
from stream_lstm.benchmark.workload import (
    Workload,
    create_topics,
    delete_topics,
    make_events,
    make_model,
    prefill,
)
from stream_lstm.config import default_cache_dir
from stream_lstm.drivers.kafka_client import make_consumer
from stream_lstm.kafka_readers import reader_options
from stream_lstm.stack import Stack
from stream_lstm.stack.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
ALO, EOS = "at-least-once", "exactly-once"
GUARANTEES = (ALO, EOS)


def parse_ints(text: str) -> tuple[int, ...]:
    """``"200,1000,5000"`` → ``(200, 1000, 5000)``; each must be positive."""
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not out or any(x <= 0 for x in out):
        raise argparse.ArgumentTypeError(f"positive integers, comma-separated: {text!r}")
    return out


def parse_guarantees(text: str) -> tuple[str, ...]:
    """``"at-least-once,exactly-once"`` (``alo``/``eos`` for short), in the given order."""
    short = {"alo": ALO, "eos": EOS}
    names = tuple(short.get(x.strip(), x.strip()) for x in text.split(",") if x.strip())
    bad = [x for x in names if x not in GUARANTEES]
    if bad or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"--guarantees: {', '.join(bad) or text!r}; use at-least-once,exactly-once"
        )
    return names


def guarantee_args(guarantee: str, interval_ms: int, transactional_id: str) -> list[str]:
    """The worker flags for one run: the guarantee, the commit interval, and (exactly-once) a
    transactional id of its own."""
    args = ["--processing-guarantee", guarantee, "--commit-interval-ms", str(interval_ms)]
    if guarantee == EOS:
        args += ["--transactional-id", transactional_id]
    return args


def round_order(guarantees: Sequence[str], r: int) -> list[str]:
    """The guarantees in round ``r``'s order: as given in even rounds, reversed in odd ones (so
    that neither always runs first, on a broker just warmed by the other)."""
    return list(guarantees) if r % 2 == 0 else list(reversed(guarantees))


def label(guarantee: str, interval_ms: int) -> str:
    return f"{guarantee} {interval_ms} ms"


def labelled(port: int, name: str) -> dict[str, float]:
    """A labelled counter of the worker's metrics, by its first label's value."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == name and s.labels:
                out[next(iter(s.labels.values()))] = float(s.value)
    return out


def _txns(proc: systems.WorkerProcess) -> dict[str, float]:
    return labelled(proc.port, "stream_lstm_transactions_total")


def throughput(
    a: argparse.Namespace,
    model: Path,
    bootstrap: str,
    redis_url: str,
    logs: Path,
    console: Console,
) -> dict[str, Any]:
    c = BenchConfig()
    w = Workload(keys=a.keys)
    run_id = uuid.uuid4().hex[:6]
    t_in, t_dlq, t_pass = f"eos-in-{run_id}", f"eos-dlq-{run_id}", f"eos-pass-{run_id}"
    outs = {g: f"eos-out-{g}-{run_id}" for g in a.guarantees}
    create_topics(bootstrap, [t_in, t_pass, *outs.values()], w.partitions)
    create_topics(bootstrap, [t_dlq], 1)
    try:
        console.print(
            f"[bold]throughput, {a.keys:,} keys[/bold]: pre-filling {a.keys:,} warm-up + "
            f"{a.events:,} measured events"
        )
        prefill(bootstrap, t_in, make_events(w, a.keys, seed=1, every_key_once=True))
        start = _watermarks(bootstrap, t_in, w.partitions)
        prefill(bootstrap, t_in, make_events(w, a.events, seed=2, first=a.keys))
        runs: dict[str, list[dict[str, Any]]] = {"passthrough": []}
        for r in range(a.rounds):
            p = systems.passthrough(bootstrap, t_in, t_pass, start, a.events, c.max_batch)
            runs["passthrough"].append({"rate": p.rate, "seconds": p.seconds})
            line = [f"round {r + 1}: passthrough {p.rate:,.0f}/s"]
            for ci in a.intervals:
                for g in round_order(a.guarantees, r):
                    tag = f"{'eos' if g == EOS else 'alo'}-{ci}-{r}"
                    group = f"eos-bench-{run_id}-{tag}"
                    args = _worker_args(
                        c, model, bootstrap, redis_url, t_in, outs[g], t_dlq, group
                    ) + guarantee_args(g, ci, f"eos-bench-{run_id}-{tag}")
                    run, proc = systems.worker_run(
                        args, logs / f"throughput-{tag}.log", a.keys, a.events
                    )
                    txns, stages = _txns(proc), proc.stages()
                    proc.stop()
                    runs.setdefault(label(g, ci), []).append(
                        {
                            "round": r,
                            "rate": run.rate,
                            "seconds": run.seconds,
                            "cpu_percent": run.extra["cpu_percent"],
                            "rss_bytes": run.extra["rss_bytes"],
                            "transactions": txns,
                            "stages": stages,
                        }
                    )
                    line.append(f"{'EOS' if g == EOS else 'ALO'} {ci} ms {run.rate:,.0f}/s")
            console.print("  " + " · ".join(line))
        med = {k: statistics.median(x["rate"] for x in v) for k, v in runs.items()}
        ratios: dict[str, Any] = {}
        if set(GUARANTEES) <= set(a.guarantees):
            for ci in a.intervals:
                e, o = runs[label(EOS, ci)], runs[label(ALO, ci)]
                ratios[str(ci)] = {
                    "of_medians": med[label(EOS, ci)] / med[label(ALO, ci)],
                    "per_round": [x["rate"] / y["rate"] for x, y in zip(e, o, strict=True)],
                }
        return {
            "keys": a.keys,
            "measured_events": a.events,
            "rounds": a.rounds,
            "runs": runs,
            "median_events_per_s": med,
            "eos_over_alo": ratios,
        }
    finally:
        delete_topics(bootstrap, [t_in, t_dlq, t_pass, *outs.values()])


class CommittedReader(threading.Thread):
    """Tails a topic from its start as a downstream ``read_committed`` consumer: every message
    with the moment it was received (epoch ms)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        group = f"eos-bench-reader-{time.time_ns()}"
        self.consumer = make_consumer(bootstrap, group, reader_options())
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.got: list[tuple[bytes, int, float]] = []  # (value, message timestamp, received)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            msgs = self.consumer.consume(num_messages=10_000, timeout=0.05)
            now = time.time() * 1000
            for m in msgs:
                if m.error() is None:
                    self.got.append((m.value() or b"", m.timestamp()[1], now))
        self.consumer.close()

    def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.got) >= n


def _percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {}
    return {
        q: float(np.percentile(arr, p))
        for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
    }


def latency(
    a: argparse.Namespace,
    guarantee: str,
    interval_ms: int,
    warm: list[tuple[bytes, bytes]],
    events: list[tuple[bytes, bytes]],
    model: Path,
    bootstrap: str,
    redis_url: str,
    logs: Path,
    console: Console,
) -> dict[str, Any]:
    c = BenchConfig()
    w = Workload(keys=a.load_keys)
    run_id = uuid.uuid4().hex[:6]
    t_in, t_out, t_dlq = f"eosl-in-{run_id}", f"eosl-out-{run_id}", f"eosl-dlq-{run_id}"
    create_topics(bootstrap, [t_in, t_out], w.partitions)
    create_topics(bootstrap, [t_dlq], 1)
    n, keys = len(events), a.load_keys
    tag = f"{'eos' if guarantee == EOS else 'alo'}-{interval_ms}-{run_id}"
    try:
        prefill(bootstrap, t_in, warm)
        args = _worker_args(
            c, model, bootstrap, redis_url, t_in, t_out, t_dlq, f"eosl-{tag}"
        ) + guarantee_args(guarantee, interval_ms, f"eosl-{tag}")
        proc = systems.WorkerProcess(args, logs / f"latency-{tag}.log")
        try:
            proc.wait_for("stream_lstm_forecasts_out_total", keys)
            # the warm-up's commit cycle (its snapshot of every key) before the measured load
            time.sleep(max(1.0, interval_ms / 1000 + 0.5))
            reader = CommittedReader(bootstrap, t_out, w.partitions)
            reader.start()
            cpu0, t0 = proc.cpu_seconds(), time.perf_counter()
            paced = _Paced(bootstrap, t_in, events, a.load)
            paced.start()
            paced.join()
            proc.wait_for("stream_lstm_forecasts_out_total", keys + n, timeout=300)
            cpu = 100 * (proc.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
            complete = reader.wait_for(keys + n, timeout=2 * interval_ms / 1000 + 30)
            txns, rss = _txns(proc), proc.rss()
        finally:
            proc.stop()
        reader.halt.set()
        reader.join(10)
        ins = systems.consume_all(bootstrap, t_in)
        sent = {(m.partition(), m.offset()): m.timestamp()[1] for m in ins}
        first_ts = make_events_first_ts(keys)
        visible, produced = [], []
        dec = msgspec.json.Decoder()
        for value, out_ts, received in reader.got:
            f = dec.decode(value)
            src = sent.get((f["partition"], f["offset"]))
            if src is not None and f["offset"] >= 0 and f["ts"] >= first_ts:
                visible.append(received - src)
                produced.append(float(out_ts - src))
        res = {
            "guarantee": guarantee,
            "commit_interval_ms": interval_ms,
            "offered_events_per_s": a.load,
            "achieved_events_per_s": n / paced.seconds,
            "events": n,
            "keys": keys,
            "forecasts_seen": len(visible),
            "reader_complete": complete,
            "visible_latency_ms": _percentiles(visible),
            "produced_latency_ms": _percentiles(produced),
            "worker_cpu_percent": cpu,
            "worker_rss_bytes": rss,
            "transactions": txns,
        }
        v, p = res["visible_latency_ms"], res["produced_latency_ms"]
        console.print(
            f"  {guarantee}, {interval_ms} ms: offered {a.load:,}/s (achieved "
            f"{res['achieved_events_per_s']:,.0f}/s) · visible p50 {v.get('p50', 0):.0f} / p99 "
            f"{v.get('p99', 0):.0f} ms · produced p50 {p.get('p50', 0):.0f} / p99 "
            f"{p.get('p99', 0):.0f} ms · {len(visible):,}/{n:,} seen · CPU {cpu:.0f} %"
        )
        return res
    finally:
        delete_topics(bootstrap, [t_in, t_out, t_dlq])


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per guarantee × interval: median throughput, EOS/ALO, latency percentiles (the
    median over latency rounds)."""
    t = result.get("throughput") or {}
    med = t.get("median_events_per_s", {})
    lat: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for x in result.get("latency", []):
        lat.setdefault((x["guarantee"], x["commit_interval_ms"]), []).append(x)
    out = []
    for ci in result["settings"]["intervals"]:
        for g in result["settings"]["guarantees"]:
            row: dict[str, Any] = {"guarantee": g, "commit_interval_ms": ci}
            if label(g, ci) in med:
                row["events_per_s"] = med[label(g, ci)]
                if g == EOS and str(ci) in t.get("eos_over_alo", {}):
                    row["eos_over_alo"] = t["eos_over_alo"][str(ci)]["of_medians"]
            runs = lat.get((g, ci), [])
            for kind in ("visible", "produced"):
                for q in ("p50", "p99"):
                    vals = [r[f"{kind}_latency_ms"][q] for r in runs if r[f"{kind}_latency_ms"]]
                    if vals:
                        row[f"{kind}_{q}_ms"] = statistics.median(vals)
            out.append(row)
    return out


def table(result: dict[str, Any]) -> Table:
    tb = Table(title="exactly-once vs at-least-once")
    cols = ["guarantee", "commit interval", "events/s (median)", "EOS / ALO",
            "visible p50", "visible p99", "produced p50", "produced p99"]  # fmt: skip
    for col in cols:
        tb.add_column(col, justify="left" if col == "guarantee" else "right")

    def ms(row: dict[str, Any], k: str) -> str:
        return f"{row[k]:,.0f} ms" if k in row else "–"

    for row in rows(result):
        tb.add_row(
            row["guarantee"],
            f"{row['commit_interval_ms']:,} ms",
            f"{row['events_per_s']:,.0f}" if "events_per_s" in row else "–",
            f"{row['eos_over_alo']:.2f}" if "eos_over_alo" in row else "",
            *(ms(row, f"{k}_{q}_ms") for k in ("visible", "produced") for q in ("p50", "p99")),
        )
    return tb


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--guarantees",
        type=parse_guarantees,
        default=GUARANTEES,
        help="guarantees to alternate (at-least-once,exactly-once)",
    )
    ap.add_argument(
        "--intervals",
        type=parse_ints,
        default=(200, 1000, 5000),
        help="worker --commit-interval-ms values (200,1000,5000)",
    )
    ap.add_argument("--keys", type=int, default=10_000, help="keys in the throughput runs (10000)")
    ap.add_argument(
        "--events", type=int, default=200_000, help="measured events per throughput run (200000)"
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="throughput rounds; 0 skips throughput (3)"
    )
    ap.add_argument(
        "--load", type=int, default=5_000, help="offered events/s in the latency runs (5000)"
    )
    ap.add_argument(
        "--load-keys", type=int, default=100_000, help="keys in the latency runs (100000)"
    )
    ap.add_argument(
        "--load-seconds", type=float, default=10.0, help="seconds of load per latency run (10)"
    )
    ap.add_argument(
        "--latency-rounds",
        type=int,
        default=1,
        help="latency runs per guarantee and interval; 0 skips latency (1)",
    )
    ap.add_argument("--bootstrap", help="use this running Kafka instead of starting one")
    ap.add_argument("--redis", help="use this running Redis instead of starting one")
    ap.add_argument("--kafka-port", type=int, help="port of the Kafka it starts (free port)")
    ap.add_argument("--controller-port", type=int, help="its KRaft controller port (free port)")
    ap.add_argument("--redis-port", type=int, help="port of the Redis it starts (free port)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tag", default="", help="appended to the JSON file's name")
    return ap  # fmt: skip


@dataclass
class _Started:
    stack: Stack | None
    bootstrap: str
    redis_url: str


def _stack(a: argparse.Namespace, logs: Path, console: Console) -> _Started:
    if a.bootstrap and a.redis:
        return _Started(None, a.bootstrap, a.redis)
    stack = Stack(
        logs / "stack",
        default_cache_dir(),
        kafka_port=a.kafka_port or free_port(),
        controller_port=a.controller_port or free_port(),
        redis_port=a.redis_port or free_port(),
    )
    console.print("starting a local stack (Kafka + Redis) …")
    stack.redis.start()
    try:
        stack.kafka.start()
    except BaseException:
        stack.redis.stop()
        raise
    return _Started(stack, stack.bootstrap, stack.redis_url)


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    # a SIGTERM (timeout, kill) ends the run as Ctrl-C does: the servers it started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    console = Console()
    logs = Path(tempfile.mkdtemp(prefix="stream-lstm-bench-eos-"))
    a.out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["bench/exactly_once.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "settings": settings,
        "worker": {"max_batch": BenchConfig().max_batch, "max_wait_ms": BenchConfig().max_wait_ms},
    }
    s = _stack(a, logs, console)
    t0 = time.monotonic()
    try:
        warm_broker(s.bootstrap, console)
        model = make_model(Workload(), logs / "model")
        if a.rounds > 0:
            result["throughput"] = throughput(a, model, s.bootstrap, s.redis_url, logs, console)
        if a.latency_rounds > 0:
            w = Workload(keys=a.load_keys)
            warm = make_events(w, a.load_keys, seed=1, every_key_once=True)
            events = make_events(w, int(a.load * a.load_seconds), seed=3, first=a.load_keys)
            console.print(
                f"[bold]latency at {a.load:,} events/s, {a.load_keys:,} keys[/bold] "
                "(visible: as a read_committed consumer receives it)"
            )
            result["latency"] = [
                latency(a, g, ci, warm, events, model, s.bootstrap, s.redis_url, logs, console)
                for r in range(a.latency_rounds)
                for ci in a.intervals
                for g in round_order(a.guarantees, r)
            ]
    finally:
        if s.stack is not None:
            s.stack.kafka.stop()
            s.stack.redis.stop()
    result["seconds"] = time.monotonic() - t0
    result["summary"] = rows(result)
    name = f"exactly-once-{time.strftime('%Y%m%d-%H%M%S')}{('-' + a.tag) if a.tag else ''}.json"
    path = a.out / name
    path.write_text(json.dumps(result, indent=1, default=str))
    console.print(table(result))
    console.print(f"results: {path} (worker logs in {logs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
