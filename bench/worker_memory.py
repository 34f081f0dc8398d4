"""A worker's memory with K keys cached: the real ``stream-lstm worker`` on a running stack,
fed every key once and then random events up to ``--events`` (a backlog it drains at full
speed): its highest RSS while it drains them, and its RSS once it is idle (every forecast out,
every key's state written), broken down by mapping (``/proc/<pid>/smaps``: anonymous memory,
the C heap, shared libraries).

    .venv/bin/python bench/worker_memory.py --bootstrap 127.0.0.1:9092 \\
        --redis redis://127.0.0.1:6379/6 --keys 100000 --events 200000

Run it from two checkouts (``PYTHONPATH=<other checkout>``: the worker process inherits it) to
compare them on one stack. Prints the figures and writes JSON to ``--out``; never fails on them.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import signal
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

import stream_lstm
from stream_lstm.benchmark.systems import WorkerProcess
from stream_lstm.benchmark.workload import (
    Workload,
    create_topics,
    delete_topics,
    make_events,
    make_model,
    prefill,
)


def smaps(pid: int) -> dict[str, float]:
    """MiB resident per kind of mapping."""
    agg: collections.Counter[str] = collections.Counter()
    cur = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            cur = parts[5] if len(parts) > 5 else "[anon]"
            cur = "[libs]" if ".so" in cur else cur if cur.startswith("[") else "[files]"
        elif parts and parts[0] == "Rss:":
            agg[cur] += int(parts[1])
    return {k: v / 1024 for k, v in agg.most_common() if v >= 1024}


def settled(proc: WorkerProcess, bootstrap: str, group: str, topic: str, n: int) -> float:
    """Seconds until the worker is idle: its group's committed offsets cover all ``n`` events
    (so every forecast is acknowledged and every key's state written), then 2 s more."""
    t0 = time.perf_counter()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(Workload().partitions)]
        while sum(max(0, tp.offset) for tp in c.committed(parts, timeout=10)) < n:
            if proc.proc.poll() is not None or time.perf_counter() - t0 > 300:
                raise RuntimeError(f"the worker did not commit all {n} events; see {proc.log}")
            time.sleep(0.5)
    finally:
        c.close()
    time.sleep(8)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--tag", default="")
    a, extra = p.parse_known_args()
    # a SIGTERM (timeout, kill) ends the run as Ctrl-C does: the worker it started is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    w = Workload(keys=a.keys)
    model = make_model(w, Path("/tmp/stream-lstm-worker-memory-model"))
    run = uuid.uuid4().hex[:6]
    t_in, t_out, t_dlq = f"mem-in-{run}", f"mem-out-{run}", f"mem-dlq-{run}"
    create_topics(a.bootstrap, [t_in, t_out, t_dlq], w.partitions)
    proc: WorkerProcess | None = None
    try:
        events = make_events(w, a.keys, every_key_once=True)
        events += make_events(w, max(0, a.events - a.keys), first=a.keys, seed=1)
        prefill(a.bootstrap, t_in, events)
        args = ["--model", str(model), "--bootstrap", a.bootstrap, "--redis", a.redis,
                "--input-topic", t_in, "--output-topic", t_out, "--dlq-topic", t_dlq,
                "--group", f"mem-{run}", "--max-future-ms", "-1", *extra]  # fmt: skip
        proc = WorkerProcess(args, Path(f"/tmp/worker-memory-{run}.log"))
        t0 = time.perf_counter()
        peak = 0
        while proc.metric("stream_lstm_forecasts_out_total") < len(events):
            if proc.proc.poll() is not None or time.perf_counter() - t0 > 900:
                raise RuntimeError(f"the worker stopped or stalled; see {proc.log}")
            peak = max(peak, proc.rss())
            time.sleep(0.1)
        took = time.perf_counter() - t0
        settle = settled(proc, a.bootstrap, f"mem-{run}", t_in, len(events))
        res = {
            "source": str(Path(stream_lstm.__file__).parent),
            "keys": a.keys,
            "events": len(events),
            "seconds": took,
            "rss_peak_mib": peak / 2**20,
            "settle_seconds": settle,
            "rss_mib": proc.rss() / 2**20,
            "smaps_mib": smaps(proc.proc.pid),
            "cached_keys": proc.metric("stream_lstm_cached_keys"),
        }
    finally:
        if proc is not None and proc.proc.poll() is None:
            proc.stop()
        delete_topics(a.bootstrap, [t_in, t_out, t_dlq])
    print(
        f"{a.tag or 'this checkout'}: {a.keys:,} keys, {len(events):,} events in {took:.1f} s: "
        f"RSS {res['rss_peak_mib']:.0f} MiB at most while draining them, "
        f"{res['rss_mib']:.0f} MiB once idle ("
        + ", ".join(f"{k} {v:.0f}" for k, v in res["smaps_mib"].items())
        + ")"
    )
    a.out.mkdir(parents=True, exist_ok=True)
    tag = f"-{a.tag}" if a.tag else ""
    name = f"worker-memory-{a.keys}-{time.strftime('%Y%m%d-%H%M%S')}{tag}.json"
    (a.out / name).write_text(json.dumps(res, indent=1))
    print(f"results: {a.out / name}")


if __name__ == "__main__":
    main()
