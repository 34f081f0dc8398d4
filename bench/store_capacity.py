"""The state store's per-component costs, for the capacity model in docs/scaling.md.

Starts (on free ports, in a temporary directory, stopped at the end) one local ``redis-server``
and a local Redis Cluster of 3 masters + 3 replicas (both with the append-only file on,
``appendfsync everysec``, as the stack code runs them), and measures, for the benchmark
model's state layout (``stream_lstm.benchmark.workload``: an ``lstm`` of hidden 64 × 2 layers,
8 features, window 48, horizon 24; scored with the worker's default ``--score-steps auto``):

1. **State writes**: ``RedisStateStore.save(snapshot)`` of commit cycles with N dirty keys —
   the steady state (each key one new ring row since its last write) and a cold cycle (keys
   not in Redis yet, whole records: the window's 48 rows) — on one node, and on the cluster
   with ``min_replicas`` 0 and 1: keys/s, milliseconds per cycle, the client's CPU, and the
   Redis servers' CPU seconds per 1,000 key writes (``INFO cpu`` deltas summed over the
   masters; the main thread's ``used_cpu_*_main_thread`` gives the per-shard capacity: keys/s
   one shard core takes = 1000 / that figure).
   The cycles of N = 10,000 and the loads are also measured on the one node without the score
   block (``--score-steps none``).
2. **Loads**: ``store.load(keys)`` of 10,000 keys the worker does not hold (they are in Redis).
3. **Bytes per key in Redis**: ``MEMORY USAGE`` of sampled records and the ``INFO memory``
   ``used_memory`` delta per key after writing 100,000 whole records to the one node, with and
   without scoring (once per layout: not a timing).
4. **Bytes per key in the worker**: the ``StateCache`` slabs (nbytes / capacity), the Python
   heap per key as ``tracemalloc`` sees it (slabs, index, key strings), and the snapshot
   buffers per dirty key.

Every measurement is repeated (``--repeats``, default 3) with the targets interleaved within
each repeat, so that the ratios between them hold on a noisy machine; the table shows the
median and the spread (min–max) over the repeats.

    .venv/bin/python bench/store_capacity.py            # ~10 min on 2 cores
    .venv/bin/python bench/store_capacity.py --quick    # ~2.5 min: N = 1,000 and 10,000

Prints a table and writes ``bench/results/store-capacity-<time>[-tag].json``. Figures are
measurements for docs/scaling.md, never assertions.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import stream_lstm
from stream_lstm.benchmark.workload import Workload, make_model
from stream_lstm.model.artifact import load_artifact
from stream_lstm.model.runtime import Forecaster
from stream_lstm.runtime.cache import StateCache
from stream_lstm.runtime.engine import layout_for
from stream_lstm.runtime.scoring import ScoringConfig
from stream_lstm.stack.procs import free_port
from stream_lstm.stack.redis import RedisServer, RedisSpec
from stream_lstm.stack.redis_cluster import ClusterSpec, RedisCluster, free_ports
from stream_lstm.stores.record import Layout
from stream_lstm.stores.redis import RedisStateStore

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8  # the benchmark's input topic (only the records' header depends on it)
T0 = 1_704_067_200_000
CPU_FIELDS = (
    "used_cpu_sys",
    "used_cpu_user",
    "used_cpu_sys_main_thread",
    "used_cpu_user_main_thread",
    "used_cpu_sys_children",
    "used_cpu_user_children",
)


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]  # dirty keys per commit cycle
    steady_key_writes: int  # per (target, N, repeat): cycles = this // N, within the bounds
    min_cycles: int
    max_cycles: int
    load_keys: int
    load_rounds: int
    memory_keys: int  # whole records written to the one node per layout (once: no timing)
    memory_samples: int  # records whose MEMORY USAGE is read
    worker_keys: int  # StateCache capacity for the worker's bytes per key
    repeats: int

    def cycles(self, n: int) -> int:
        return max(self.min_cycles, min(self.max_cycles, self.steady_key_writes // n))


FULL = Plan((1_000, 10_000, 50_000), 60_000, 3, 20, 10_000, 3, 100_000, 1_000, 100_000, 3)
QUICK = Plan((1_000, 10_000), 40_000, 2, 10, 10_000, 2, 20_000, 300, 20_000, 3)


@dataclass(frozen=True)
class Target:
    name: str  # "one node", "cluster, min_replicas 0", …
    url: str
    min_replicas: int
    ports: tuple[int, ...]  # every node (masters and replicas)
    layout: str = "scored"  # which of bench_layouts' layouts is written
    sizes: tuple[int, ...] | None = None  # N measured (None: the plan's)


# -- the servers' CPU --------------------------------------------------------------------------
class CpuMeter:
    """``INFO cpu`` of every node of a target, and which nodes are masters now."""

    def __init__(self, ports: Sequence[int], host: str = "127.0.0.1") -> None:
        self.clients = {p: redis.Redis(host=host, port=p, socket_timeout=5) for p in ports}

    def read(self) -> dict[int, dict[str, float]]:
        out = {}
        for p, c in self.clients.items():
            info = c.info("cpu")
            out[p] = {k: float(info.get(k, 0.0)) for k in CPU_FIELDS}
        return out

    def masters(self) -> set[int]:
        return {p for p, c in self.clients.items() if c.info("replication")["role"] == "master"}

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def cpu_delta(
    before: dict[int, dict[str, float]], after: dict[int, dict[str, float]], masters: set[int]
) -> dict[str, float]:
    """CPU seconds spent between two readings: the masters' (process, main thread, forked
    children such as AOF rewrites) and the replicas' (process)."""

    def total(ports: Sequence[int] | set[int], *fields: str) -> float:
        return sum(after[p][f] - before[p][f] for p in ports for f in fields)

    replicas = [p for p in before if p not in masters]
    return {
        "masters": total(masters, "used_cpu_sys", "used_cpu_user"),
        "masters_main_thread": total(
            masters, "used_cpu_sys_main_thread", "used_cpu_user_main_thread"
        ),
        "masters_children": total(masters, "used_cpu_sys_children", "used_cpu_user_children"),
        "replicas": total(replicas, "used_cpu_sys", "used_cpu_user"),
    }


