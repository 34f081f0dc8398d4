"""A worker's memory with K keys cached: the real ``stream-lstm worker`` on a running stack,
fed every key once and then random events up to ``--events``, its RSS broken down by mapping
(``/proc/<pid>/smaps``: anonymous memory, the C heap, shared libraries) once it is idle.

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
import time
import uuid
from pathlib import Path

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
    w = Workload(keys=a.keys)
    model = make_model(w, Path("/tmp/stream-lstm-worker-memory-model"))
    run = uuid.uuid4().hex[:6]
    t_in, t_out, t_dlq = f"mem-in-{run}", f"mem-out-{run}", f"mem-dlq-{run}"
    create_topics(a.bootstrap, [t_in, t_out, t_dlq], w.partitions)
    try:
        events = make_events(w, a.keys, every_key_once=True)
        events += make_events(w, max(0, a.events - a.keys), first=a.keys, seed=1)
        prefill(a.bootstrap, t_in, events)
        args = ["--model", str(model), "--bootstrap", a.bootstrap, "--redis", a.redis,
                "--input-topic", t_in, "--output-topic", t_out, "--dlq-topic", t_dlq,
                "--group", f"mem-{run}", "--max-future-ms", "-1", *extra]  # fmt: skip
        proc = WorkerProcess(args, Path(f"/tmp/worker-memory-{run}.log"))
        t0 = time.perf_counter()
        proc.wait_for("stream_lstm_events_in_total", len(events), timeout=900)
        took = time.perf_counter() - t0
        time.sleep(6)  # the last commit cycles
        res = {
            "source": str(Path(stream_lstm.__file__).parent),
            "keys": a.keys,
            "events": len(events),
            "seconds": took,
            "rss_mib": proc.rss() / 2**20,
            "smaps_mib": smaps(proc.proc.pid),
            "cached_keys": proc.metric("stream_lstm_cached_keys"),
        }
        proc.stop()
    finally:
        delete_topics(a.bootstrap, [t_in, t_out, t_dlq])
    print(
        f"{a.tag or 'this checkout'}: {a.keys:,} keys, {len(events):,} events in {took:.1f} s: "
        f"RSS {res['rss_mib']:.0f} MiB ("
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
