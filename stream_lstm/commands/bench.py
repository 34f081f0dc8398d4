"""``stream-lstm bench``: the benchmark suite on the real local stack (figures, never a verdict)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from rich.console import Console

from stream_lstm.errors import ConfigError


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark the worker against the passthrough ceiling and a per-event baseline",
        description=(
            "Measure, in one run on the local stack (Apache Kafka + Redis, started on free ports "
            "unless --bootstrap and --redis are given): saturated throughput of (a) a passthrough "
            "consumer/producer, (b) a per-event baseline (Redis GET, one model call, Redis SET, "
            "produce per event) and (c) the worker; end-to-end latency at fixed offered loads; "
            "latency through a burst (5,000 → 50,000 → 5,000 events/s) with the time to drain it; "
            "and an inference microbenchmark. Prints figures and writes JSON to --out; it never "
            "fails on a timing."
        ),
    )
    p.add_argument(
        "--only", help="comma-separated parts: throughput,latency,burst,micro (default all)"
    )
    p.add_argument(
        "--keys",
        type=_ints,
        default=(10_000, 100_000),
        help="key counts for throughput (10000,100000)",
    )
    p.add_argument(
        "--events", type=int, default=200_000, help="measured events per throughput run (200000)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds per throughput figure; the median is reported (3)",
    )
    p.add_argument(
        "--baseline-events",
        type=int,
        default=4000,
        help="events the per-event baseline processes (4000)",
    )
    p.add_argument(
        "--loads", type=_ints, default=(5000, 20000, 50000), help="offered loads, events/s"
    )
    p.add_argument(
        "--load-keys", type=int, default=100_000, help="keys in the latency runs (100000)"
    )
    p.add_argument(
        "--load-seconds", type=float, default=10.0, help="seconds of load per latency run (10)"
    )
    p.add_argument(
        "--runtimes",
        default="confluent,faust",
        help="worker runtimes to measure next to the ceiling and the baseline (confluent,faust)",
    )
    p.add_argument(
        "--faust-loads",
        type=_ints,
        default=(5000, 20000),
        help="offered loads for the Faust runtime's latency runs (5000,20000)",
    )
    p.add_argument(
        "--burst",
        type=_phases,
        default=((5000, 10.0), (50000, 5.0), (5000, 20.0)),
        help="the burst run's phases, RATE:SECONDS in order (5000:10,50000:5,5000:20)",
    )
    p.add_argument("--max-batch", type=int, default=4096, help="worker --max-batch")
    p.add_argument("--max-wait-ms", type=int, default=5, help="worker --max-wait-ms")
    p.add_argument("--threads", type=int, help="worker --threads")
    p.add_argument(
        "--worker-arg", action="append", default=[], help="extra worker flag (repeatable)"
    )
    p.add_argument("--micro-sizes", type=_ints, help="tick sizes for the microbenchmark")
    p.add_argument(
        "--out", type=Path, default=Path("bench/results"), help="directory for the JSON results"
    )
    p.add_argument("--tag", default="", help="a label added to the result file name")
    p.add_argument("--bootstrap", help="use this running Kafka instead of starting one")
    p.add_argument("--redis", help="use this running Redis instead of starting one")
    p.add_argument(
        "--redis-cluster",
        default="local",
        help="the worker again with its state on a Redis Cluster, in the same rounds: `local` "
        "(default) starts a 3-master + 3-replica cluster for the run, a URL uses a running one, "
        "`none` skips it",
    )
    p.add_argument(
        "--exactly-once",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the worker again with --processing-guarantee exactly-once in the throughput "
        "rounds (default on)",
    )
    p.set_defaults(run=run)


def _runtimes(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in names if x not in ("confluent", "faust")]
    if bad or not names:
        raise ConfigError(f"--runtimes: unknown {', '.join(bad) or '(none)'}; use confluent,faust")
    return names


PARTS = ("throughput", "latency", "burst", "micro")


def _phases(text: str) -> tuple[tuple[int, float], ...]:
    try:
        out = tuple(
            (int(r), float(sec))
            for r, sec in (x.strip().split(":") for x in text.split(",") if x.strip())
        )
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: phases are RATE:SECONDS, comma-separated, e.g. 5000:10,50000:5,5000:20"
        ) from None
    if not out or any(r <= 0 or sec <= 0 for r, sec in out):
        raise argparse.ArgumentTypeError(f"{text!r}: rates and seconds must be positive")
    return out


def _parts(text: str | None) -> tuple[str, ...]:
    if not text:
        return PARTS
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in names if x not in PARTS]
    if bad or not names:
        raise ConfigError(f"--only: unknown {', '.join(bad) or '(none)'}; use {','.join(PARTS)}")
    return names


def run(args: argparse.Namespace) -> int:
    from stream_lstm.benchmark.micro import SIZES
    from stream_lstm.benchmark.report import markdown
    from stream_lstm.benchmark.run import BenchConfig, run_bench

    c = BenchConfig(
        keys=args.keys,
        events=args.events,
        rounds=args.rounds,
        baseline_events=args.baseline_events,
        loads=args.loads,
        runtimes=_runtimes(args.runtimes),
        faust_loads=args.faust_loads,
        load_keys=args.load_keys,
        load_seconds=args.load_seconds,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        threads=args.threads,
        worker_args=tuple(args.worker_arg),
        micro_sizes=args.micro_sizes or SIZES,
        parts=_parts(args.only),
        burst=args.burst,
        exactly_once=args.exactly_once,
        out_dir=args.out,
        bootstrap=args.bootstrap,
        redis_url=args.redis,
        redis_cluster=None if args.redis_cluster == "none" else args.redis_cluster,
        tag=args.tag,
    )
    console = Console()
    # a SIGTERM ends the run as Ctrl-C does: the stack and cluster it started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run_bench(c, console)
    console.print(markdown(result))
    console.print(f"results: {result['written']} (worker logs in {result['logs']})")
    return 0