# -- state the way the worker builds it ----------------------------------------------------------
def bench_layouts(tmp: Path) -> tuple[dict[str, Layout], dict[str, Any]]:
    """The benchmark model's layouts: scored as the worker's defaults score it, and unscored."""
    w = Workload()
    fc = Forecaster(load_artifact(make_model(w, tmp / "model")))
    scoring = ScoringConfig()  # WorkerSettings' defaults: --score-steps auto
    layouts = {"scored": layout_for(fc, scoring), "unscored": layout_for(fc, None)}
    about = {
        "workload": {k: getattr(w, k) for k in ("features", "hidden", "layers", "time_step")}
        | {"horizon": w.horizon},
        "score_steps": scoring.steps,
        "layouts": {
            name: {
                "record_bytes": lay.record_size,
                "fixed_bytes": lay.fixed_size,
                "row_bytes": lay.row_bytes,
                "score_block_bytes": lay.score_block.itemsize,
                "dims": [lay.layers, lay.hidden, lay.window, lay.features, *lay.score_dims],
            }
            for name, lay in layouts.items()
        },
    }
    return layouts, about


def new_cache(layout: Layout, n: int) -> tuple[StateCache, np.ndarray, list[str]]:
    zeros = np.zeros((layout.layers, layout.hidden), np.float32)
    cache = StateCache(layout, zeros, zeros, keep_windows=False, capacity=n)
    keys = [f"key-{i}" for i in range(n)]
    slots = cache.allocate(keys, np.arange(n) % PARTITIONS)
    return cache, slots, keys


def feed(cache: StateCache, slots: np.ndarray, rows: int, t0: int, rng: np.random.Generator) -> int:
    """``rows`` events for each of ``slots`` (as a tick applies them): ring rows, counters, a
    new (h, c). Returns the time after the last event."""
    n = len(slots)
    s = np.repeat(slots, rows)
    pos = np.tile(np.arange(rows), n)
    ts = t0 + pos.astype(np.int64)
    values = rng.standard_normal((len(s), cache.layout.features), dtype=np.float32)
    cache.append(s, pos, np.full(len(s), rows), values, ts)
    cache.h[slots] = rng.standard_normal(cache.h[slots].shape, dtype=np.float32)
    cache.c[slots] = rng.standard_normal(cache.c[slots].shape, dtype=np.float32)
    cache.last_ts[slots] = t0 + rows - 1
    cache.last_offset[slots] += rows
    cache.count[slots] += rows
    cache.dirty[slots] = True
    return t0 + rows


