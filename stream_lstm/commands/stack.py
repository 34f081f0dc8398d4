"""``stream-lstm stack up|down|status``: the local Apache Kafka broker and Redis."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from stream_lstm.config import StackSettings, build_settings
from stream_lstm.stack import Stack


def add_stack_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("local stack (env STREAM_LSTM_STACK_*, TOML [stack])")
    g.add_argument("--config", type=Path, help="TOML file with a [stack] table")
    g.add_argument("--dir", type=Path, help="run directory: PID files, logs, data")
    g.add_argument("--cache-dir", type=Path, help="where the Kafka jars are cached")
    g.add_argument("--host", help="address to bind (default 127.0.0.1)")
    g.add_argument("--kafka-port", type=int, help="Kafka broker port (default 9092)")
    g.add_argument("--controller-port", type=int, help="KRaft controller port (default 9093)")
    g.add_argument("--redis-port", type=int, help="Redis port (default 6379)")
    g.add_argument("--kafka-heap", help="broker JVM heap, e.g. 512m (default)")


def stack_from_args(args: argparse.Namespace) -> Stack:
    s = build_settings(
        StackSettings,
        args.config,
        dir=args.dir,
        cache_dir=args.cache_dir,
        host=args.host,
        kafka_port=args.kafka_port,
        controller_port=args.controller_port,
        redis_port=args.redis_port,
        kafka_heap=args.kafka_heap,
    )
    return Stack(
        s.dir,
        s.cache_dir,
        host=s.host,
        kafka_port=s.kafka_port,
        controller_port=s.controller_port,
        redis_port=s.redis_port,
        kafka_heap=s.kafka_heap,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stack",
        help="start, stop or inspect the local Apache Kafka broker and Redis",
        description=(
            "Manage the local stack: Apache Kafka (single node, KRaft, jars from Maven Central, "
            "resolved once and cached) and redis-server (Debian package, installed if missing, "
            "append-only persistence on). Processes are recorded and stopped by PID."
        ),
    )
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_, fn in (
        ("up", "start Kafka and Redis (idempotent: says so if already running)", _up),
        ("down", "stop both by PID (SIGTERM, then SIGKILL after a grace period)", _down),
        ("status", "report each part, its address, PID and RSS", _status),
    ):
        a = acts.add_parser(name, help=help_, description=help_)
        add_stack_flags(a)
        a.set_defaults(run=fn)


def _up(args: argparse.Namespace) -> int:
    console = Console()
    stack = stack_from_args(args)
    for r in stack.up():
        if r.started:
            console.print(
                f"{r.name}: started at {r.address} (pid {r.pid}), ready in {r.seconds:.2f} s"
            )
        else:
            console.print(f"{r.name}: already running at {r.address} (pid {r.pid})")
    print_status(stack, console)
    return 0


def _down(args: argparse.Namespace) -> int:
    console = Console()
    for name, was_running in stack_from_args(args).down():
        console.print(f"{name}: {'stopped' if was_running else 'was not running'}")
    return 0


def _status(args: argparse.Namespace) -> int:
    stack = stack_from_args(args)
    print_status(stack, Console())
    return 0 if all(c.ready for c in stack.status()) else 3


def print_status(stack: Stack, console: Console) -> None:
    table = Table(title=f"local stack in {stack.root}")
    for col in ("part", "address", "state", "pid", "RSS"):
        table.add_column(col, no_wrap=True)
    for c in stack.status():
        rss = f"{c.rss_bytes / 2**20:.0f} MiB" if c.rss_bytes else "-"
        table.add_row(c.detail, c.address, c.state, str(c.pid or "-"), rss)
    console.print(table)
