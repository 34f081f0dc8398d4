"""The commit cycle's stall on the hot loop: ``StateCache.snapshot`` of N dirty keys out of a
cache of K (the benchmark model's layout, scored as by default), and the writer's share of the
same snapshot (copying the rows still owed, building the per-key bytes). No Kafka, no Redis.

Run it from two checkouts with the same virtual environment to compare them in one sitting
(``PYTHONPATH=<other checkout> .venv/bin/python bench/snapshot_stall.py --tag old``); it prints
the figures and writes JSON to ``--out``. It never fails on a timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

import stream_lstm
from stream_lstm.runtime.cache import StateCache
from stream_lstm.stores.record import Layout

# the benchmark model (hidden 64 × 2 layers, T 48, 8 features) scored on steps 1,2,3,6,12,24
LAYOUT = Layout("bench0000000", 2, 64, 48, 8, targets=1, score_ring=24, steps=6, stats=1)


def measure(keys: int, dirty: int, reps: int) -> dict[str, Any]:
    lay = LAYOUT
    z = np.zeros((lay.layers, lay.hidden), np.float32)
    cache = StateCache(lay, z, z, keep_windows=False)
    slots = cache.allocate([f"key-{i}" for i in range(keys)], np.arange(keys) % 8)
    rng = np.random.default_rng(0)
    cache.h[slots] = rng.normal(size=cache.h[slots].shape).astype(np.float32)
    hot, writer = [], []
    for _ in range(reps):
        sel = np.sort(rng.choice(slots, dirty, replace=False))
        # a tick's effect on the rows: what the engine writes (one new ring row per key)
        one = np.ones(dirty, np.int64)
        cache.append(sel, one - 1, one, np.ones((dirty, lay.features), np.float32), one)
        cache.last_offset[sel] += 1
        cache.dirty[sel] = True
        t0 = time.perf_counter()
        snap = cache.snapshot(cache.dirty_slots(), everything=True)
        t1 = time.perf_counter()
        cache.dirty[sel] = False
        complete = getattr(snap, "complete", None)
        if complete is not None:
            complete()
        snap.blobs()
        release = getattr(snap, "release", None)
        if release is not None:  # as the writer does once a snapshot is written
            release()
        t2 = time.perf_counter()
        hot.append(t1 - t0)
        writer.append(t2 - t1)
        del snap
    return {
        "keys": keys,
        "dirty": dirty,
        "hot_loop_ms": 1e3 * statistics.median(hot),
        "hot_loop_us_per_key": 1e6 * statistics.median(hot) / dirty,
        "writer_ms": 1e3 * statistics.median(writer),
        "reps": reps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--dirty", default="1000,10000,20000,50000")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--tag", default="")
    a = p.parse_args()
    rows = []
    for n in (int(x) for x in a.dirty.split(",")):
        r = measure(a.keys, n, a.reps)
        rows.append(r)
        print(
            f"{a.tag or 'this checkout'}: {n:>6,} dirty of {a.keys:,} keys: hot loop "
            f"{r['hot_loop_ms']:.2f} ms ({r['hot_loop_us_per_key']:.2f} µs a key), writer "
            f"{r['writer_ms']:.1f} ms",
            flush=True,
        )
    a.out.mkdir(parents=True, exist_ok=True)
    name = f"snapshot-stall-{time.strftime('%Y%m%d-%H%M%S')}{'-' + a.tag if a.tag else ''}.json"
    src = str(Path(stream_lstm.__file__).parent)
    (a.out / name).write_text(json.dumps({"source": src, "rows": rows}, indent=1))
    print(f"results: {a.out / name}")


if __name__ == "__main__":
    main()