def flush(target: Target, meter: CpuMeter) -> None:
    """Empty every master (replicas follow), so each measurement starts from the same size."""
    for p in meter.masters():
        meter.clients[p].flushall()
    if len(target.ports) > 1:  # the replicas must have caught up before the next WAIT
        time.sleep(0.2)


# -- 1 and 2: writes and loads -----------------------------------------------------------------
def measure_writes(
    target: Target, meter: CpuMeter, layout: Layout, n: int, cycles: int, load: Plan | None
) -> dict[str, Any]:
    """A cold cycle of ``n`` whole records, then ``cycles`` steady ones (one new row per key);
    with ``load``, also loads of ``load.load_keys`` of those keys."""
    rng = np.random.default_rng(n)
    store = RedisStateStore(
        target.url, f"cap-{uuid.uuid4().hex[:8]}", layout, min_replicas=target.min_replicas
    )
    store.connect()
    masters = meter.masters()
    cache, slots, keys = new_cache(layout, n)
    out: dict[str, Any] = {"target": target.name, "keys": n}

    def cycle(rows: int, t: int) -> tuple[dict[str, float], int]:
        t = feed(cache, slots, rows, t, rng)
        s0 = time.perf_counter()
        snap = cache.snapshot(cache.dirty_slots())
        snap_s = time.perf_counter() - s0
        cache.dirty[:] = False
        c0, p0, w0 = meter.read(), time.process_time(), time.perf_counter()
        res = store.save(snap)
        wall, client = time.perf_counter() - w0, time.process_time() - p0
        cpu = cpu_delta(c0, meter.read(), masters)
        if res.written != n or res.refused or res.wiped:
            raise RuntimeError(f"{target.name}: a save of {n} keys wrote {res}")
        return {"wall_s": wall, "client_cpu_s": client, "snapshot_s": snap_s, **cpu}, t

    t = T0
    out["cold"], t = cycle(layout.window, t)
    steady = []
    for _ in range(cycles):
        one, t = cycle(1, t)
        steady.append(one)
    out["steady_cycles"] = steady
    if load is not None:
        want = keys[: load.load_keys]
        loads = []
        for _ in range(load.load_rounds):
            c0, p0, w0 = meter.read(), time.process_time(), time.perf_counter()
            got = store.load(want)
            wall, client = time.perf_counter() - w0, time.process_time() - p0
            if sum(r is not None for r in got) != len(want):
                raise RuntimeError(f"{target.name}: a load found fewer records than written")
            loads.append(
                {
                    "keys": len(want),
                    "wall_s": wall,
                    "client_cpu_s": client,
                    **cpu_delta(c0, meter.read(), masters),
                }
            )
        out["loads"] = loads
    store.close()
    return out


def per_rep_write_figures(rec: dict[str, Any], phase: str) -> dict[str, float]:
    """One repeat's figures for the cold cycle or the steady cycles (summed over its cycles)."""
    cycles = [rec["cold"]] if phase == "cold" else rec["steady_cycles"]
    n = rec["keys"] * len(cycles)
    wall = sum(c["wall_s"] for c in cycles)
    per_1000 = {
        f: 1000 * sum(c[f] for c in cycles) / n
        for f in ("client_cpu_s", "masters", "masters_main_thread", "replicas")
    }
    return {
        "keys_per_s": n / wall,
        "ms_per_cycle": 1000 * wall / len(cycles),
        "snapshot_ms_per_cycle": 1000 * sum(c["snapshot_s"] for c in cycles) / len(cycles),
        "client_cpu_s_per_1000": per_1000["client_cpu_s"],
        "server_cpu_s_per_1000": per_1000["masters"],
        "server_main_thread_cpu_s_per_1000": per_1000["masters_main_thread"],
        "replica_cpu_s_per_1000": per_1000["replicas"],
        "shard_core_keys_per_s": 1000 / per_1000["masters_main_thread"]
        if per_1000["masters_main_thread"] > 0
        else float("nan"),
    }


def per_rep_load_figures(rec: dict[str, Any]) -> dict[str, float]:
    loads = rec["loads"]
    n = sum(x["keys"] for x in loads)
    wall = sum(x["wall_s"] for x in loads)
    return {
        "keys_per_s": n / wall,
        "ms_per_load": 1000 * wall / len(loads),
        "client_cpu_s_per_1000": 1000 * sum(x["client_cpu_s"] for x in loads) / n,
        "server_cpu_s_per_1000": 1000 * sum(x["masters"] for x in loads) / n,
        "server_main_thread_cpu_s_per_1000": 1000
        * sum(x["masters_main_thread"] for x in loads)
        / n,
    }


# -- 3 and 4: memory -----------------------------------------------------------------------------
def measure_redis_memory(
    target: Target, meter: CpuMeter, layout: Layout, n: int, samples: int
) -> dict[str, Any]:
    """``n`` whole records written to an emptied one-node Redis: used_memory per key, and the
    MEMORY USAGE of sampled records."""
    flush(target, meter)
    client = next(iter(meter.clients.values()))
    store = RedisStateStore(target.url, f"mem-{uuid.uuid4().hex[:8]}", layout, min_replicas=0)
    store.connect()  # the epoch markers and the version list come before the "before"
    before = int(client.info("memory")["used_memory"])
    rng = np.random.default_rng(0)
    cache, slots, keys = new_cache(layout, n)
    batch = 20_000
    for i in range(0, n, batch):
        part = slots[i : i + batch]
        feed(cache, part, layout.window, T0, rng)
        snap = cache.snapshot(part)
        cache.dirty[part] = False
        res = store.save(snap)
        if res.written != len(part):
            raise RuntimeError(f"memory: a save of {len(part)} keys wrote {res}")
    after = int(client.info("memory")["used_memory"])
    picks = np.random.default_rng(1).choice(n, size=min(samples, n), replace=False)
    usage = [int(client.memory_usage(store.record_key(keys[i]), samples=0) or 0) for i in picks]
    store.close()
    flush(target, meter)
    return {
        "layout_record_bytes": layout.record_size,
        "keys": n,
        "used_memory_before": before,
        "used_memory_after": after,
        "used_memory_per_key": (after - before) / n,
        "memory_usage_median": statistics.median(usage),
        "memory_usage_min": min(usage),
        "memory_usage_max": max(usage),
        "sampled": len(usage),
    }


def measure_worker_memory(layout: Layout, n: int, keep_windows: bool) -> dict[str, Any]:
    """A worker's cache of ``n`` keys: slab bytes per key, and the Python heap per key."""
    zeros = np.zeros((layout.layers, layout.hidden), np.float32)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cache = StateCache(layout, zeros, zeros, keep_windows=keep_windows, capacity=n)
    cache.allocate([f"key-{i}" for i in range(n)], np.arange(n) % PARTITIONS)
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    slabs = {
        name: int(arr.nbytes)
        for name, arr in vars(cache).items()
        if isinstance(arr, np.ndarray) and name not in ("init_h", "init_c")
    }
    # what one dirty key takes in a snapshot (the fixed part: header, h, c, score block)
    snap = cache.snapshot(np.arange(n))
    snap.complete()
    snap_bytes = int(snap.fixed.nbytes)
    return {
        "keys": n,
        "keep_windows": keep_windows,
        "capacity": cache.capacity,
        "slab_bytes_per_key": sum(slabs.values()) / cache.capacity,
        "slabs": {k: v / cache.capacity for k, v in slabs.items()},
        "traced_bytes_per_key": traced / n,
        "snapshot_bytes_per_dirty_key": snap_bytes / n,
    }


# -- summaries -----------------------------------------------------------------------------------
def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (target, N, phase): each figure's median and spread over the repeats."""
    out: dict[str, Any] = {"writes": [], "loads": []}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["target"], r["keys"]), []).append(r)
    for (target, n), recs in groups.items():
        for phase in ("steady", "cold"):
            reps = [per_rep_write_figures(r, phase) for r in recs]
            out["writes"].append(
                {
                    "target": target,
                    "keys": n,
                    "phase": phase,
                    "repeats": len(reps),
                    "cycles_per_repeat": 1 if phase == "cold" else len(recs[0]["steady_cycles"]),
                    **{f: spread([x[f] for x in reps]) for f in reps[0]},
                    "per_repeat": reps,
                }
            )
        with_loads = [r for r in recs if "loads" in r]
        if with_loads:
            reps = [per_rep_load_figures(r) for r in with_loads]
            out["loads"].append(
                {
                    "target": target,
                    "keys": with_loads[0]["loads"][0]["keys"],
                    "repeats": len(reps),
                    **{f: spread([x[f] for x in reps]) for f in reps[0]},
                    "per_repeat": reps,
                }
            )
    return out


def fmt(s: dict[str, float], digits: int = 0, scale: float = 1.0) -> str:
    """``median (min–max)``."""
    m, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    return f"{m:,.{digits}f} [dim]({lo:,.{digits}f}–{hi:,.{digits}f})[/]"


def table(title: str, columns: Sequence[str], left: int = 1) -> Table:
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i < left else "right")
    return t


def print_tables(console: Console, result: dict[str, Any]) -> None:
    summary = result["summary"]
    reps = result["settings"]["repeats"]
    t = table(
        f"State writes: RedisStateStore.save of one commit cycle of N dirty keys, median (min–max) "
        f"of {reps} repeats; CPU in ms per 1,000 key writes (Redis: summed over the masters)",
        ("target", "N", "cycle", "keys/s", "ms / cycle", "snapshot ms", "client CPU",
         "Redis CPU", "Redis main thread", "keys/s per shard core", "replicas CPU"),
        left=3,
    )  # fmt: skip
    for w in summary["writes"]:
        t.add_row(
            w["target"], f"{w['keys']:,}", w["phase"], fmt(w["keys_per_s"]),
            fmt(w["ms_per_cycle"], 1), fmt(w["snapshot_ms_per_cycle"], 1),
            fmt(w["client_cpu_s_per_1000"], 1, 1000), fmt(w["server_cpu_s_per_1000"], 1, 1000),
            fmt(w["server_main_thread_cpu_s_per_1000"], 1, 1000),
            fmt(w["shard_core_keys_per_s"]), fmt(w["replica_cpu_s_per_1000"], 1, 1000),
        )  # fmt: skip
    console.print(t)
    t = table(
        "Loads: store.load of keys the worker does not hold (they are in Redis); CPU in ms per "
        "1,000 keys",
        ("target", "keys", "keys/s", "ms / load", "client CPU", "Redis CPU", "Redis main thread"),
    )
    for x in summary["loads"]:
        t.add_row(
            x["target"], f"{x['keys']:,}", fmt(x["keys_per_s"]), fmt(x["ms_per_load"], 1),
            fmt(x["client_cpu_s_per_1000"], 1, 1000), fmt(x["server_cpu_s_per_1000"], 1, 1000),
            fmt(x["server_main_thread_cpu_s_per_1000"], 1, 1000),
        )  # fmt: skip
    console.print(t)
    t = table(
        "Bytes per key in Redis (one node, whole records with a TTL)",
        ("layout", "record", "MEMORY USAGE median (min–max)", "used_memory delta / key",
         "keys written"),
    )  # fmt: skip
    for name, m in result["redis_memory"].items():
        t.add_row(
            name, f"{m['layout_record_bytes']:,}",
            f"{m['memory_usage_median']:,.0f} "
            f"({m['memory_usage_min']:,}–{m['memory_usage_max']:,})",
            f"{m['used_memory_per_key']:,.0f}", f"{m['keys']:,}",
        )  # fmt: skip
    console.print(t)
    t = table(
        "Bytes per key in the worker (StateCache)",
        ("layout", "windows in memory", "slabs / key", "Python heap / key", "snapshot / dirty key"),
    )
    for w in result["worker_memory"]:
        t.add_row(
            w["layout"], "yes (windowed kinds)" if w["keep_windows"] else "no (lstm)",
            f"{w['slab_bytes_per_key']:,.0f}", f"{w['traced_bytes_per_key']:,.0f}",
            f"{w['snapshot_bytes_per_dirty_key']:,.0f}",
        )  # fmt: skip
    console.print(t)


def machine() -> dict[str, Any]:
    """The benchmark suite's machine description, plus the client libraries measured here."""
    from stream_lstm.benchmark.run import machine as bench_machine

    return {
        **bench_machine(),
        "redis_py": redis.__version__,
        "stream_lstm": stream_lstm.__version__,
    }


# -- the run -----------------------------------------------------------------------------------
def run(plan: Plan, console: Console, tmp: Path) -> dict[str, Any]:
    layouts, about = bench_layouts(tmp)
    result: dict[str, Any] = {"model": about}
    single = RedisServer(RedisSpec(run_dir=tmp / "redis", port=free_port()))
    ports = free_ports(12)  # 6 nodes and their cluster buses
    cluster = RedisCluster(
        ClusterSpec(run_dir=tmp / "redis-cluster", ports=ports[:6], bus_ports=ports[6:])
    )
    meters: list[CpuMeter] = []
    started: list[Callable[[], object]] = []
    try:
        console.print("starting one redis-server and a 3 + 3 Redis Cluster ...")
        single.start(fresh=True)
        started.append(lambda: single.stop(grace_s=20))
        cluster.start(fresh=True)
        started.append(lambda: cluster.stop(grace_s=20))
        one = Target("one node", single.spec.url, 0, (single.spec.port,))
        cl = cluster.spec
        targets = [
            one,
            Target("cluster, min_replicas 0", cl.url, 0, cl.ports),
            Target("cluster, min_replicas 1", cl.url, 1, cl.ports),
            # the same cycles without the score block (--score-steps none), for comparison
            Target("one node, unscored", one.url, 0, one.ports, "unscored", (plan.load_keys,)),
        ]
        meter = {t.ports: CpuMeter(t.ports) for t in targets}
        meters += meter.values()
        result["servers"] = {
            "redis_server": str(
                meter[one.ports].clients[one.ports[0]].info("server")["redis_version"]
            ),
            "cluster": "3 masters + 3 replicas, appendonly yes, appendfsync everysec",
            "one_node": "appendonly yes, appendfsync everysec",
        }
        result["targets"] = [
            {"name": t.name, "min_replicas": t.min_replicas, "layout": t.layout} for t in targets
        ]
        runs: list[dict[str, Any]] = []
        work = [(n, tg) for n in plan.sizes for tg in targets if n in (tg.sizes or plan.sizes)]
        columns = (
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(),
        )  # fmt: skip
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("measuring", total=plan.repeats * len(work) + len(layouts))
            for rep in range(plan.repeats):
                for n, tg in work:  # interleaved: the targets see the same machine state
                    bar.update(task, description=f"repeat {rep + 1}: {tg.name}, N={n:,}")
                    m = meter[tg.ports]
                    flush(tg, m)
                    load = plan if n == plan.load_keys else None
                    lay = layouts[tg.layout]
                    rec = measure_writes(tg, m, lay, n, plan.cycles(n), load)
                    rec["repeat"] = rep
                    runs.append(rec)
                    flush(tg, m)
                    bar.advance(task)
            # memory is not a timing: measured once per layout
            mem: dict[str, dict[str, Any]] = {}
            for name, lay in layouts.items():
                bar.update(task, description=f"Redis memory, {name}, {plan.memory_keys:,} keys")
                mem[name] = measure_redis_memory(
                    one, meter[one.ports], lay, plan.memory_keys, plan.memory_samples
                )
                bar.advance(task)
        result["write_runs"] = runs
        result["summary"] = summarise(runs)
        result["redis_memory"] = mem
    finally:
        for m in meters:
            m.close()
        for stop in reversed(started):
            stop()
    result["worker_memory"] = [
        {"layout": name, **measure_worker_memory(lay, plan.worker_keys, keep)}
        for name, lay in layouts.items()
        for keep in (False, True)
    ]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 1,000 and 10,000; fewer cycles")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of every measurement")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--tag", default="", help="appended to the JSON file's name")
    args = ap.parse_args()
    # a SIGTERM (timeout, kill) ends the run as Ctrl-C does: the servers it started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = QUICK if args.quick else FULL
    plan = Plan(**{**plan.__dict__, "repeats": args.repeats})
    console = Console()
    if not console.is_terminal:  # piped into a file: wide enough for the tables
        console = Console(width=220)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="store-capacity-") as tmp:
        result = run(plan, console, Path(tmp))
    result = {
        "started": started,
        "seconds": round(time.monotonic() - t0, 1),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine(),
        "settings": plan.__dict__,
        **result,
    }
    print_tables(console, result)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    path = args.out / f"store-capacity-{time.strftime('%Y%m%d-%H%M%S')}{tag}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
